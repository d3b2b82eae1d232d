"""A run never uses more threads than the CPUs it may use: affinity mask and cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargen.threads import allowed_cpus, cgroup_cpu_quota, choose_threads, prepare_runtime

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")

PIN_AND_REPORT = (
    "from chargen.cli.common import pin_threads; import torch; pin_threads({}); print(torch.get_num_threads())"
)


def _run_on_one_cpu(program: str) -> str:
    """Run `program` in a real subprocess whose affinity is a single CPU, without OMP_NUM_THREADS."""
    one_cpu = {min(os.sched_getaffinity(0))}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one_cpu),
    )
    return result.stdout.strip()


@needs_affinity
def test_allowed_cpus_follows_a_restricted_affinity() -> None:
    assert _run_on_one_cpu("from chargen.threads import allowed_cpus; print(allowed_cpus())") == "1"


@needs_affinity
@pytest.mark.parametrize("requested", [0, 8])
def test_torch_threads_never_exceed_a_restricted_affinity(requested: int) -> None:
    assert _run_on_one_cpu(PIN_AND_REPORT.format(requested)) == "1"


def _cgroup(tmp_path: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(membership, encoding="utf-8")
    return tmp_path, proc


def test_cgroup_v2_quota_is_read_and_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, {"a/cpu.max": "150000 100000\n", "a/b/cpu.max": "max 100000\n"}, "0::/a/b\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    assert allowed_cpus(root, proc) == 1


def test_cgroup_v1_quota_is_read(tmp_path: Path) -> None:
    files = {"cpu,cpuacct/job/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, files, "4:cpu,cpuacct:/job\n1:memory:/job\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.0)


@pytest.mark.parametrize("files", [{}, {"cpu.max": "max 100000\n"}, {"cpu.max": "garbage\n"}])
def test_no_or_unreadable_quota_means_no_limit(tmp_path: Path, files: dict[str, str]) -> None:
    root, proc = _cgroup(tmp_path, files, "0::/\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert allowed_cpus(root, proc) >= 1


def test_requested_threads_are_capped_by_the_allowed_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(10_000) == allowed_cpus()
    assert choose_threads(1) == 1


def test_the_users_wait_policy_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    prepare_runtime()
    assert os.environ["OMP_WAIT_POLICY"] == "active"
    assert "GOMP_SPINCOUNT" not in os.environ  # libgomp would ignore 'active' for a set count


def test_idle_threads_spin_briefly_then_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    prepare_runtime()
    assert "OMP_WAIT_POLICY" not in os.environ
    assert 0 < int(os.environ["GOMP_SPINCOUNT"]) < 300_000  # libgomp's default spins far longer
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    prepare_runtime()
    assert os.environ["GOMP_SPINCOUNT"] == "50"


def test_the_cli_sets_the_wait_policy_before_torch_is_imported() -> None:
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: the CLI module must not import torch."""
    program = "import sys; import chargen.cli.app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", program], capture_output=True, text=True).stdout.strip() == "False"
