"""The interactive session: the model's running state, the settings and the text so far, with
no terminal I/O (chargen.cli.repl reads the lines and shows the text).

Seeds: turn n of a session draws its random numbers from stream (seed, n) of the sampler, so a
session replayed with the same --seed (or after the same /seed) and the same inputs gives the same
text. /seed restarts the turn count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from chargen.config import SampleConfig
from chargen.generation.draw import fresh_seed
from chargen.generation.sampler import Context, Sampler
from chargen.repl.commands import BY_FIELD, HELP, Command, CommandError


def describe_model(checkpoint: Path, payload: dict[str, Any], vocab_size: int) -> str:
    m, metrics = payload["model_config"], payload.get("metrics", {})
    results = [metrics.get(k) for k in ("result_bpc", "best_val_bpc", "val_bpc")]
    bpc = next((v for v in results if v is not None and math.isfinite(v)), None)
    parts = [
        "chargen",
        checkpoint.name,
        f"{m['layers']}×{m['hidden']} {m['cell'].upper()}",
        f"{payload['tokenizer']['kind']} vocab {vocab_size}",
    ]
    if m.get("output") == "adaptive":
        parts.append("adaptive softmax")
    if isinstance(bpc, float) and math.isfinite(bpc):
        parts.append(f"val {bpc:.2f} bpc")
    return " · ".join(parts)


class Session:
    """A conversation with one model: settings, the model's running state, and the text so far."""

    def __init__(self, sampler: Sampler, config: SampleConfig, title: str = "chargen") -> None:
        if config.seed is None:  # a random seed, shown by /info, so a good session can be replayed
            config = replace(config, seed=fresh_seed())
        self.sampler = sampler
        self.config = config
        self.title = title
        self.color = False
        self.context: Context | None = None
        self.turn = 0  # turns since the seed was set; turn n draws from stream (seed, n)
        self.context_chars = 0  # characters the model has read or written since the last reset
        self._pieces: list[str] = []  # everything typed and generated this session, for /save
        self._warm_temperature = config.temperature or SampleConfig.temperature

    def generate(self, prime: str) -> Iterator[tuple[str, float]]:
        """Read `prime` (empty: continue) and yield (new text, its probability) as the model writes."""
        self.context = self.sampler.read([prime], self.context)
        self._record(prime)
        first_index, self.turn = self.turn, self.turn + 1
        for step in self.sampler.stream(self.context, self.config, first_index):
            if step.texts[0]:
                self._record(step.texts[0])
                yield step.texts[0], float(step.probs[0])

    def _record(self, text: str) -> None:
        self._pieces.append(text)
        self.context_chars += len(text)

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def unknown_characters(self, text: str) -> str:
        covers = getattr(self.sampler.tokenizer, "covers", None)  # only character vocabularies lack any
        return covers(text) if covers else ""

    def apply(self, command: Command) -> str:
        """Carry out a command other than generate or quit; returns the feedback to show."""
        name, value = command.name, command.value
        if name == "set":
            self.config = replace(self.config, **value)
            if "seed" in value:
                self.turn = 0
            if self.config.temperature:
                self._warm_temperature = self.config.temperature
            return " · ".join(BY_FIELD[field].show(getattr(self.config, field)) for field in value)
        if name == "show":
            return BY_FIELD[value].show(getattr(self.config, value))
        if name == "greedy":
            on = not self.config.greedy if value is None else value
            return self.apply(Command("set", {"temperature": 0.0 if on else self._warm_temperature}))
        if name == "color":
            self.color = not self.color if value is None else value
            return f"colour {'on' if self.color else 'off'}"
        if name == "reset":
            self.context, self.context_chars = None, 0
            text = self.text
            if text and not text.endswith("\n\n"):  # in the saved text, a new paragraph
                self._pieces = [text, "\n" if text.endswith("\n") else "\n\n"]
            return "state reset: the next turn starts fresh"
        if name == "save":
            text = self.text
            try:
                value.write_text(text, encoding="utf-8")
            except OSError as err:
                raise CommandError(f"cannot write {value}: {err.strerror or err}") from None
            return f"saved {len(text):,} characters to {value}"
        if name == "info":
            lines = [
                self.title,
                self.settings(),
                f"the model has read {self.context_chars:,} characters since the last reset; "
                f"the session text is {len(self.text):,} characters",
                self.sampler.load_note(),
            ]
            return "\n".join(line for line in lines if line)
        if name == "help":
            return HELP
        raise ValueError(f"Session.apply cannot handle {command}")

    def settings(self) -> str:
        shown = [setting.show(getattr(self.config, field)) for field, setting in BY_FIELD.items()]
        shown[list(BY_FIELD).index("seed")] += f" (turn {self.turn})"
        shown.append(f"colour {'on' if self.color else 'off'}")
        shown.append(f"{self.sampler.device} {self.sampler.kernel.describe()}")
        return " · ".join(shown)
