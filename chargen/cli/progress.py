"""Progress on screen: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from chargen.cli.common import console as make_console
from chargen.training.events import Callbacks, ClassifierEvalEvent, EvalEvent, StepEvent, WorkEvent

PLAIN_EVERY = 10.0  # seconds between plain progress lines
PLAIN_AFTER = 2.0  # a pass quicker than this prints nothing when not on a terminal


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:.3f}"


def _amount(value: float, unit: str) -> str:
    return f"{value / 1e6:,.0f} MB" if unit == "bytes" else f"{value:,.0f} {unit}"


def _rate(value: float, unit: str) -> str:
    return f"{value / 1e6:,.0f} MB/s" if unit == "bytes" else f"{value:,.0f} {unit}/s"


class WorkProgress:
    """A long pass (encoding a corpus, scoring a file): a bar with its rate and ETA on a terminal;
    otherwise a plain line every PLAIN_EVERY seconds and one when a pass that took a while ends."""

    def __init__(self, console: Console, interactive: bool, clock: Callable[[], float] = time.perf_counter) -> None:
        self.console = console
        self.interactive = interactive
        self.clock = clock
        self._task = ""
        self._started = self._printed = 0.0
        self._bar: Progress | None = None

    def update(self, task: str, done: int, total: int, unit: str = "bytes") -> None:
        now = self.clock()
        if task != self._task:
            self.stop()
            self._task, self._started, self._printed = task, now, now
        rate = done / max(now - self._started, 1e-9)
        if self.interactive:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.fields[amount]}  {task.fields[rate]}"),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self._bar.start()
                self._bar.add_task(task, total=max(total, 1), amount="", rate="")
            self._bar.update(self._bar.task_ids[0], completed=done, amount=_amount(done, unit), rate=_rate(rate, unit))
        elif done >= total and now - self._started > PLAIN_AFTER:
            self.console.print(
                f"{task}: {_amount(total, unit)} in {now - self._started:.1f}s ({_rate(rate, unit)})", highlight=False
            )
        elif now - self._printed > PLAIN_EVERY:
            left = (total - done) / max(rate, 1e-9)
            self.console.print(
                f"{task}: {_amount(done, unit)} of {_amount(total, unit)} ({done / max(total, 1):.0%}), "
                f"{_rate(rate, unit)}, {left:.0f}s left",
                highlight=False,
            )
            self._printed = now
        if done >= total:
            self.stop()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._task = ""


class TrainingDisplay(Callbacks):
    """Bar with step, epoch, train/val bpc, chars/s and ETA; a sample at each evaluation; a bar
    with MB/s for each pass over the corpus before training starts."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or make_console()
        self.interactive = not quiet and sys.stdout.isatty()
        self.val_bpc = math.nan
        self.work = WorkProgress(self.console, self.interactive)
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> TrainingDisplay:
        return self

    def _start_bar(self) -> None:
        """The training bar appears with the first step: rich shows one live display at a time."""
        self.work.stop()
        self._progress = Progress(
            TextColumn("step {task.fields[step]:>6}  epoch {task.fields[epoch]:.2f}"),
            BarColumn(),
            TextColumn("{task.fields[summary]}"),
            TextColumn("{task.fields[speed]:>7.0f} chars/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=1.0, step=0, epoch=0.0, summary="", speed=0.0)

    def __exit__(self, *exc: object) -> None:
        self.work.stop()
        if self._progress is not None:
            self._progress.stop()

    def on_work(self, event: WorkEvent) -> None:
        if not self.quiet:
            self.work.update(event.task, event.done, event.total)

    def on_step(self, event: StepEvent) -> None:
        if self.interactive and self._progress is None:
            self._start_bar()
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=min(event.fraction_done, 1.0),
                step=event.step,
                epoch=event.epoch,
                summary=self.summary(event),
                speed=event.chars_per_sec,
            )

    def summary(self, event: StepEvent) -> str:
        """The figures the bar shows beside the step and epoch."""
        threads = f"  {event.threads} thread{'s' if event.threads > 1 else ''}" if event.threads else ""
        return f"train {_fmt(event.train_bpc)}  val {_fmt(self.val_bpc)} bpc{threads}"

    def on_eval(self, event: EvalEvent) -> None:
        self.val_bpc = event.val_bpc
        if self.quiet:
            return
        mark = " (best)" if event.improved else ""
        self.console.print(
            f"step {event.step}  epoch {event.epoch:.2f}  train {_fmt(event.train_bpc)} bpc  "
            f"val {_fmt(event.val_bpc)} bpc{mark}  eval {event.eval_seconds:.1f}s",
            highlight=False,
        )
        if event.sample:
            self.console.print(event.sample.rstrip()[:400], style="dim", markup=False, highlight=False)

    def on_message(self, message: str) -> None:
        """Warnings reach the user even with --quiet (then on stderr, out of the way of scripts)."""
        if self.quiet:
            print(message, file=sys.stderr)
        else:
            self.console.print(message, style="yellow", markup=False, highlight=False)


class ClassifierDisplay(TrainingDisplay):
    """A classifier's training, phase after phase: a heading for each, the bar restarted, and the
    validation accuracy as it is measured."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        super().__init__(quiet, console)
        self.loss = math.nan  # smoothed training loss of the classifier phase
        self.accuracy = math.nan

    def on_phase(self, name: str, detail: str) -> None:
        self.val_bpc = self.loss = self.accuracy = math.nan
        if self._progress is not None and self._task is not None:
            self._progress.reset(self._task)
        if not self.quiet:
            self.console.print(f"{name}: {detail}", style="bold", markup=False, highlight=False)

    def on_step(self, event: StepEvent) -> None:
        if math.isnan(event.train_bpc) and math.isfinite(event.loss):  # a classifier phase
            self.loss = event.loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * event.loss
        super().on_step(event)

    def summary(self, event: StepEvent) -> str:
        if not math.isnan(event.train_bpc):
            return super().summary(event)
        accuracy = "-" if math.isnan(self.accuracy) else f"{self.accuracy:.2%}"
        return f"loss {_fmt(self.loss)}  val accuracy {accuracy}"

    def on_classifier_eval(self, event: ClassifierEvalEvent) -> None:
        self.accuracy = event.accuracy
        if self.quiet:
            return
        self.console.print(
            f"step {event.step}  train loss {_fmt(event.train_loss)}  val loss {event.val_loss:.4f}  "
            f"accuracy {event.accuracy:.2%}  macro-F1 {event.macro_f1:.4f}" + (" (best)" if event.improved else ""),
            highlight=False,
            soft_wrap=True,
        )
