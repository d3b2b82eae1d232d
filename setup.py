"""The one part pyproject.toml cannot say: the optional C step (chargen/generation/_fused.c).

Optional: where it does not compile (no C compiler, another architecture) chargen installs
without it and samples with torch's kernels; `chargen info` says which steps run here.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "chargen.generation._fused",
            ["chargen/generation/_fused.c"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
