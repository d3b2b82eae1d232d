"""Training progress on screen: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from chargen.cli.common import console as make_console
from chargen.training.events import Callbacks, ClassifierEvalEvent, EvalEvent, StepEvent


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:.3f}"


class TrainingDisplay(Callbacks):
    """Bar with step, epoch, train/val bpc, chars/s and ETA; a sample at each evaluation."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or make_console()
        self.interactive = not quiet and sys.stdout.isatty()
        self.val_bpc = math.nan
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> TrainingDisplay:
        if self.interactive:
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
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_step(self, event: StepEvent) -> None:
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
        return f"train {_fmt(event.train_bpc)}  val {_fmt(self.val_bpc)} bpc"

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
