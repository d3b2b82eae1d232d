"""The one part pyproject.toml cannot say: the optional C step (chargen/generation/_fused.c).

Optional: where it does not compile (no C compiler, an unknown architecture) chargen installs
without it and samples with torch's kernels; `chargen info` says which steps run here. One build
serves every CPU of an architecture: the kernels carry their own target attributes and the step
picks one at run time. -ffp-contract=off: no multiply-add is fused but the explicit ones, so
every path computes the same floats.
"""

from setuptools import Extension, setup

SOURCES = ["_fused.c", "_fused_avx512.c", "_fused_avx2.c", "_fused_portable.c"]

setup(
    ext_modules=[
        Extension(
            "chargen.generation._fused",
            [f"chargen/generation/{name}" for name in SOURCES],
            depends=["chargen/generation/_fused.h"],
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
