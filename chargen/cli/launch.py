"""`chargen train --procs N`: start N ranks on this machine the way `torchrun --standalone` would,
through torchrun's own launcher, so that what runs is exactly what torchrun runs.

The launcher stays silent: the ranks speak for themselves (rank 0, or the one rank that reports
a failure), and the launcher only passes their exit code on (130 after Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

from chargen.errors import ConfigError
from chargen.threads import allowed_cpus


def without_procs(argv: list[str]) -> list[str]:
    """The command line as the ranks run it: the same, less --procs."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--procs":
            skip = True
        elif not arg.startswith("--procs="):
            kept.append(arg)
    return kept


def launch_ranks(procs: int, argv: list[str]) -> int:
    """Run `python -m chargen <argv>` as `procs` ranks on 127.0.0.1; their exit code."""
    if procs < 1:
        raise ConfigError(f"--procs must be 1 or more, not {procs}")
    if "RANK" in os.environ:
        raise ConfigError("--procs starts its own ranks; under torchrun, drop it (torchrun already chose them)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The cores divided among the ranks, unless the user chose (--threads wins over this in each rank).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, allowed_cpus() // procs)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its reports repeat the ranks'
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=procs,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, as torchrun --standalone picks
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "chargen", *argv)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as err:  # Ctrl-C reached the launcher too; the ranks saved and said so
        return 130 if err.sigval == signal.SIGINT else 1
    return 0
