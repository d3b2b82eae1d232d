"""How many threads a run may use, and how they wait: decided before torch is imported.

torch's default thread count is the number of cores it sees, which ignores a cgroup CPU quota
(containers, CI runners) and, with OpenMP's default busy-waiting, a second process on the same
cores makes both spin on each other's time slices: two runs on two cores took 3-8x their time
alone instead of 2x. So a run never uses more threads than the CPUs it may use (its affinity
mask, capped by the cgroup quota), an idle OpenMP thread spins only briefly before it sleeps
(GOMP_SPINCOUNT), and a run whose thread count is chargen's choice leaves the cores that other
processes keep busy to them (`FairThreads`): each parallel region waits for its slowest thread,
so a thread that shares its core makes the whole run wait for that core's time slices.
Sleeping at once (OMP_WAIT_POLICY=passive) is no answer: an LSTM step is hundreds of short
parallel regions, and waking threads for each made a run alone 1.5x slower on an Intel Xeon
with AMX. libgomp reads these once, when torch loads it: `prepare_runtime` must run
before `import torch`.

This module imports nothing heavy, so the CLI can call it first.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
LOOK_EVERY = 2.0  # seconds between looks at what other processes use
# Spins before an idle libgomp thread sleeps (its default is 300,000: two runs on two cores then
# took 10x their time alone). 3,000 kept a run alone within ~10% of the default and a pair at
# under 2x; on CPUs whose `pause` is shorter (AMD Zen) the same count waits less, nearer to
# passive. Measured with benchmarks/busy.py (docs/PERFORMANCE.md).
SPIN_COUNT = "3000"
SLEEP_AT_ONCE = "0"  # KMP_BLOCKTIME for Intel's OpenMP runtime, which ignores GOMP_SPINCOUNT


def allowed_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))  # 1.5 CPUs of quota: one thread that is never throttled
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, v2 (cpu.max)
    or v1 (cpu.cfs_quota_us / cpu.cfs_period_us); None when there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            quotas += [_v2_quota(folder) for folder in _ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            base = next((cgroup_root / name for name in ("cpu", "cpu,cpuacct") if (cgroup_root / name).is_dir()), None)
            if base is not None:
                quotas += [_v1_quota(folder) for folder in _ancestors(base, path)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _ancestors(root: Path, path: str) -> list[Path]:
    """The cgroup folder of `path` under `root` and every folder above it up to `root`."""
    folder = root / path.strip("/")
    return [folder, *(p for p in folder.parents if p.is_relative_to(root))]


def _read_numbers(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split()
    except OSError:
        return []


def _v2_quota(folder: Path) -> float | None:
    fields = _read_numbers(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read_numbers(folder / "cpu.cfs_quota_us"), _read_numbers(folder / "cpu.cfs_period_us")
    if len(quota) != 1 or len(period) != 1:
        return None
    return _ratio(quota[0], period[0])  # quota -1: none


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def chosen_by_user(requested: int = 0) -> bool:
    """Whether the thread count is the user's (--threads or OMP_NUM_THREADS), not chargen's."""
    return requested > 0 or os.environ.get("OMP_NUM_THREADS", "").isdigit()


def choose_threads(requested: int = 0) -> int:
    """`requested` threads (0: as many as allowed; else OMP_NUM_THREADS when set), never more
    than the CPUs this process may use."""
    if requested <= 0 and chosen_by_user():
        requested = int(os.environ["OMP_NUM_THREADS"])
    allowed = allowed_cpus()
    return allowed if requested <= 0 else min(requested, allowed)


def prepare_runtime(env: MutableMapping[str, str] = os.environ) -> None:
    """Before torch is imported: idle OpenMP threads spin briefly, then sleep, unless the user
    chose a wait policy. Too late once torch (and with it libgomp) is loaded; then this changes
    nothing. `env` is this process's environment, or one prepared for a child process."""
    if "OMP_WAIT_POLICY" in env:
        return
    env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    env.setdefault("KMP_BLOCKTIME", SLEEP_AT_ONCE)


def busy_seconds(cpus: set[int], stat: Path = PROC_STAT) -> float | None:
    """CPU time every process together has spent on `cpus` since boot (user, system and
    interrupts; not idle, I/O wait or time the hypervisor gave to other machines); None where
    /proc/stat is missing or unreadable."""
    try:
        lines = stat.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in cpus and len(fields) >= 8:
            user, nice, system, _idle, _iowait, irq, softirq, _steal = (int(v) for v in fields[:8])
            ticks += user + nice + system + irq + softirq
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process, all its threads (spinning included)."""
    times = os.times()
    return times.user + times.system


class Load(Protocol):
    """Where `FairThreads` looks: a clock, and the CPU time other processes have spent on some cores."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def others_seconds(self, cpus: set[int]) -> float | None:
        """CPU seconds other processes have spent on `cpus` since some fixed moment; None when unknown."""
        ...


@dataclass(frozen=True)
class MachineLoad:
    """The machine's load: /proc/stat's busy time less this process's own, so that its own
    threads (spinning included) never count as another process's load."""

    stat: Path = PROC_STAT
    own_seconds: Callable[[], float] = own_cpu_seconds
    clock: Callable[[], float] = time.monotonic

    def now(self) -> float:
        return self.clock()

    def others_seconds(self, cpus: set[int]) -> float | None:
        busy = busy_seconds(cpus, self.stat)
        return None if busy is None else busy - self.own_seconds()


class FairThreads:
    """The thread count for a run on cores that other processes may also keep busy: the cores
    left free of them, rounded, between one and `most`, looked at every `every` seconds.

    Two runs of two threads on two cores see each other take a core, so both go to one thread
    and each gets its core; when one ends, the other sees its cores free and takes them back.
    The count moves only when the free cores are `MARGIN` past the midpoint between two counts:
    a load that hovers near it (half a core, say) would otherwise flip it at every look."""

    MARGIN = 0.25  # cores

    def __init__(self, most: int, cpus: set[int] | None = None, load: Load | None = None, every: float = LOOK_EVERY):
        self.most = self.threads = most
        self.others = 0.0  # CPUs kept busy by other processes over the last look
        self.changes = 0  # how often the count moved
        self._cpus = cpus if cpus is not None else _affinity()
        self._load, self._every = load or MachineLoad(), every
        self._last: tuple[float, float] | None = None  # clock, other processes' CPU seconds

    def update(self) -> int:
        """The thread count to run on from now."""
        now = self._load.now()
        if self._last is not None and now - self._last[0] < self._every:
            return self.threads
        others = self._load.others_seconds(self._cpus)
        if others is None:
            return self.threads
        if self._last is not None and now > self._last[0]:
            self.others = max(0.0, others - self._last[1]) / (now - self._last[0])
            free = len(self._cpus) - self.others
            wanted = max(1, min(self.most, round(free)))
            if wanted != self.threads and abs(free - self.threads) > 0.5 + self.MARGIN:
                self.threads, self.changes = wanted, self.changes + 1
        self._last = (now, others)
        return self.threads


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))
