"""chargen: character-level text generation with stacked LSTMs.

    from chargen import load
    model = load("checkpoints/shakespeare.pt")
    texts = model.generate(["To be", "Or not"], length=200, temperature=0.7, seed=1)

    from chargen import load_classifier
    spam = load_classifier("checkpoints/sms_spam.clf")
    labels = [p.label for p in spam.predict(["WINNER!! Claim your prize now", "See you at 6?"])]

`import chargen` stays light (the command line's `--help` relies on it): torch is imported
only when `load` or `load_classifier` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "Model", "load", "load_classifier"]
_HOMES = {
    "Model": "chargen.api",
    "load": "chargen.api",
    "Classifier": "chargen.classify.api",
    "load_classifier": "chargen.classify.api",
}

if TYPE_CHECKING:
    from chargen.api import Model, load
    from chargen.classify.api import Classifier, load_classifier


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'chargen' has no attribute {name!r}")
