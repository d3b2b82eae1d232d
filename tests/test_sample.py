"""The sampler: determinism, greedy, top-k, top-p, stop strings, unknown characters, batches, the
fast inference step against the model's own forward, and the Python API."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import chargen
from chargen.checkpoint import load_model
from chargen.config import ModelConfig, SampleConfig
from chargen.data.tokenizers import CharTokenizer, unwritten_ids
from chargen.generation.draw import StreamRandom, choose, filter_logits
from chargen.generation.inference import make_stepper, step_precisions
from chargen.generation.kernels import torch_threads
from chargen.generation.sampler import Sampler
from chargen.model import CharLM
from tests.helpers import ScriptedLoad, precisions_here

PRIMES = ["Whan that", "", "The droghte of March", "Whan that"]  # mixed lengths, a repeat, an empty one


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module", params=precisions_here())
def sampler(request: pytest.FixtureRequest, loaded) -> Sampler:
    return Sampler(loaded.model, loaded.tokenizer, precision=request.param)


def greedy_reference(model: CharLM, tokenizer, prime: str, length: int) -> str:
    """The plainest greedy loop: the model's own forward, one token at a time, the likeliest token
    that a text can hold (never the unknown)."""
    ids = tokenizer.encode(prime).long()[None]
    chars = []
    with torch.no_grad():
        logits, state = model(ids)
        for _ in range(length):
            scores = logits[:, -1].clone()
            scores[:, unwritten_ids(tokenizer)] = float("-inf")
            token = scores.argmax(dim=-1)
            chars.append(tokenizer.decode(token))
            logits, state = model(token[:, None], state)
    return "".join(chars)


def test_the_same_seed_gives_the_same_text(sampler: Sampler) -> None:
    config = SampleConfig(length=120, temperature=0.9, seed=11)
    assert sampler.generate(PRIMES, config) == sampler.generate(PRIMES, config)


def test_different_seeds_give_different_text(sampler: Sampler) -> None:
    first = sampler.generate(["Whan"], SampleConfig(length=120, temperature=1.0, seed=1))
    second = sampler.generate(["Whan"], SampleConfig(length=120, temperature=1.0, seed=2))
    assert first != second


def test_a_sample_is_the_same_alone_or_in_a_batch(sampler: Sampler) -> None:
    config = SampleConfig(length=150, temperature=1.0, top_k=20, seed=5)
    batch = sampler.generate(PRIMES, config)
    alone = [sampler.generate([prime], config, first_index=i)[0] for i, prime in enumerate(PRIMES)]
    assert batch == alone
    assert batch[0] != batch[3]  # the same prime in two streams: two different samples


def test_streams_joining_and_leaving_a_batch_draw_their_own_numbers() -> None:
    """What `chargen serve` does: streams of other seeds join at other steps, some leave; each
    row still gets its own stream's sequence, past the 256 numbers drawn at a time."""
    singles = [StreamRandom(seed, 1, index) for seed, index in [(7, 0), (7, 1), (9, 3)]]
    alone = [torch.cat([single.next() for _ in range(700)]) for single in singles]
    batch = StreamRandom(7, 2)  # streams 0 and 1 of seed 7
    rows: list[list[float]] = [[], [], []]
    for step in range(700):
        if step == 300:
            batch.join(StreamRandom(9, 1, 3))  # joins with its block untouched, the others 44 into theirs
        if step == 500:
            batch.select(torch.tensor([1, 2]))  # stream 0 leaves
        drawn = batch.next()[:, 0].tolist()
        live = [0, 1] if step < 300 else [0, 1, 2] if step < 500 else [1, 2]
        for row, value in zip(live, drawn):
            rows[row].append(value)
    assert rows[0] == alone[0][:500, 0].tolist()
    assert rows[1] == alone[1][:, 0].tolist()
    assert rows[2] == alone[2][:400, 0].tolist()


def test_streaming_and_block_decoding_give_the_same_text(sampler: Sampler) -> None:
    config = SampleConfig(length=100, temperature=1.0, seed=3, stop=("e t",))
    streamed = [""] * len(PRIMES)
    for step in sampler.stream(sampler.read(PRIMES), config):
        for i, text in enumerate(step.texts):
            streamed[i] += text
    assert streamed == sampler.generate(PRIMES, config)


def test_unseeded_runs_differ(sampler: Sampler) -> None:
    config = SampleConfig(length=100, temperature=1.0)
    assert sampler.generate(["Whan"], config) != sampler.generate(["Whan"], config)


def test_temperature_zero_is_the_models_argmax(loaded) -> None:
    sampler = Sampler(loaded.model, loaded.tokenizer, precision="fp32")
    text = sampler.generate(["Whan that"], SampleConfig(length=80, temperature=0))[0]
    assert text == greedy_reference(loaded.model, loaded.tokenizer, "Whan that", 80)


def test_top_k_one_is_greedy(sampler: Sampler) -> None:
    greedy = sampler.generate(PRIMES, SampleConfig(length=80, temperature=0))
    assert sampler.generate(PRIMES, SampleConfig(length=80, temperature=1.5, top_k=1, seed=9)) == greedy


@pytest.mark.parametrize("temperature", [1e-3, 1e-20, 1e-38, 1e-45])
def test_a_tiny_temperature_draws_the_likeliest_token_and_never_nan(temperature: float) -> None:
    logits = torch.tensor([[1.0, 50.0, 3.0], [-20.0, -30.0, -10.0]])
    for u in (0.0, 0.5, 0.999999):
        token, prob = choose(logits, SampleConfig(temperature=temperature), torch.full((2, 1), u))
        assert token.tolist() == [1, 2]
        assert prob is not None and prob.tolist() == [1.0, 1.0]


# A model whose next-token distribution is known: the head ignores the state and outputs fixed
# logits. Ids: 0 = unknown (never drawn: the others share its 0.02), 1..5 = "abcde".
KNOWN_PROBS = [0.02, 0.5, 0.3, 0.1, 0.05, 0.03]


@pytest.fixture(scope="module")
def known_sampler() -> Sampler:
    tokenizer = CharTokenizer("abcde")
    model = CharLM(ModelConfig(tokenizer.vocab_size, layers=1, hidden=8, dropout=0.0))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(KNOWN_PROBS).log())
    return Sampler(model, tokenizer)


def test_filter_logits_keeps_the_nucleus_of_known_logits() -> None:
    logits = torch.tensor([KNOWN_PROBS]).log()
    kept = filter_logits(logits, top_p=0.75).isfinite()[0].tolist()
    assert kept == [False, True, True, False, False, False]  # 0.5 alone < 0.75; 0.5 + 0.3 covers it
    assert filter_logits(logits, top_p=0.5).isfinite()[0].tolist() == [False, True] + [False] * 4
    assert filter_logits(logits, top_k=3).isfinite()[0].tolist() == [False, True, True, True, False, False]


@pytest.mark.parametrize(("top_p", "nucleus"), [(0.75, "ab"), (0.85, "abc"), (1.0, "abcde")])
def test_top_p_draws_only_from_the_nucleus(known_sampler: Sampler, top_p: float, nucleus: str) -> None:
    texts = known_sampler.generate([""] * 32, SampleConfig(length=50, temperature=1.0, top_p=top_p, seed=1))
    drawn = set("".join(texts))
    assert drawn == set(nucleus)


def test_sampling_follows_the_distribution(known_sampler: Sampler) -> None:
    texts = known_sampler.generate([""] * 64, SampleConfig(length=100, temperature=1.0, seed=2))
    counts = "".join(texts).count("a") / 6400
    assert abs(counts - 0.5 / 0.98) < 0.03


def test_a_stop_string_ends_the_sample_before_it(sampler: Sampler) -> None:
    config = SampleConfig(length=200, temperature=0.8, seed=4)
    full = sampler.generate(["Whan"], config)[0]
    stop = full[90:93]  # past the first decoding block, so the stop is found inside a later one
    cut = full[: full.index(stop)]
    stopped = sampler.generate(["Whan"], SampleConfig(length=200, temperature=0.8, seed=4, stop=("zzz", stop)))[0]
    assert stopped == cut
    completion = next(sampler.completions(["Whan"], SampleConfig(length=200, temperature=0.8, seed=4, stop=(stop,))))
    assert completion.stopped


def test_a_stop_string_past_the_length_does_not_count(sampler: Sampler) -> None:
    config = SampleConfig(length=50, temperature=0.8, seed=4)
    full = sampler.generate(["Whan"], SampleConfig(length=200, temperature=0.8, seed=4))[0]
    late = full[60:64]
    assert late not in full[:53]  # (else choose another piece)
    completion = next(sampler.completions(["Whan"], replace(config, stop=(late,))))
    assert completion.text == full[:50]
    assert not completion.stopped


def test_length_counts_characters(sampler: Sampler) -> None:
    texts = sampler.generate(PRIMES, SampleConfig(length=77, seed=1))
    assert [len(t) for t in texts] == [77] * len(PRIMES)


def test_characters_outside_the_vocabulary_in_the_prime_do_not_crash(sampler: Sampler) -> None:
    prime = "Ω 漢字 🙂 \x00 naïve"
    assert len(sampler.generate([prime, "plain"], SampleConfig(length=30, seed=1))[0]) == 30


def test_an_empty_prime_starts_as_after_a_newline(sampler: Sampler) -> None:
    assert torch.equal(sampler.read([""]).logits, sampler.read(["\n"]).logits)


def test_reading_a_batch_equals_reading_each_text_alone(sampler: Sampler) -> None:
    batch = sampler.read(PRIMES)
    for i, prime in enumerate(PRIMES):
        alone = sampler.read([prime])
        torch.testing.assert_close(batch.logits[i : i + 1], alone.logits)
        for together, single in zip(batch.state, alone.state):
            torch.testing.assert_close(together[:, i : i + 1], single)


def test_a_streamed_context_holds_each_stream_at_its_last_token(loaded) -> None:
    """A stream that stopped early keeps the state after the text and the stop string it read."""
    sampler = Sampler(loaded.model, loaded.tokenizer, precision="fp32")
    probe = sampler.generate(["Whan"], SampleConfig(length=100, temperature=0.8, seed=8))[0]
    stop = probe[20:22]
    config = SampleConfig(length=100, temperature=0.8, seed=8, stop=(stop,))
    context = sampler.read(["Whan", "The"])
    texts = ["", ""]
    for step in sampler.stream(context, config):
        texts = [t + new for t, new in zip(texts, step.texts)]
    assert texts[0] == probe[: probe.index(stop)]
    expected = sampler.read(["Whan" + texts[0] + stop])
    torch.testing.assert_close(context.logits[:1], expected.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_fp32_step_gives_the_models_logits_and_tokens(cell: str) -> None:
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefgh \n")
    model = CharLM(ModelConfig(tokenizer.vocab_size, cell=cell, layers=2, hidden=24, embed=12, dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # larger weights: a livelier model whose argmax changes often
    stepper = make_stepper(model, torch.device("cpu"), "fp32")
    tokens = torch.randint(tokenizer.vocab_size, (3, 40))
    with torch.no_grad():
        expected, _ = model(tokens)  # (3, 40, V)
        inner = stepper.enter(model.initial_state(3))
        for t in range(tokens.shape[1]):
            logits, inner = stepper.step(tokens[:, t], inner)
            torch.testing.assert_close(logits, expected[:, t], atol=1e-4, rtol=1e-4)
    sampler = Sampler(model, tokenizer, precision="fp32")
    greedy = sampler.generate(["abc"], SampleConfig(length=60, temperature=0))[0]
    assert greedy == greedy_reference(model, tokenizer, "abc", 60)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_streams_that_stop_early_leave_the_others_as_they_were(cell: str) -> None:
    """A stream that meets its stop string leaves the batch (its state rows are dropped); the
    streams still running write what they write alone, for every cell's state layout."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefgh \n")
    model = CharLM(ModelConfig(tokenizer.vocab_size, cell=cell, layers=2, hidden=16, embed=8, dropout=0.0)).eval()
    sampler = Sampler(model, tokenizer, precision="fp32", share_cores=False)
    primes = ["a", "b", "c", "d"]
    full = sampler.generate(primes, SampleConfig(length=400, temperature=1.0, seed=3))
    stop = next(full[0][i : i + 5] for i in range(100, 300) if full[0][i : i + 5] not in full[0][: i + 4])
    config = SampleConfig(length=400, temperature=1.0, seed=3, stop=(stop,))
    together = sampler.generate(primes, config)
    alone = [sampler.generate([p], config, first_index=i)[0] for i, p in enumerate(primes)]
    assert together == alone
    assert together == [text.split(stop)[0] for text in full]
    assert 64 < len(together[0]) < 400  # stopped after the first decoding block, the others ran on


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_unknown_character_is_never_written(temperature: float) -> None:
    """Id 0 stands for characters outside the vocabulary and is in no training text; even a model
    that puts most of its weight there (as an undertrained one can) writes only real characters."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefgh \n")
    model = CharLM(ModelConfig(tokenizer.vocab_size, layers=1, hidden=16, embed=8, dropout=0.0)).eval()
    with torch.no_grad():
        model.head.bias[0] = 5.0  # the unknown id: e^5 times likelier than the others
    for precision in step_precisions(model, torch.device("cpu")):
        sampler = Sampler(model, tokenizer, precision=precision, share_cores=False)
        texts = sampler.generate(["ab", "c"], SampleConfig(length=200, temperature=temperature, seed=5))
        assert [len(t) for t in texts] == [200, 200]
        assert "\ufffd" not in "".join(texts), precision


def bits_per_char(sampler: Sampler, text: str) -> float:
    """Bits per character of `text` read through the sampler's one-token step."""
    ids = sampler.tokenizer.encode(text).long()
    stepper = sampler.stepper
    with torch.no_grad():
        inner = stepper.enter(sampler.model.initial_state(1))
        nats = 0.0
        for current, following in zip(ids[:-1].tolist(), ids[1:].tolist()):
            logits, inner = stepper.step(torch.tensor([current]), inner)
            nats -= float(logits.log_softmax(dim=-1)[0, following])
    return nats / math.log(2) / (len(ids) - 1)


@pytest.mark.parametrize("precision", precisions_here(reduced=True))
def test_reduced_precision_keeps_the_models_quality(loaded, english_text: str, precision: str) -> None:
    text = english_text[:600]
    fp32 = bits_per_char(Sampler(loaded.model, loaded.tokenizer, precision="fp32"), text)
    reduced = bits_per_char(Sampler(loaded.model, loaded.tokenizer, precision=precision), text)
    assert abs(reduced - fp32) < 0.01 * fp32


@pytest.mark.parametrize("precision", [p for p in precisions_here() if p.startswith("int8")])
def test_an_int8_step_gives_the_same_text_on_one_thread_or_two(precision: str) -> None:
    """A sampler on a busy machine moves to fewer threads mid-run (chargen.threads.FairThreads):
    the text of a seed must not change with them. A 2×256 model, big enough that the products
    are split among threads."""
    tokenizer = CharTokenizer.train(PRIMES[0] + PRIMES[2] + "\n")
    torch.manual_seed(0)
    model = CharLM(ModelConfig(tokenizer.vocab_size, layers=2, hidden=256))
    config = SampleConfig(length=300, temperature=1.0, seed=3)
    texts = {}
    for threads in (1, 2):
        with torch_threads(threads):  # a requested precision runs on the threads of its making
            texts[threads] = Sampler(model, tokenizer, precision=precision, share_cores=False).generate(PRIMES, config)
    assert texts[1] == texts[2]


def test_auto_precision_is_measured_for_an_lstm_on_the_cpu_and_fp32_otherwise(loaded) -> None:
    sampler = Sampler(loaded.model, loaded.tokenizer, load=ScriptedLoad(busy=0.0))  # a quiet machine
    kernel = sampler.kernel
    options = step_precisions(loaded.model, torch.device("cpu"))
    assert kernel.how == "measured" and len(kernel.speeds[1]) == len(options)  # conftest pins 1 thread
    for streams, speeds in kernel.speeds.items():
        assert kernel.for_batch(streams).label == max(speeds, key=speeds.__getitem__)
        assert sampler.stepper_for(streams).precision == kernel.for_batch(streams).precision
    gru = CharLM(ModelConfig(loaded.tokenizer.vocab_size, cell="gru", layers=1, hidden=8))
    assert Sampler(gru, loaded.tokenizer).stepper.precision == "fp32"


def test_the_python_api_loads_and_generates(tiny_checkpoint: Path) -> None:
    model = chargen.load(tiny_checkpoint)
    texts = model.generate(["To be", "Or not"], length=60, temperature=0.7, top_k=20, seed=1)
    assert [len(t) for t in texts] == [60, 60]
    assert texts == model.generate(["To be", "Or not"], length=60, temperature=0.7, top_k=20, seed=1)
    assert model.generate("Or not", length=60, temperature=0.7, top_k=20, seed=1, first_index=1) == texts[1:]
    assert len(model.generate("x", n=3, length=5, seed=1)) == 3
    assert "\n" not in model.generate("x", length=200, seed=1, stop="\n")[0]


def test_importing_chargen_does_not_import_torch() -> None:
    code = "import sys, chargen, chargen.cli.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
