"""Typed settings for every stage, each validated where it is built so bad values fail early."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any, Literal

from chargen.errors import ConfigError

Cell = Literal["lstm", "gru", "rnn"]
TokenizerKind = Literal["char", "sentencepiece"]
OutputKind = Literal["full", "adaptive"]
Method = Literal["generative", "discriminative", "ngram", "ensemble"]
Pooling = Literal["last", "mean", "max", "all"]


# Seconds a torchrun rank waits for its peers before failing (--dist-timeout).
DIST_TIMEOUT = 300.0

# Above this many tokens `--output auto` picks the adaptive softmax, which is faster there;
# measured with benchmarks/vocab.py (docs/PERFORMANCE.md).
ADAPTIVE_ABOVE = 1000


def resolve_output(requested: str, vocab_size: int, tie_weights: bool) -> str:
    """'auto' is the adaptive softmax above ADAPTIVE_ABOVE tokens, unless weights are tied (only
    the full softmax has one output row per token to share with the embedding)."""
    _require(requested in ("auto", "full", "adaptive"), f"--output must be auto, full or adaptive, got {requested!r}")
    if requested == "auto":
        return "adaptive" if vocab_size > ADAPTIVE_ABOVE and not tie_weights else "full"
    return requested


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape; stored in every checkpoint so the model can be rebuilt from the file."""

    vocab_size: int
    cell: Cell = "lstm"
    layers: int = 2
    hidden: int = 512
    embed: int = 0  # 0 means auto: see embed_dim
    dropout: float = 0.1
    weight_drop: float = 0.2  # of the recurrent weights, while training (chargen.model.dropout.layer_by_layer)
    tie_weights: bool = False
    output: OutputKind = "full"  # checkpoints from before the adaptive softmax have the full one
    cutoffs: tuple[int, ...] = ()  # adaptive only: cluster boundaries in frequency rank

    def __post_init__(self) -> None:
        _require(self.vocab_size >= 2, f"vocab_size must be at least 2, got {self.vocab_size}")
        _require(self.cell in ("lstm", "gru", "rnn"), f"--cell must be lstm, gru or rnn, got {self.cell!r}")
        _require(1 <= self.layers <= 16, f"--layers must be between 1 and 16, got {self.layers}")
        _require(1 <= self.hidden <= 8192, f"--hidden must be between 1 and 8192, got {self.hidden}")
        _require(0 <= self.embed <= 8192, f"--embed must be between 0 and 8192, got {self.embed}")
        _require(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(0.0 <= self.weight_drop < 1.0, f"--weight-drop must be in [0, 1), got {self.weight_drop}")
        if self.tie_weights:
            _require(
                self.embed_dim == self.hidden,
                "--tie-weights needs --embed equal to --hidden (or 0)",
            )
        _require(self.output in ("full", "adaptive"), f"--output must be auto, full or adaptive, got {self.output!r}")
        if self.output == "adaptive":
            _require(not self.tie_weights, "--tie-weights needs the full softmax: use --output full")
            bounds = (0, *self.cutoffs, self.vocab_size)
            _require(
                bool(self.cutoffs) and all(a < b for a, b in pairwise(bounds)),
                f"adaptive cutoffs must rise strictly between 0 and the vocabulary size {self.vocab_size}, "
                f"got {self.cutoffs}",
            )
        else:
            _require(not self.cutoffs, "cutoffs are for the adaptive softmax only")

    def describe_output(self) -> str:
        """The output layer in a few words, for `chargen info`, training and the REPL."""
        if self.output == "full":
            return "full softmax"
        bounds = (*self.cutoffs, self.vocab_size)
        clusters = ", ".join(f"{low}-{high - 1}" for low, high in pairwise(bounds))
        return f"adaptive softmax (head {self.cutoffs[0]}, clusters {clusters} by frequency rank)"

    @property
    def embed_dim(self) -> int:
        """A token needs far fewer dimensions than the state does: 128 keeps the first layer's
        input matmul small (about a fifth less compute per character at 2×512). Tied weights
        need the embedding to match the hidden size."""
        if self.embed:
            return self.embed
        return self.hidden if self.tie_weights else min(self.hidden, 128)


@dataclass(frozen=True)
class TokenizerConfig:
    kind: TokenizerKind = "char"
    vocab_size: int = 2000  # sentencepiece only
    model_type: Literal["bpe", "unigram"] = "unigram"
    sample_chars: int = 20_000_000  # sentencepiece trains on this many characters spread over the corpus

    def __post_init__(self) -> None:
        _require(
            self.kind in ("char", "sentencepiece"),
            f"--tokenizer must be char or sentencepiece, got {self.kind!r}",
        )
        _require(self.model_type in ("bpe", "unigram"), f"--sp-type must be bpe or unigram, got {self.model_type!r}")
        _require(self.vocab_size >= 1, f"--vocab-size must be positive, got {self.vocab_size}")
        _require(self.sample_chars >= 1, f"--sp-sample-chars must be positive, got {self.sample_chars}")


EVAL_AUTO = 0  # TrainConfig.eval_chars: chosen for time at the run's first start (chargen.training.evalpart)
EVAL_ALL = -1  # ...: the whole validation tail


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Budgets combine: training stops at whichever is reached first."""

    batch_size: int = 64
    seq_len: int = 64
    lr: float = 8e-3
    min_lr_frac: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.3  # AdamW; what keeps a small corpus read many times from overfitting
    grad_clip: float = 1.0
    max_steps: int = 0  # 0 means no step budget
    max_epochs: float = 0.0
    max_time: float = 600.0  # seconds; 0 means no time budget
    eval_every: int = 250
    patience: int = 0  # evaluations without improvement before stopping; 0 disables
    val_frac: float = 0.1
    val_max_chars: int = 300_000  # caps the validation tail: ~5 s per evaluation of the default model on 2 cores
    eval_chars: int = EVAL_AUTO  # of the tail read by evaluations during the run: EVAL_AUTO, EVAL_ALL or a count
    seed: int = 1337
    device: str = "auto"
    threads: int = 0  # 0 means torch's default
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    sample_chars: int = 200  # shown at each evaluation; 0 disables

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.seq_len >= 1, f"--seq-len must be positive, got {self.seq_len}")
        _require(math.isfinite(self.lr) and 0 < self.lr < 1, f"--lr must be in (0, 1), got {self.lr}")
        _require(0 <= self.min_lr_frac <= 1, f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")
        _require(self.warmup_steps >= 0, f"--warmup must be >= 0, got {self.warmup_steps}")
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        _require(self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}")
        _require(self.max_epochs >= 0, f"--max-epochs must be >= 0, got {self.max_epochs}")
        _require(self.max_time >= 0, f"--max-time must be >= 0, got {self.max_time}")
        _require(
            self.max_steps or self.max_epochs or self.max_time,
            "give a budget: --max-steps, --max-epochs or --max-time",
        )
        _require(self.eval_every >= 1, f"--eval-every must be positive, got {self.eval_every}")
        _require(self.patience >= 0, f"--patience must be >= 0, got {self.patience}")
        _require(0 < self.val_frac < 0.5, f"--val-frac must be in (0, 0.5), got {self.val_frac}")
        _require(self.val_max_chars >= 2, f"--val-max-chars must be at least 2, got {self.val_max_chars}")
        _require(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        _require(self.eval_chars >= EVAL_ALL, f"--eval-chars must be auto, all or a count, got {self.eval_chars}")
        _require(
            self.precision in ("auto", "fp32", "bf16"),
            f"--precision must be auto, fp32 or bf16, got {self.precision!r}",
        )
        _require(self.sample_chars >= 0, f"sample_chars must be >= 0, got {self.sample_chars}")


@dataclass(frozen=True)
class ClassifierConfig:
    """How to build and train a text classifier (chargen.classify); stored in the classifier file.
    Language-model phases take their other settings from TrainConfig."""

    method: Method = "ngram"  # measured best in minutes on a CPU (benchmarks/classify.py); ensemble adds an LSTM
    ngram_max: int = 5  # the ngram method (and the ensemble's) reads character 1..ngram_max-grams
    pretrain_frac: float = 0.5  # share of a time budget for the base language model; 0 skips it
    finetune_lr: float = 2e-3  # per-class language models and the discriminative classifier
    batch_size: int = 32  # examples per discriminative step
    max_len: int = 512  # tokens a discriminative classifier reads (the start of each text)
    pooling: Pooling = "all"  # the head reads the last state, the mean or max over states, or all three
    class_weights: bool = True  # weight the discriminative loss by inverse class frequency
    val_frac: float = 0.1  # of each class, held out to choose weights and calibrate probabilities
    test_frac: float = 0.0  # of each class, held out for the final report

    def __post_init__(self) -> None:
        _require(
            self.method in ("generative", "discriminative", "ngram", "ensemble"),
            f"--method must be ensemble, ngram, discriminative or generative, got {self.method!r}",
        )
        _require(1 <= self.ngram_max <= 8, f"--ngram-max must be between 1 and 8, got {self.ngram_max}")
        _require(0 <= self.pretrain_frac < 1, f"--pretrain-frac must be in [0, 1), got {self.pretrain_frac}")
        _require(
            math.isfinite(self.finetune_lr) and 0 < self.finetune_lr < 1,
            f"--finetune-lr must be in (0, 1), got {self.finetune_lr}",
        )
        _require(self.batch_size >= 1, f"--examples-per-batch must be positive, got {self.batch_size}")
        _require(self.max_len >= 1, f"--max-len must be positive, got {self.max_len}")
        _require(
            self.pooling in ("last", "mean", "max", "all"),
            f"--pooling must be last, mean, max or all, got {self.pooling!r}",
        )
        _require(0 < self.val_frac < 0.5, f"--val-frac must be in (0, 0.5), got {self.val_frac}")
        _require(0 <= self.test_frac < 0.5, f"--test-frac must be in [0, 0.5), got {self.test_frac}")


@dataclass(frozen=True)
class SampleConfig:
    """How to sample. temperature 0 means greedy (argmax)."""

    length: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0 means off
    top_p: float = 1.0  # 1 means off
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _require(self.length >= 1, f"--length must be positive, got {self.length}")
        _require(
            math.isfinite(self.temperature) and self.temperature >= 0,
            f"--temperature must be a number >= 0, got {self.temperature}",
        )
        _require(self.top_k >= 0, f"--top-k must be >= 0, got {self.top_k}")
        _require(
            math.isfinite(self.top_p) and 0 < self.top_p <= 1,
            f"--top-p must be in (0, 1], got {self.top_p}",
        )
        _require(all(self.stop), "stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ as typed on a command line -> the characters themselves."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"cannot read duration {text!r}: use a number with s, m or h, like 90s, 20m, 1.5h")
    unit = (match.group(2) or "s").lower()
    return float(match.group(1)) * _UNIT_SECONDS[unit]


def format_duration(seconds: float) -> str:
    """Seconds as --max-time and --dist-timeout take them: 600 -> '10m', 90 -> '90s'."""
    for unit in ("h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds / _UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


def default(cls: type, name: str) -> Any:
    """A config field's default, for --help: each default is set once, in its dataclass."""
    (found,) = (f for f in fields(cls) if f.name == name)
    return found.default_factory() if found.default is MISSING else found.default  # type: ignore[misc]


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config, ignoring keys a newer version may have added and validating the rest."""
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    return cls(**values)
