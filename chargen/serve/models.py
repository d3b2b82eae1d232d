"""What `chargen serve` serves: the language models and classifiers named on its command line,
each loaded once, under its file's name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargen.checkpoint import build_model, load_checkpoint
from chargen.classify.api import Classifier
from chargen.classify.store import CLASSIFIER, build_classifier
from chargen.device import select_device, select_precision
from chargen.errors import CheckpointError
from chargen.generation.kernels import BATCHES
from chargen.generation.sampler import Sampler

BATCH_MEASURED = max(BATCHES)


@dataclass
class Loaded:
    generators: dict[str, Sampler] = field(default_factory=dict)
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)  # name -> the file's modification time

    @property
    def names(self) -> list[str]:
        return [*self.generators, *self.classifiers]


def one_precision(sampler: Sampler) -> Sampler:
    """The sampler with one step precision for every batch size: auto may choose another for one
    stream than for 64, and a stream's text must not depend on how many others run beside it.
    The many-stream choice wins: serving is for many clients."""
    chosen = sampler.kernel.for_batch(BATCH_MEASURED).precision
    if all(k.precision == chosen for k in sampler.kernel.kernels.values()):
        return sampler
    return Sampler(sampler.model, sampler.tokenizer, sampler.device, chosen, sampler.fair is not None)


def _read(path: Path) -> tuple[bool, dict[str, Any]]:
    """(is a classifier, the validated payload); a file of neither kind fails with the
    checkpoint's own message."""
    try:
        return False, load_checkpoint(path)
    except CheckpointError as not_checkpoint:
        try:
            return True, load_checkpoint(path, CLASSIFIER)
        except CheckpointError:
            raise not_checkpoint from None


def load_all(paths: list[Path], precision: str, share_cores: bool) -> Loaded:
    """Every file as a language model or a classifier; two files of the same name are an error
    (clients choose a model by name)."""
    where = select_device("auto")
    loaded = Loaded()
    for path in paths:
        name = path.stem
        if name in loaded.created:
            raise CheckpointError(
                f"two files are named {name!r} ({path} and another): rename one, clients pick by name"
            )
        is_classifier, payload = _read(path)
        if is_classifier:
            classifier = build_classifier(payload, path)
            loaded.classifiers[name] = Classifier(classifier, where, select_precision("auto", where))
        else:
            checkpoint = build_model(payload, path)
            model = checkpoint.model.to(where)
            loaded.generators[name] = one_precision(Sampler(model, checkpoint.tokenizer, where, precision, share_cores))
        loaded.created[name] = int(path.stat().st_mtime)
    return loaded
