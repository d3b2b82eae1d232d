"""The output layers: the adaptive softmax is an exact, normalised distribution that training,
evaluation, the fast sampling steps and the sampler's filters all see the same way."""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from chargen.analysis.evaluate import eval_streams, total_bits
from chargen.checkpoint import build_model, load_checkpoint, save_checkpoint
from chargen.config import ADAPTIVE_ABOVE, ModelConfig, SampleConfig, resolve_output
from chargen.data.tokenizers import CharTokenizer, unwritten_ids
from chargen.errors import CheckpointError, ConfigError
from chargen.generation.inference import make_stepper
from chargen.generation.sampler import Sampler
from chargen.model import CharLM
from chargen.model.heads import AdaptiveSoftmax, adaptive_cutoffs, padded_rows
from chargen.repl.session import Session
from chargen.training.run import TrainRequest, prepare
from tests.helpers import CHINESE, precisions_here

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"  # 40 characters + the unknown id


def scrambled_adaptive(vocab: int = len(LETTERS) + 1, cutoffs: tuple[int, ...] = (6, 17), seed: int = 0) -> CharLM:
    """A tiny adaptive-softmax LSTM with random weights, non-zero biases everywhere and token ranks
    that are not the id order, so an error in any of them shows."""
    torch.manual_seed(seed)
    model = CharLM(ModelConfig(vocab_size=vocab, layers=2, hidden=16, output="adaptive", cutoffs=cutoffs))
    with torch.no_grad():
        for param in model.head.parameters():
            param.normal_(0, 0.7)
    model.head.set_frequencies(torch.randint(1, 1000, (vocab,)))
    return model.eval()


def exact_probabilities(layer: AdaptiveSoftmax, hidden: torch.Tensor) -> torch.Tensor:
    """p(token) for every id (N, V) in float64, straight from the definition: the head's
    softmax entry for a frequent token, p(cluster) p(token | cluster) for the rest."""

    def softmax(x: torch.Tensor) -> torch.Tensor:
        e = (x - x.max(-1, keepdim=True).values).exp()
        return e / e.sum(-1, keepdim=True)

    h = hidden.double()
    head = softmax(h @ layer.head.weight.double().T + layer.head.bias.double())
    clusters = []
    for projection, out in layer.tails:
        clusters.append(softmax(h @ projection.weight.double().T @ out.weight.double().T + out.bias.double()))
    bounds = layer.bounds
    probs = torch.empty(len(h), len(layer.rank), dtype=torch.float64)
    for token, rank in enumerate(layer.rank.tolist()):
        if rank < bounds[1]:
            probs[:, token] = head[:, rank]
        else:
            k = max(k for k in range(1, len(bounds) - 1) if bounds[k] <= rank)
            probs[:, token] = head[:, bounds[1] + k - 1] * clusters[k - 1][:, rank - bounds[k]]
    return probs


def test_adaptive_bits_equal_the_exact_log_likelihood() -> None:
    model = scrambled_adaptive()
    ids = torch.randint(0, model.config.vocab_size, (3000,))
    streams = eval_streams(ids)
    inputs, targets, scored = next(streams.windows(streams.length))  # the whole text at once
    with torch.no_grad():
        hidden, _ = model.encode(inputs)  # (rows, T, H)
        probs = exact_probabilities(model.head, hidden.flatten(0, 1))
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64))
    p_target = probs.gather(1, targets.flatten()[:, None])[:, 0]
    exact_bits = float(-(p_target.log2() * scored.flatten()).sum())
    bits = total_bits(model, streams, torch.device("cpu"))
    assert bits == pytest.approx(exact_bits, rel=1e-5)


def test_cluster_rows_are_padded_to_a_few_sizes_with_their_own_first() -> None:
    sizes = set()
    for n in range(1, 9000):
        rows = torch.arange(n) * 3 + 1
        padded = padded_rows(rows)
        assert torch.equal(padded[:n], rows) and set(padded[n:].tolist()) <= {1}
        assert len(padded) - n < max(16, n / 8)  # at most 1/8 more (15 rows for small clusters)
        sizes.add(len(padded))
    assert len(sizes) <= 64  # so the matmul kernels compiled for them are reused


def test_padded_clusters_leave_the_bits_and_the_gradients_exact() -> None:
    model = scrambled_adaptive().train()
    rank = model.head.rank
    by_cluster = [torch.nonzero((rank >= lo) & (rank < hi)).squeeze(1) for lo, hi in pairwise(model.head.bounds)]
    counts = (100, 37, 75)  # the tails' 37 and 75 rows are padded to 48 and 80
    assert [len(padded_rows(torch.arange(n))) for n in counts[1:]] == [48, 80]
    torch.manual_seed(1)
    targets = torch.cat([ids[torch.randint(0, len(ids), (n,))] for ids, n in zip(by_cluster, counts)])
    hidden = torch.randn(len(targets), 16, requires_grad=True)
    weights = [hidden, *model.head.parameters()]
    nats = model.head.nll(hidden, targets)
    exact = -exact_probabilities(model.head, hidden).gather(1, targets[:, None])[:, 0].log()
    torch.testing.assert_close(nats.double(), exact, rtol=1e-6, atol=1e-6)
    got, want = torch.autograd.grad(nats.sum(), weights), torch.autograd.grad(exact.sum(), weights)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("output", ["full", "adaptive"])
def test_scores_are_log_probabilities_up_to_a_constant_and_nll_agrees(output: str) -> None:
    model = scrambled_adaptive() if output == "adaptive" else CharLM(ModelConfig(vocab_size=41, hidden=16))
    hidden = torch.randn(50, 16)
    targets = torch.randint(0, 41, (50,))
    with torch.no_grad():
        log_probs = model.head.scores(hidden).log_softmax(-1)
        nats = model.head.nll(hidden, targets)
    torch.testing.assert_close(nats, -log_probs.gather(1, targets[:, None])[:, 0])
    if output == "adaptive":
        exact = exact_probabilities(model.head, hidden).log()
        torch.testing.assert_close(model.head.scores(hidden).double(), exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", precisions_here())
def test_fast_steps_give_the_models_own_adaptive_distribution(precision: str) -> None:
    model = scrambled_adaptive()
    stepper = make_stepper(model, torch.device("cpu"), precision, 8)
    tokens = torch.randint(0, 41, (8, 6))
    state = model.initial_state(8)
    inner = stepper.enter(state)
    with torch.no_grad():
        expected, _ = model(tokens)  # (8, 6, V)
        for t in range(tokens.shape[1]):
            scores, inner = stepper.step(tokens[:, t], inner)
            want, got = expected[:, t].softmax(-1), scores.softmax(-1)
            if precision == "fp32":
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            else:
                assert float((got - want).abs().sum(-1).max()) / 2 < 0.02  # total variation


@pytest.mark.parametrize(
    "config",
    [
        SampleConfig(length=1, temperature=1.0),
        SampleConfig(length=1, temperature=0.6, top_k=5),
        SampleConfig(length=1, temperature=1.3, top_p=0.8),
    ],
    ids=["plain", "top-k", "top-p"],
)
def test_sampling_draws_from_the_exact_distribution(config: SampleConfig) -> None:
    model = scrambled_adaptive(seed=3)
    tokenizer = CharTokenizer(LETTERS)
    sampler = Sampler(model, tokenizer)
    prime = "abcAB"
    with torch.no_grad():
        hidden, _ = model.encode(tokenizer.encode(prime).long()[None])
        logits = exact_probabilities(model.head, hidden[0, -1:])[0].log() / config.temperature
    logits[unwritten_ids(tokenizer)] = -torch.inf  # the unknown id is never drawn
    if config.top_k:
        logits[logits < logits.topk(config.top_k).values[-1]] = -torch.inf
    if config.top_p < 1:
        order = logits.argsort(descending=True)
        mass_before = logits[order].softmax(-1).cumsum(-1) - logits[order].softmax(-1)
        logits[order[mass_before >= config.top_p]] = -torch.inf
    expected = logits.softmax(-1)

    draws = 20_000
    texts = sampler.generate([prime] * draws, dataclasses.replace(config, seed=11))
    counts = torch.bincount(torch.cat([tokenizer.encode(t) for t in texts]).long(), minlength=len(expected))
    observed = counts.double() / draws
    assert float(observed[expected == 0].sum()) == 0  # nothing outside the top-k / nucleus
    assert float((observed - expected).abs().sum()) / 2 < 0.02  # total variation; noise is ~0.01


def test_greedy_takes_the_likeliest_token() -> None:
    model = scrambled_adaptive(seed=4)
    tokenizer = CharTokenizer(LETTERS)
    with torch.no_grad():
        hidden, _ = model.encode(tokenizer.encode("xyz").long()[None])
        best = int(exact_probabilities(model.head, hidden[0, -1:])[0].argmax())
    text = Sampler(model, tokenizer).generate(["xyz"], SampleConfig(length=1, temperature=0))[0]
    assert tokenizer.encode(text).tolist() == [best]


def test_cutoffs_keep_the_frequent_mass_in_the_head_and_grow_by_four() -> None:
    counts = (1 / torch.arange(1, 6001, dtype=torch.float64)) ** 1.1  # Zipf, like a CJK alphabet
    cutoffs = adaptive_cutoffs(counts)
    assert counts[: cutoffs[0]].sum() >= 0.8 * counts.sum() or cutoffs[0] == 1024
    assert all(b == 4 * a for a, b in pairwise(cutoffs))
    assert cutoffs[-1] < 6000
    assert adaptive_cutoffs(torch.ones(5)) == (4,)  # tiny vocabularies still get a valid layer


def test_auto_output_is_adaptive_above_the_threshold_unless_forced_or_tied() -> None:
    assert resolve_output("auto", ADAPTIVE_ABOVE + 1, tie_weights=False) == "adaptive"
    assert resolve_output("auto", ADAPTIVE_ABOVE, tie_weights=False) == "full"
    assert resolve_output("auto", 5000, tie_weights=True) == "full"
    assert resolve_output("full", 5000, tie_weights=False) == "full"
    assert resolve_output("adaptive", 50, tie_weights=False) == "adaptive"
    with pytest.raises(ConfigError, match="--tie-weights"):
        ModelConfig(vocab_size=50, hidden=16, embed=16, tie_weights=True, output="adaptive", cutoffs=(10,))
    with pytest.raises(ConfigError, match="--output must be auto, full or adaptive"):
        resolve_output("sparse", 5000, tie_weights=False)


@pytest.fixture(scope="module")
def adaptive_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1×32 LSTM with the adaptive softmax, trained briefly on Chinese text through the trainer."""
    folder = tmp_path_factory.mktemp("adaptive")
    corpus = folder / "poems.txt"
    corpus.write_text(CHINESE * 40, encoding="utf-8")
    request = TrainRequest(
        corpus=corpus,
        out=folder / "zh.pt",
        model={"layers": 1, "hidden": 32, "dropout": 0.0, "output": "adaptive"},
        train={"batch_size": 8, "seq_len": 32, "max_steps": 40, "max_time": 0, "eval_every": 20, "sample_chars": 0},
    )
    prepare(request).run()
    return folder / "zh.pt"


def test_training_ranks_tokens_by_frequency_and_learns(adaptive_checkpoint: Path) -> None:
    payload = load_checkpoint(adaptive_checkpoint)
    loaded = build_model(payload, adaptive_checkpoint)
    head = loaded.model.head
    assert isinstance(head, AdaptiveSoftmax)
    counts = torch.bincount(loaded.tokenizer.encode(CHINESE).long(), minlength=loaded.tokenizer.vocab_size)
    frequent = int(head.rank.argmin())  # rank 0
    assert counts[frequent] == counts.max()
    assert payload["metrics"]["best_val_bpc"] < 4.5  # uniform over 41 characters is 5.36


def test_colour_view_gets_each_characters_probability(adaptive_checkpoint: Path) -> None:
    loaded = build_model(load_checkpoint(adaptive_checkpoint), adaptive_checkpoint)
    session = Session(Sampler(loaded.model, loaded.tokenizer), SampleConfig(length=30, seed=2))
    pieces = list(session.generate("床前"))
    assert len("".join(text for text, _ in pieces)) == 30
    assert all(0 < p <= 1 for _, p in pieces)


def test_a_rank_that_is_not_a_permutation_is_refused(adaptive_checkpoint: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(adaptive_checkpoint)
    payload["model"]["head.rank"] = torch.zeros_like(payload["model"]["head.rank"])
    broken = tmp_path / "broken.pt"
    save_checkpoint(broken, payload)
    with pytest.raises(CheckpointError, match="not a permutation"):
        build_model(load_checkpoint(broken), broken)


def test_a_checkpoint_from_before_the_adaptive_softmax_loads_as_full(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(tiny_checkpoint)
    for key in ("output", "cutoffs"):  # what model_config held before this layer existed
        payload["model_config"].pop(key)
    old = tmp_path / "old.pt"
    save_checkpoint(old, payload)
    loaded = build_model(load_checkpoint(old), old)
    assert loaded.model.config.output == "full"
    assert set(loaded.model.head.state_dict()) == {"weight", "bias"}


def test_a_grown_vocabulary_keeps_the_known_characters_probabilities_in_the_head(adaptive_checkpoint: Path) -> None:
    from chargen.training.events import Callbacks
    from chargen.training.finetune import adopt_vocabulary, base_model, fine_tune_vocabulary

    old = build_model(load_checkpoint(adaptive_checkpoint), adaptive_checkpoint)
    base_lm, base = base_model(adaptive_checkpoint, {}, {})
    tokenizer = fine_tune_vocabulary(base, CHINESE + "新字", grow=True)
    model = adopt_vocabulary(base_lm, base, tokenizer, Callbacks())
    assert tokenizer.vocab_size == old.tokenizer.vocab_size + 2
    assert torch.equal(model.head.rank.sort().values, torch.arange(tokenizer.vocab_size))
    hidden = torch.randn(4, 32)
    with torch.no_grad():
        before, after = old.model.head.scores(hidden), model.head.scores(hidden)
    in_head = [c for i, c in enumerate(old.tokenizer.chars, start=1) if old.model.head.rank[i] < model.head.shortlist]
    old_ids, new_ids = old.tokenizer.encode("".join(in_head)), tokenizer.encode("".join(in_head))
    torch.testing.assert_close(after[:, new_ids.long()], before[:, old_ids.long()])
    assert int(model.head.rank[tokenizer.encode("新").long()]) >= old.tokenizer.vocab_size  # the rarest
