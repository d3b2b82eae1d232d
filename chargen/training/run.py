"""Assemble a training run from what the user asked for: a new run, a resume, or a fine-tune (each
started by its own function, in chargen.training.start and chargen.training.finetune), then the
corpus read with the tokenizer the start wants, the model made and the trainer built."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from chargen.analysis.evaluate import characters_scored
from chargen.checkpoint import remove_stale_temps
from chargen.config import TrainConfig
from chargen.data.batches import Dataset
from chargen.data.corpus import open_corpus
from chargen.data.scan import CorpusFacts, Split
from chargen.data.tokenized import tokenize
from chargen.data.tokenizers import Tokenizer
from chargen.device import select_device, select_precision
from chargen.errors import CheckpointError, ConfigError, CorpusError
from chargen.training.distributed import World
from chargen.training.evalpart import StepTimer, time_step
from chargen.training.events import Callbacks, WorkEvent
from chargen.training.finetune import fine_tune_start
from chargen.training.shape import Choice, Shape, choose
from chargen.training.shape_rates import candidates, measure, measure_limit, step_rate
from chargen.training.start import Start, TrainRequest, new_start, resumed_start
from chargen.training.trainer import Trainer, last_checkpoint_path

__all__ = ["TrainRequest", "check_writable", "default_out", "fit_batch", "prepare"]


def default_out(corpus: Path) -> Path:
    name = corpus.resolve().name
    stem = Path(name).stem if corpus.is_file() else name
    return Path("checkpoints") / f"{stem or 'model'}.pt"


def check_writable(path: Path) -> None:
    """Fail before training, not after an hour of it. Probe the nearest folder that exists and
    create nothing, so a run that fails early leaves no empty folder behind (the first save makes it)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".chargen-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {path.parent}: {err.strerror or err}; choose another --out") from None
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name such as {path / 'model.pt'}")


def prepare(
    request: TrainRequest,
    callbacks: Callbacks | None = None,
    world: World | None = None,
    step_timer: StepTimer = time_step,
) -> Trainer:
    """A trainer for this process; under torchrun, for this rank of `world`. A group that torchrun
    restarted after a failure continues from its last checkpoint, as --resume would. `step_timer`
    times the evaluation at a first start (chargen.training.evalpart)."""
    callbacks = callbacks or Callbacks()
    world = world or World.from_env()
    out = request.out or default_out(request.corpus)
    check_writable(out)
    if world.restarted and last_checkpoint_path(out).exists():
        request = dataclasses.replace(request, resume=True)
    corpus = open_corpus(request.corpus, request.read)
    if request.resume:
        start = resumed_start(request, out)
    elif request.init_from is not None:
        start = fine_tune_start(request)
    else:
        start = new_start(request)
    train_config = start.config

    split = Split("none") if request.val_file else Split("tail", train_config.val_frac, train_config.val_max_chars)
    check = _corpus_check(start.resume, train_config, request.val_file is not None)
    report = _reporter(callbacks)
    tokens = tokenize(corpus, split, start.wanted, check, callbacks.on_message, report)
    tokenizer = tokens.tokenizer
    if request.val_file is not None:
        held_out = Split("head", max_chars=train_config.val_max_chars)
        val = tokenize(
            open_corpus(request.val_file, request.read),
            held_out,
            lambda facts: tokenizer,
            None,
            callbacks.on_message,
            report,
        )
        train_ids, val_ids = tokens.ids, val.before_cut
    else:
        train_ids, val_ids = tokens.before_cut, tokens.after_cut
    info = {
        "source": str(request.corpus),
        "sha256": tokens.facts.sha256,
        "chars": tokens.facts.chars,
        "val_source": str(request.val_file) if request.val_file else "tail",
    }
    data = Dataset(train_ids, val_ids, tokens.facts.cut, characters_scored(tokenizer, val_ids), info)
    device = world.device(select_device(train_config.device))
    dtype = select_precision(train_config.precision, device)
    choice = None
    if start.resume is None and request.init_from is None:
        start, choice = _chosen_shape(request, start, tokenizer, data, device, dtype, world, callbacks)
        train_config = start.config
    model = start.make_model(tokenizer, train_ids, callbacks)
    train_config = fit_batch(train_config, train_ids, val_ids, tokens.facts.cut, callbacks)
    for path in (out, last_checkpoint_path(out)):  # left by a run killed in the middle of a save
        remove_stale_temps(path)
    if start.resume is None:
        trainer = Trainer(
            model, tokenizer, data, train_config, out, device, dtype, callbacks, world=world, step_timer=step_timer
        )
        trainer.shape_choice = choice
        if choice is not None:  # measuring is the budget's time (at most half: a tiny budget still trains)
            trainer.progress.elapsed = min(choice.seconds, train_config.max_time / 2)
        return trainer
    source = last_checkpoint_path(out)
    try:
        trainer = Trainer(
            model, tokenizer, data, train_config, out, device, dtype, callbacks, start.resume, world, step_timer
        )
    except (ValueError, KeyError, RuntimeError) as err:  # optimizer.load_state_dict, set_rng_state
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{source}: its training state cannot be restored ({reason})") from None
    _check_training_state(trainer, source)
    return trainer


def _chosen_shape(
    request: TrainRequest,
    start: Start,
    tokenizer: Tokenizer,
    data: Dataset,
    device: torch.device,
    dtype: torch.dtype | None,
    world: World,
    callbacks: Callbacks,
) -> tuple[Start, Choice | None]:
    """A new run whose only budget is time, with no shape set: the shape that budget buys the
    most from on this machine (chargen.training.shape), told in one line, and the choice."""
    config = start.config
    shapes = candidates(request.model, request.train, config, world, device)
    if not shapes:
        return start, None

    def shaped(shape: Shape) -> TrainRequest:
        model = {
            **request.model,
            "layers": shape.layers,
            "hidden": shape.hidden,
            "dropout": shape.dropout,
            "weight_drop": shape.weight_drop,
        }
        return dataclasses.replace(
            request, model=model, train={**request.train, "batch_size": shape.batch_size, "seq_len": shape.seq_len}
        )

    def trainer_for(shape: Shape) -> Trainer:
        candidate = new_start(shaped(shape))
        quiet = Callbacks()
        train_config = fit_batch(candidate.config, data.train_ids, data.val_ids, data.train_chars, quiet)
        model = candidate.make_model(tokenizer, data.train_ids, quiet)
        return Trainer(model, tokenizer, data, train_config, None, device, dtype, quiet, world=world)

    meter = request.shape_rates or step_rate(trainer_for)
    rates, seconds = measure(shapes, meter, measure_limit(config.max_time))
    choice = choose(rates, config.max_time - seconds, seconds, corpus_tokens=len(data.train_ids))
    callbacks.on_message(choice.describe(config.max_time))
    return new_start(shaped(choice.shape)), choice


def _corpus_check(
    resume_payload: dict[str, Any] | None, config: TrainConfig, val_file: bool
) -> Callable[[CorpusFacts], None]:
    """Refuse, before any tokenizer is trained: a resumed run's corpus that has changed, a corpus
    too small to hold a validation split."""

    def check(facts: CorpusFacts) -> None:
        if resume_payload is not None and resume_payload.get("corpus", {}).get("sha256") != facts.sha256:
            raise ConfigError(
                "the corpus has changed since this run started; resume needs the same text "
                "(start a new run with another --out, or fine-tune with --init-from)"
            )
        if facts.cut < 2 or (not val_file and facts.chars - facts.cut < 2):
            raise _too_small(facts.cut, config.seq_len, config.val_frac, chars_per_token=1.0)

    return check


def _reporter(callbacks: Callbacks) -> Callable[[str, int, int], None]:
    return lambda task, done, total: callbacks.on_work(WorkEvent(task, done, total))


def _check_training_state(trainer: Trainer, source: Path) -> None:
    """The saved hidden state and optimizer moments must fit the model, or the first step of the
    resumed run would fail with a bare shape error."""
    expected = [s.shape for s in trainer.model.initial_state(trainer.local_batch)]
    if trainer.state is not None and [s.shape for s in trainer.state] != expected:
        raise CheckpointError(f"{source}: the saved hidden state does not fit the model and batch size")
    for group in trainer.optimizer.param_groups:
        for weight in group["params"]:
            moments = trainer.optimizer.state.get(weight, {}).values()
            if any(isinstance(m, torch.Tensor) and m.dim() and m.shape != weight.shape for m in moments):
                raise CheckpointError(f"{source}: the saved optimizer state does not fit the model's weights")


def fit_batch(
    config: TrainConfig, train_ids: torch.Tensor, val_ids: torch.Tensor, train_chars: int, callbacks: Callbacks
) -> TrainConfig:
    """Shrink the batch, visibly, when a small corpus cannot fill it; refuse a corpus below one window."""
    if len(val_ids) < 2 or len(train_ids) - 1 < config.seq_len:
        chars_per_token = train_chars / max(len(train_ids), 1)
        raise _too_small(train_chars, config.seq_len, config.val_frac, chars_per_token)
    fits = (len(train_ids) - 1) // config.seq_len
    if fits < config.batch_size:
        callbacks.on_message(
            f"the corpus fills only {fits} streams of {config.seq_len} tokens: batch size lowered "
            f"from {config.batch_size} to {fits}"
        )
        return dataclasses.replace(config, batch_size=fits)
    return config


def _too_small(train_chars: int, seq_len: int, val_frac: float, chars_per_token: float) -> CorpusError:
    minimum = math.ceil((seq_len + 2) * chars_per_token / (1 - val_frac)) + 2
    return CorpusError(
        f"the corpus is too small: {train_chars} training characters; chargen needs at least "
        f"{minimum} characters with --seq-len {seq_len} (use more text or a smaller --seq-len)"
    )
