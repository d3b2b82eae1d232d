"""Building the native step (setup.py, chargen/generation/_fused*.c): it compiles for ARM64 as
well as x86-64, and a compiler that fails never fails the install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "chargen" / "generation").glob("_fused*.c"))
CROSS = "aarch64-linux-gnu-gcc"  # Debian's gcc-aarch64-linux-gnu (.ci/run installs it)


@pytest.mark.skipif(shutil.which(CROSS) is None, reason=f"no {CROSS} (apt-get install gcc-aarch64-linux-gnu)")
def test_the_native_step_compiles_for_arm64(tmp_path: Path) -> None:
    """The portable path and the module compile for aarch64 with the flags setup.py uses (the
    x86 kernels compile to nothing there); Python's headers are the host's: its C API does not
    differ between the two 64-bit Linux ABIs."""
    objects = []
    for source in SOURCES:
        obj = tmp_path / f"{source.stem}.o"
        command = [CROSS, "-O3", "-fopenmp", "-ffp-contract=off", "-fPIC", "-Wall", "-Werror", "-c", str(source)]
        command += ["-I", sysconfig.get_paths()["include"], "-o", str(obj)]
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        objects.append(obj)
    symbols = subprocess.run(["aarch64-linux-gnu-nm", *map(str, objects)], capture_output=True, text=True).stdout
    assert " T PyInit__fused" in symbols and " T portable_block" in symbols
    assert "avx2_block" not in symbols  # no x86 code in an ARM build


def test_a_failing_compiler_does_not_fail_the_build(tmp_path: Path) -> None:
    """Where nothing compiles (CC=/bin/false), the build goes on without the native step."""
    command = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib")]
    command += ["--build-temp", str(tmp_path / "temp")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CC": "/bin/false"})
    assert run.returncode == 0, run.stderr
    assert "building optional extension" in run.stderr.lower() or "failed" in run.stderr.lower()
    assert not list((tmp_path / "lib").rglob("_fused*.so"))
