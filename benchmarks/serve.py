"""`chargen serve` under load: real HTTP clients on 127.0.0.1 against a running server.

    python benchmarks/serve.py                          # the untrained 2×512 LSTM of benchmarks/sampling.py
    python benchmarks/serve.py --checkpoint ckpt.pt     # any checkpoint
    python benchmarks/serve.py --threads 1

For 1, 8 and 64 clients streaming at once, and for the same 64 requests one after another: the
aggregate characters per second and the time to first character (p50/p95), against the
in-process 64-stream figure of benchmarks/sampling.py (its own functions, same model, measured
in the same run). The server is `chargen serve` in a subprocess; the clients are plain asyncio
sockets in this process (speaking HTTP/1.1 and reading the server-sent events), light enough
that the server gets the CPU. Every request: no priming text, its own seed, temperature 0.8,
--chars characters. Targets (issue 29): 64 clients reach at least half the in-process 64-stream
rate; the p95 time to first character with 8 clients is at most 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from sampling import BUILTIN, SHAKESPEARE, TEMPERATURE, build_model, chars_per_second

from chargen.checkpoint import save_checkpoint
from chargen.config import SampleConfig, to_dict
from chargen.generation.kernels import cpu_model
from chargen.generation.sampler import Sampler

FIRST_TEXT = re.compile(rb'"text": "[^"]')  # a chunk with generated text (no echo is asked for)


@dataclass
class Result:
    chars: int
    first: float  # seconds from sending to the first generated character
    seconds: float


async def completion(host: str, port: int, seed: int, chars: int) -> Result:
    """One streamed completion over a raw HTTP/1.1 connection."""
    body = json.dumps(
        {"model": "bench", "prompt": "", "max_tokens": chars, "temperature": TEMPERATURE, "seed": seed, "stream": True}
    ).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    first, received = 0.0, bytearray()
    while data := await reader.read(1 << 16):
        if not first and FIRST_TEXT.search(data):
            first = time.perf_counter() - start
        received += data
    seconds = time.perf_counter() - start
    writer.close()
    if b"data: [DONE]" not in received:
        raise RuntimeError(f"incomplete stream: {bytes(received[-300:])!r}")
    texts = [json.loads(m)["choices"] for m in re.findall(rb"^data: (\{.*\})\r?$", bytes(received), re.MULTILINE)]
    return Result(sum(len(c["text"]) for choices in texts for c in choices), first, seconds)


async def at_once(host: str, port: int, clients: int, chars: int, seed: int) -> tuple[list[Result], float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(completion(host, port, seed + i, chars) for i in range(clients)))
    return list(results), time.perf_counter() - start


async def one_after_another(host: str, port: int, requests: int, chars: int) -> tuple[list[Result], float]:
    start = time.perf_counter()
    results = [await completion(host, port, i, chars) for i in range(requests)]
    return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(checkpoint: Path, threads: int) -> tuple[subprocess.Popen[str], str, int]:
    command = [sys.executable, "-m", "chargen", "serve", str(checkpoint), "--port", "0", "--max-queue", "256"]
    command += ["--threads", str(threads)] if threads else []  # else the server's own choice
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    found = re.search(r"http://([\d.]+):(\d+)/", line)
    if found is None:
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    print(f"{line.strip()} · threads {threads or 'its own choice'}")
    return server, found.group(1), int(found.group(2))


def save_untrained(folder: Path, text: str) -> Path:
    """benchmarks/sampling.py's model as a checkpoint: speed does not depend on the weights."""
    model, tokenizer, _ = build_model(None, text)
    path = folder / "bench.pt"
    payload = {"model_config": to_dict(model.config), "tokenizer": tokenizer.state(), "metrics": {}}
    save_checkpoint(path, {**payload, "model": model.state_dict()})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="serve this model instead of an untrained 2×512")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, here and in the server (0: all)")
    parser.add_argument(
        "--server-threads", type=int, default=0, help="torch threads in the server (0: --threads, else its own choice)"
    )
    parser.add_argument("--chars", type=int, default=300, help="characters per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each concurrency (best rate, all latencies)")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    folder = Path(tempfile.mkdtemp())
    os.environ["CHARGEN_HOME"] = str(folder)  # the step is measured afresh, here and then shared with the server
    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.is_file() else BUILTIN * 200
    checkpoint = args.checkpoint or save_untrained(folder, text)
    model, tokenizer, source = build_model(checkpoint, text)
    m = model.config
    machine = f"{cpu_model()} · threads {threads} · torch {torch.__version__}"
    print(f"{m.layers}×{m.hidden} {m.cell.upper()} · {source} · {machine}")

    sampler = Sampler(model, tokenizer)
    config = SampleConfig(length=args.chars, temperature=TEMPERATURE, seed=1)
    reference = chars_per_second(lambda b, n: sampler.generate([""] * b, config), 64, args.chars, 2)
    print(f"in-process 64 streams ({sampler.kernel.for_batch(64).label}): {reference:,.0f} chars/s")

    server, host, port = start_server(checkpoint, args.server_threads or args.threads)
    rows = []
    try:
        asyncio.run(completion(host, port, 0, 20))  # warm up: the step's first call, the socket
        for clients in (1, 8, 64):
            rounds = [asyncio.run(at_once(host, port, clients, args.chars, 1000 * k)) for k in range(args.rounds)]
            firsts = [r.first for results, _ in rounds for r in results]
            rate = max(sum(r.chars for r in results) / wall for results, wall in rounds)
            rows.append((f"{clients} at once", rate, firsts))
        results, wall = asyncio.run(one_after_another(host, port, 64, args.chars))
        rows.append(("64 one after another", sum(r.chars for r in results) / wall, [r.first for r in results]))
    finally:
        server.terminate()
        code = server.wait(30)
    print("\n| clients | chars/s | vs in-process 64 | first char p50 | p95 |\n|---|---|---|---|---|")
    for label, rate, firsts in rows:
        p50, p95 = percentile(firsts, 50) * 1e3, percentile(firsts, 95) * 1e3
        print(f"| {label} | {rate:,.0f} | {rate / reference:.0%} | {p50:.0f} ms | {p95:.0f} ms |")
    print(f"| in-process, 64 streams | {reference:,.0f} | 100% | | |")
    share = rows[2][1] / reference
    p95_8 = percentile(rows[1][2], 95) * 1e3
    print(f"\ntarget: 64 clients >= 50% of in-process: {share:.0%} ({'met' if share >= 0.5 else 'NOT met'})")
    print(
        f"target: first character p95 with 8 clients <= 100 ms: {p95_8:.0f} ms ({'met' if p95_8 <= 100 else 'NOT met'})"
    )
    print(f"server exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
