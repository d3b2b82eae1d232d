"""chargen: character-level text generation with stacked LSTMs.

    from chargen import load
    model = load("checkpoints/shakespeare.pt")
    texts = model.generate(["To be", "Or not"], length=200, temperature=0.7, seed=1)

`import chargen` stays light (the command line's `--help` relies on it): torch is imported
only when `load` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Model", "load"]

if TYPE_CHECKING:
    from chargen.api import Model, load


def __getattr__(name: str) -> Any:
    if name in __all__:
        from chargen import api

        return getattr(api, name)
    raise AttributeError(f"module 'chargen' has no attribute {name!r}")
