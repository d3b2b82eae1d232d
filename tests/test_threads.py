"""A run never uses more threads than the CPUs it may use (affinity mask and cgroup quota), and
leaves the cores other processes keep busy to them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargen.threads import (
    FairThreads,
    MachineLoad,
    allowed_cpus,
    busy_seconds,
    cgroup_cpu_quota,
    choose_threads,
    chosen_by_user,
    prepare_runtime,
)
from chargen.training.events import Callbacks, StepEvent
from tests.helpers import ScriptedLoad, int8_step

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


TICKS = os.sysconf("SC_CLK_TCK")


def _write_stat(path: Path, busy: list[float], idle: float = 50.0) -> None:
    """A /proc/stat whose per-CPU lines have `busy` seconds split over user, system and irq, with
    idle, I/O wait and steal time that must not count."""
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0", "intr 123 4 5"]
    for cpu, seconds in enumerate(busy):
        ticks = round(seconds * TICKS)
        user, system, irq = ticks // 2, ticks // 4, ticks - ticks // 2 - ticks // 4
        idle_ticks = round(idle * TICKS)
        lines.append(f"cpu{cpu} {user} 0 {system} {idle_ticks} {idle_ticks} {irq} 0 {idle_ticks} 0 0")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_busy_time_counts_the_given_cpus_and_not_idle_wait_or_steal(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _write_stat(stat, [10.0, 20.0, 40.0])
    assert busy_seconds({0, 2}, stat) == pytest.approx(50.0)
    assert busy_seconds({1}, stat) == pytest.approx(20.0)
    assert busy_seconds({0}, tmp_path / "missing") is None


class _Times:
    """Our own CPU seconds and the wall clock, as the test says they are."""

    def __init__(self) -> None:
        self.own = self.wall = 0.0

    def own_seconds(self) -> float:
        return self.own

    def clock(self) -> float:
        return self.wall


def _machine(stat: Path) -> tuple[MachineLoad, _Times]:
    times = _Times()
    return MachineLoad(stat, times.own_seconds, times.clock), times


def test_threads_give_way_to_other_processes_and_come_back(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    load, times = _machine(stat)
    fair = FairThreads(2, cpus={0, 1}, load=load, every=2.0)
    _write_stat(stat, [0.0, 0.0])
    assert fair.update() == 2  # the first look has nothing to compare with
    # 10 s: we used both cores all along, nobody else anything: stay on two.
    times.own, times.wall = 20.0, 10.0
    _write_stat(stat, [10.0, 10.0])
    assert fair.update() == 2 and fair.others == pytest.approx(0.0)
    # 10 s more: another process kept one core busy (we got 10 s): one thread each.
    times.own, times.wall = 30.0, 20.0
    _write_stat(stat, [20.0, 20.0])
    assert fair.update() == 1 and fair.others == pytest.approx(1.0)
    # Within `every` seconds nothing is looked at, whatever the file says.
    _write_stat(stat, [0.0, 0.0])
    times.wall = 21.0
    assert fair.update() == 1
    # It stopped: we alone on one core, the other idle: back to two.
    _write_stat(stat, [30.0, 20.0])
    times.own, times.wall = 40.0, 30.0
    assert fair.update() == 2 and fair.changes == 2


def test_a_little_load_from_others_keeps_every_thread(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    load, times = _machine(stat)
    fair = FairThreads(2, cpus={0, 1}, load=load)
    _write_stat(stat, [0.0, 0.0])
    fair.update()
    times.own, times.wall = 18.0, 10.0
    _write_stat(stat, [10.0, 12.0])  # others: 4 s of CPU in 10 s
    assert fair.update() == 2 and fair.others == pytest.approx(0.4)


def test_an_unreadable_stat_keeps_the_thread_count(tmp_path: Path) -> None:
    load, times = _machine(tmp_path / "missing")
    fair = FairThreads(2, cpus={0, 1}, load=load)
    assert fair.update() == 2
    times.wall = 100.0
    assert fair.update() == 2


@pytest.mark.parametrize(
    "others_per_look",
    [[0.6, 0.4, 0.6, 0.45, 0.55, 0.7, 0.3] * 3, [0.0] * 20],
    ids=["a load near half a core", "our own threads alone"],
)
def test_neither_our_own_load_nor_a_load_near_the_midpoint_changes_the_count(
    tmp_path: Path, others_per_look: list[float]
) -> None:
    """Both cores busy all along, our two threads taking what other processes leave: /proc/stat's
    busy time less our own is theirs, and a load of 0.3-0.7 of a core (or none) leaves the count
    where it is, look after look (it flipped every 2 s between 1 and 2)."""
    stat = tmp_path / "stat"
    load, times = _machine(stat)
    fair = FairThreads(2, cpus={0, 1}, load=load)
    busy = 0.0
    _write_stat(stat, [busy, 0.0])
    fair.update()
    for look, others in enumerate(others_per_look, start=1):
        times.wall = 2.0 * look
        times.own += 2.0 * (2 - others)  # ours: whatever the others leave of two cores
        busy += 4.0  # ours and theirs together
        _write_stat(stat, [busy, 0.0])
        assert fair.update() == 2 and fair.others == pytest.approx(others)
    assert fair.changes == 0


def test_a_steady_load_gives_one_change(tmp_path: Path) -> None:
    fair = FairThreads(2, cpus={0, 1}, load=ScriptedLoad(busy=1.0, tick=1.0), every=2.0)
    counts = [fair.update() for _ in range(40)]
    assert counts[:2] == [2, 2] and set(counts[4:]) == {1} and fair.changes == 1


def test_only_the_users_thread_count_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert not chosen_by_user(0) and chosen_by_user(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert chosen_by_user(0)


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    """Another process keeping one core busy."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2 or not Path("/proc/stat").is_file(),
    reason="needs two CPUs and /proc/stat",
)


@needs_two_cpus
def test_a_real_busy_process_is_seen(spinner: subprocess.Popen[bytes]) -> None:
    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    os.sched_setaffinity(spinner.pid, cpus)
    fair = FairThreads(2, cpus=cpus, every=0.0)
    fair.update()
    time.sleep(1.5)
    assert fair.update() == 1
    assert 0.6 < fair.others < 2.1


@needs_two_cpus
def test_training_moves_to_one_thread_beside_a_busy_process(
    spinner: subprocess.Popen[bytes], corpus_file: Path, tmp_path: Path
) -> None:
    """The real command, its thread count its own (no OMP_NUM_THREADS), next to a process that
    keeps a core busy: it says it trains on one thread."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "chargen", "train", str(corpus_file), "--hidden", "32", "--layers", "1"]
    command += ["--max-time", "6s", "--eval-every", "100000", "--out", str(tmp_path / "m.pt")]
    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    os.sched_setaffinity(spinner.pid, cpus)
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
    )
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "training on 1 thread" in said and said.count("other processes keep") == 1


@needs_two_cpus
def test_sampling_moves_to_one_thread_beside_a_busy_process_and_writes_the_same_text(
    spinner: subprocess.Popen[bytes], tiny_checkpoint: Path
) -> None:
    """The real `chargen sample`, its thread count its own, next to a process that keeps a core
    busy: it says it gave way, and the seed's text is the one it writes on one thread."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    step = int8_step()
    command = [sys.executable, "-m", "chargen", "sample", str(tiny_checkpoint), "--length", "40000", "--seed", "4"]
    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    os.sched_setaffinity(spinner.pid, cpus)
    runs = [
        subprocess.run(
            command + options, env=env, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
        )
        for options in (["--verbose", "--precision", step], ["--threads", "1", "--precision", step])
    ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert "2 threads, fewer while other processes keep cores busy" in runs[0].stderr
    assert "sampling was left as few as 1 thread" in runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout) > 40000


@needs_two_cpus
def test_a_kernel_measured_beside_a_busy_process_is_remembered_as_provisional(
    spinner: subprocess.Popen[bytes],
) -> None:
    """A busy moment's choice is used by later runs without measuring (a busy machine must not
    pay for measuring at every call) until a quiet moment, long enough after, measures it again."""
    import time

    import torch

    from chargen.config import ModelConfig
    from chargen.generation.kernels import CACHE_NAME, RETRY, Conditions, choose_kernel
    from chargen.model import CharLM
    from chargen.paths import user_data_dir

    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    os.sched_setaffinity(spinner.pid, cpus)
    model = CharLM(ModelConfig(12, layers=2, hidden=384, embed=16, dropout=0.0)).eval()  # ~0.4 s to measure
    busy = choose_kernel(model, torch.device("cpu"))
    assert busy.how.startswith("measured while other processes kept") and busy.how.endswith("provisional")
    assert (user_data_dir() / CACHE_NAME).is_file()
    assert choose_kernel(model, torch.device("cpu")).how.startswith("cached, provisional")
    spinner.kill()
    spinner.wait()
    # Later and quiet (injected: the load average lags, and other tests may share the machine).
    later = Conditions(wall=lambda: time.time() + RETRY, recent_load=lambda: 0.0, load=ScriptedLoad(busy=0.0))
    quiet = choose_kernel(model, torch.device("cpu"), conditions=later)
    assert quiet.how == "measured"
    assert choose_kernel(model, torch.device("cpu")).how == "cached"


def test_a_sampler_runs_on_the_cores_others_leave_free(tiny_checkpoint: Path) -> None:
    from chargen.checkpoint import load_model
    from chargen.generation.sampler import Sampler

    loaded = load_model(tiny_checkpoint)
    sampler = Sampler(loaded.model, loaded.tokenizer, precision="fp32")
    assert sampler.fair is None and sampler.threads_for(1) == 1  # conftest pins one thread: nothing to share
    load = ScriptedLoad(busy=0.0)
    sampler.fair = FairThreads(2, cpus={0, 1}, load=load, every=0.0)
    assert sampler.threads_for(2) == 2 and sampler.load_note() is None
    load.busy = 1.0  # another process keeps one core busy
    assert sampler.threads_for(2) == 1 and sampler.threads_for(1) == 1
    assert "sampling was left as few as 1 thread" in (sampler.load_note() or "")


class _Told(Callbacks):
    """What the loop tells a front end; at the steps of `schedule`, other processes' load changes."""

    def __init__(self, load: ScriptedLoad, schedule: dict[int, float]) -> None:
        self.load, self.schedule = load, schedule
        self.messages: list[str] = []
        self.steps: list[StepEvent] = []

    def on_message(self, message: str) -> None:
        self.messages.append(message)

    def on_step(self, event: StepEvent) -> None:
        self.steps.append(event)
        self.load.busy = self.schedule.get(event.step, self.load.busy)


@pytest.mark.parametrize(
    ("schedule", "counts"),
    [({}, [2]), ({1: 1.0}, [2, 1]), ({1: 1.0, 15: 0.0, 30: 1.0}, [2, 1, 2, 1])],
    ids=["alone", "beside a steady load", "beside a load that comes and goes"],
)
def test_training_follows_the_load_and_says_so_at_most_once(
    corpus_file: Path, tmp_path: Path, schedule: dict[int, float], counts: list[int]
) -> None:
    """The real training loop on a load the test states (a look every other step, 1 s apart):
    alone it stays on two threads and says nothing; beside a busy core it moves to one thread,
    says so in one line however often the load changes, and the progress line shows the count."""
    from chargen.cli.progress import TrainingDisplay
    from chargen.generation.kernels import torch_threads
    from chargen.training.run import TrainRequest, prepare

    load = ScriptedLoad(busy=0.0, tick=1.0)
    told = _Told(load, schedule)
    train = {"batch_size": 4, "seq_len": 16, "max_steps": 45, "max_time": 0, "eval_every": 1000, "sample_chars": 0}
    request = TrainRequest(corpus=corpus_file, out=tmp_path / "m.pt", model={"layers": 1, "hidden": 16}, train=train)
    trainer = prepare(request, told)
    trainer.fair_threads = FairThreads(2, cpus={0, 1}, load=load, every=2.0)
    with torch_threads(2):
        trainer.run()
    threads = [event.threads for event in told.steps]
    assert [n for i, n in enumerate(threads) if i == 0 or n != threads[i - 1]] == counts
    about_load = [m for m in told.messages if "other processes" in m]
    if len(counts) == 1:
        assert about_load == []
    else:
        said = "other processes keep 1.0 of the CPUs busy: training on 1 thread"
        assert about_load == [f"{said} (the count follows their load from here on)"]
    shown = TrainingDisplay(quiet=True).summary(told.steps[-1])
    assert shown.endswith(f"bpc  {counts[-1]} thread{'s' if counts[-1] > 1 else ''}")
