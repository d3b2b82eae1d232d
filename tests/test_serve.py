"""`chargen serve` over real HTTP on 127.0.0.1: a real server subprocess, httpx and the official
openai client. Completions (whole, streamed, lists of prompts, n, stop strings) give the text
`chargen sample` gives; eval and classify; every error case; a disconnect; many clients at once;
shutdown by Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import ENGLISH, chargen_command, latin_and_cyrillic
from tests.serving import PRECISION, ServerProcess, wait_for

LONG = 1_000_000  # characters: a stream that would run for many seconds


def chargen(*args: object, **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chargen_command(), *map(str, args)], capture_output=True, text=True, timeout=300, **options)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clf")
    data = folder / "scripts.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in latin_and_cyrillic()), encoding="utf-8")
    tiny = ["--layers", "1", "--hidden", "32", "--batch-size", "8", "--seq-len", "32", "--threads", "1"]
    budget = ["--max-steps", "40", "--eval-every", "20", "--lr", "0.01", "--precision", "fp32"]
    trained = chargen("classify", "train", data, "--method", "generative", *tiny, *budget, cwd=folder)
    assert trained.returncode == 0, trained.stderr
    return folder / "checkpoints" / "scripts.clf"


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, classifier: Path, home: Path):
    running = ServerProcess(tiny_checkpoint, classifier, "--precision", PRECISION, "--max-tokens", LONG, home=home)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def sample_cli(checkpoint: Path, home: Path, primes: list[str], *options: object) -> list[str]:
    """What `chargen sample` writes for these priming texts (one per line of a file)."""
    prime_file = home / "primes.txt"
    prime_file.write_text("".join(f"{p}\n" for p in primes), encoding="utf-8")
    done = chargen(
        "sample", checkpoint, "--prime-file", prime_file, "--precision", PRECISION, "--format", "jsonl", *options,
        env={"CHARGEN_HOME": str(home), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["text"] for line in done.stdout.splitlines()]


def test_the_models_are_listed_for_the_openai_client(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "scripts"}
    assert models["tiny"].chargen_kind == "generator" and models["scripts"].chargen_kind == "classifier"
    assert client.models.retrieve("tiny").owned_by == "chargen"


def test_completions_are_the_text_chargen_sample_writes(
    client: openai.OpenAI, tiny_checkpoint: Path, home: Path
) -> None:
    primes = ["Whan that", "The droghte"]
    got = client.completions.create(
        model="tiny", prompt=primes, n=2, max_tokens=80, temperature=0.9, seed=7, extra_body={"top_k": 20}
    )
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert all(len(c.text) == 80 and c.finish_reason == "length" for c in got.choices)
    expected = sample_cli(tiny_checkpoint, home, primes, "-n", 2, "--seed", 7, "--length", 80, "--temperature", 0.9,
                          "--top-k", 20)  # fmt: skip
    assert [c.text for c in got.choices] == expected
    assert got.choices[0].text != got.choices[1].text  # two samples of one prompt: two streams of the seed
    assert got.usage.completion_tokens == 320 and got.usage.prompt_tokens == 2 * (9 + 11)


def test_a_stream_arrives_in_chunks_that_make_the_same_text(client: openai.OpenAI, server: ServerProcess) -> None:
    options = {"model": "tiny", "prompt": ["Whan", "And"], "max_tokens": 300, "temperature": 1.0, "seed": 3}
    whole = client.completions.create(**options)
    parts: dict[int, list[str]] = {0: [], 1: []}
    finishes = {}
    chunks = 0
    for chunk in client.completions.create(**options, stream=True):
        chunks += 1
        for choice in chunk.choices:
            parts[choice.index].append(choice.text)
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    # How many chunks the text comes in depends on timing (a step thread that outruns a busy event
    # loop hands it everything at once); what is fixed: a chunk per choice at least, each ended once.
    assert chunks >= 2 and finishes == {0: "length", 1: "length"}
    assert ["".join(parts[i]) for i in (0, 1)] == [c.text for c in whole.choices]
    asked = {**options, "stream": True, "chargen_pieces": True}  # each token's text and probability, for the colours
    with httpx.stream("POST", f"{server.url}/v1/completions", json=asked) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])
    choices = [choice for e in events[:-1] for choice in json.loads(e[6:])["choices"]]
    for i, choice in enumerate(whole.choices):
        pieces = [piece for c in choices if c["index"] == i for piece in c["chargen_pieces"]]
        assert "".join(text for text, _ in pieces) == choice.text
        assert all(0 < p <= 1 for _, p in pieces)


def test_a_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    options = {"model": "tiny", "prompt": "Whan", "temperature": 1.0, "seed": 5}
    free = client.completions.create(**options, max_tokens=400).choices[0].text
    stop = free[150:153]
    cut = free[: free.index(stop)]
    stopped = client.completions.create(**options, max_tokens=400, stop=[stop, "\x00never"]).choices[0]
    assert (stopped.text, stopped.finish_reason) == (cut, "stop")
    streamed = "".join(c.choices[0].text for c in client.completions.create(**options, max_tokens=400, stop=stop,
                                                                             stream=True))  # fmt: skip
    assert streamed == cut


def test_eval_gives_chargen_evals_figure_and_each_characters_surprise(
    server: ServerProcess, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    text = ENGLISH[:300]
    scored = httpx.post(f"{server.url}/v1/eval", json={"model": "tiny", "text": text}).json()
    file = tmp_path / "text.txt"
    file.write_text(text, encoding="utf-8")
    cli = json.loads(chargen("eval", tiny_checkpoint, file, "--format", "json", "--quiet").stdout)
    assert scored["bpc"] == pytest.approx(cli["bpc"], abs=1e-4) and scored["characters"] == cli["characters"]
    surprise = scored["surprise"]
    assert "".join(s["text"] for s in surprise) == text and len(surprise) == len(text)
    assert surprise[0]["bits"] is None and all(s["bits"] >= 0 for s in surprise[1:])


def test_classify_labels_each_text_with_its_probabilities(server: ServerProcess) -> None:
    texts = ["the quick brown fox jumps", "съешь же ещё этих мягких булок"]
    found = httpx.post(f"{server.url}/v1/classify", json={"model": "scripts", "input": texts}).json()
    assert [d["label"] for d in found["data"]] == ["latin", "cyrillic"]
    assert all(sum(d["probabilities"].values()) == pytest.approx(1) for d in found["data"])


BAD = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"model": "tiny", "prompt": "a", "temprature": 1}, 400, "temprature", "unrecognized request argument"),
    ({"prompt": "a"}, 422, "model", "model is required"),
    ({"model": "tiny", "max_tokens": LONG + 1}, 422, "max_tokens", f"between 1 and {LONG}"),
    ({"model": "tiny", "max_tokens": "ten"}, 422, "max_tokens", "must be an integer"),
    ({"model": "tiny", "n": 17}, 422, "n", "between 1 and 16"),
    ({"model": "tiny", "temperature": -1}, 422, "temperature", "temperature must be a number >= 0"),
    ({"model": "tiny", "top_p": 0}, 422, "top_p", "top_p must be in (0, 1]"),
    ({"model": "tiny", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop", "at most 4"),
    ({"model": "tiny", "prompt": [1, 2, 3]}, 422, "prompt", "token ids are not accepted"),
    ({"model": "tiny", "stream": "yes"}, 422, "stream", "true or false"),
    ({"model": "nope"}, 404, "model", "no model named 'nope'"),
    ({"model": "scripts"}, 404, "model", "is a classifier"),
    (b'{"model": "tiny", "prompt": "' + b"a" * (2 << 20) + b'"}', 413, None, "over 1048576 bytes"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD)
def test_a_bad_request_gets_one_clear_message_in_the_openai_format(
    server: ServerProcess, body: object, status: int, param: str | None, message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and message in error["message"]
    assert error["param"] == param and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/nothing", None, 404, "no route /v1/nothing"),
        ("GET", "/v1/completions", None, 405, "GET is not allowed"),
        ("POST", "/v1/eval", {"model": "tiny"}, 422, "text is required"),
        ("POST", "/v1/eval", {"model": "tiny", "text": "W"}, 422, "too short to score"),
        ("POST", "/v1/classify", {"model": "tiny", "input": "x"}, 404, "no classifier named 'tiny'"),
        ("POST", "/v1/classify", {"model": "scripts", "input": []}, 422, "input is required"),
    ],
)
def test_other_routes_answer_errors_in_the_same_format(
    server: ServerProcess, method: str, path: str, body: object, status: int, message: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=body)
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_openai_client_sees_an_unknown_model_as_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no model named"):
        client.completions.create(model="gpt-4", prompt="hi")


def status(server: ServerProcess) -> dict[str, int]:
    return httpx.get(f"{server.url}/v1/status").json()["models"]["tiny"]


def test_a_client_that_leaves_mid_stream_frees_its_stream_at_once(server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "Whan", "max_tokens": LONG, "stream": True, "seed": 1}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        assert status(server)["running"] == 1
    # A million characters would take many seconds: the stream left the batch when the client did.
    assert wait_for(lambda: status(server)["running"] == 0, timeout=3)


def test_concurrent_clients_get_the_text_each_gets_alone(server: ServerProcess) -> None:
    asks = [
        {"prompt": "Whan", "seed": 1, "temperature": 1.0},
        {"prompt": "", "seed": 2, "temperature": 0.7, "top_k": 10},
        {"prompt": "The tendre croppes", "seed": 3, "temperature": 1.2, "top_p": 0.9},
        {"prompt": ["And", "Of"], "n": 2, "seed": 4},
        {"prompt": "Whan", "seed": 1, "temperature": 0},
        {"prompt": "Whan", "seed": 9, "temperature": 1.0, "stop": ["\n\n"]},
    ]
    asks = [{"model": "tiny", "max_tokens": 1500, **a} for a in asks]
    url = f"{server.url}/v1/completions"
    alone = [[c["text"] for c in httpx.post(url, json=a, timeout=60).json()["choices"]] for a in asks]
    together: list[list[str] | None] = [None] * len(asks)
    start, peak = threading.Barrier(len(asks)), [0]

    def run(k: int) -> None:
        start.wait()
        together[k] = [c["text"] for c in httpx.post(url, json=asks[k], timeout=60).json()["choices"]]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(asks))]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], status(server)["running"])
        time.sleep(0.01)
    assert together == alone
    assert peak[0] >= 2  # they did run side by side


def test_an_api_key_is_required_once_set(tiny_checkpoint: Path, home: Path) -> None:
    running = ServerProcess(tiny_checkpoint, "--api-key", "s3cret", "--precision", PRECISION, home=home)
    try:
        url = f"{running.url}/v1/models"
        assert httpx.get(url).status_code == 401
        wrong = httpx.get(url, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="Whan", max_tokens=5).choices[0].text
        assert httpx.get(running.url).status_code == 200  # the page itself holds nothing secret
    finally:
        assert running.stop() == 0


def test_a_full_queue_answers_429_with_retry_after(tiny_checkpoint: Path, home: Path) -> None:
    args = ["--max-batch", 1, "--max-queue", 1, "--max-tokens", LONG, "--precision", PRECISION]
    running = ServerProcess(tiny_checkpoint, *args, home=home, host="127.0.0.2")  # loopback, but not the default
    url = f"{running.url}/v1/completions"
    body = {"model": "tiny", "max_tokens": LONG, "stream": True}
    try:
        with httpx.stream("POST", url, json=body) as first, httpx.stream("POST", url, json=body) as second:
            first_lines = first.iter_lines()  # (a dropped line iterator closes the connection)
            assert next(first_lines).startswith("data: {")
            assert wait_for(lambda: status(running) == {"running": 1, "waiting": 1})
            third = httpx.post(url, json=body)
            assert third.status_code == 429 and third.headers["retry-after"] == "1"
            assert third.json()["error"]["type"] == "rate_limit_error"
            first.close()
            assert next(second.iter_lines()).startswith("data: {")  # its turn came
    finally:
        assert running.stop() == 0
    assert "Warning: serving on 127.0.0.2 without --api-key" in running.stderr()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_open_streams_and_exits_0(sig: int, tiny_checkpoint: Path, home: Path) -> None:
    running = ServerProcess(tiny_checkpoint, "--max-tokens", LONG, "--precision", PRECISION, home=home)
    body = {"model": "tiny", "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        running.process.send_signal(sig)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "stop"
    assert running.process.wait(30) == 0
    assert "Traceback" not in running.stderr()
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", "does not exist"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not a chargen checkpoint"),
    ],
)
def test_bad_files_are_one_error_line(make, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = chargen("serve", make(tmp_path), "--port", 0)
    assert done.returncode != 0 and done.stderr.startswith("Error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_busy_port_is_one_error_line(server: ServerProcess, tiny_checkpoint: Path) -> None:
    done = chargen("serve", tiny_checkpoint, "--port", server.url.rsplit(":", 1)[1], "--precision", PRECISION)
    assert done.returncode != 0 and done.stderr.startswith("Error: cannot listen on 127.0.0.1:")
    assert "choose another --port" in done.stderr


def test_without_the_extra_the_command_says_how_to_install_it(tiny_checkpoint: Path) -> None:
    blocked = "import sys; sys.modules['uvicorn'] = None; sys.argv = ['chargen', 'serve', sys.argv[1]]"
    code = f"{blocked}; from chargen.cli.app import main; main()"
    done = subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == 'Error: chargen serve needs its extra: pip install "chargen[serve]"'
