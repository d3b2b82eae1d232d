"""Request bodies, checked: every way one can be wrong becomes one ApiError with one clear message,
in the OpenAI API's error format, naming the parameter at fault."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from chargen.config import SampleConfig
from chargen.errors import ConfigError

DEFAULT_MAX_TOKENS = 16  # the OpenAI completions API's default; a character each here
_MAX_STOPS = 4  # as in the OpenAI API
_IGNORED = {"user"}  # accepted for compatibility, meaningless here


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; over a limit is a 422 (or 413 for the body)."""

    max_tokens: int = 4096
    max_n: int = 16
    max_streams: int = 64  # prompts × n in one request
    max_body: int = 1 << 20  # bytes
    max_eval_chars: int = 100_000
    max_texts: int = 256  # texts in one classify request


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {401: "authentication_error", 429: "rate_limit_error", 503: "server_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str]
    n: int
    config: SampleConfig  # seed None: the server picks one
    stream: bool
    echo: bool
    include_usage: bool
    chargen_pieces: bool  # each token's text and probability in the streamed chunks (the playground's colours)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _integer(body: dict[str, Any], name: str, default: int | None, low: int | None, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"{name} must be an integer, got {json.dumps(value)}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(422, f"{name} must be {bounds}, got {value}", name)
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(422, f"{name} must be a number, got {json.dumps(value)}", name)
    return float(value)


def _strings(body: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ApiError(
            422, f"{name} must be a string or a non-empty list of strings (token ids are not accepted)", name
        )
    return value


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "model is required: the name of a loaded model (GET /v1/models lists them)", "model")
    return model


def completion_request(body: dict[str, Any], limits: Limits) -> CompletionRequest:
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop", "stream"}
    known |= {"chargen_pieces"}
    known |= {"echo", "stream_options", "logprobs", "best_of", "presence_penalty", "frequency_penalty", *_IGNORED}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unrecognized request argument: {unknown[0]}", unknown[0])
    model = model_name(body)
    prompts = _strings(body, "prompt", [""])
    n = _integer(body, "n", 1, 1, limits.max_n)
    assert n is not None
    if len(prompts) * n > limits.max_streams:
        raise ApiError(422, f"prompts × n must be at most {limits.max_streams}, got {len(prompts) * n}", "n")
    if body.get("logprobs") is not None:
        raise ApiError(422, "logprobs is not supported: use chargen's /v1/eval for per-character surprise", "logprobs")
    if body.get("best_of") not in (None, n):
        raise ApiError(422, "best_of is not supported (only equal to n)", "best_of")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _number(body, penalty, 0.0) != 0.0:
            raise ApiError(422, f"{penalty} is not supported (only 0)", penalty)
    stops = _strings(body, "stop", [])
    if len(stops) > _MAX_STOPS or not all(stops):
        raise ApiError(422, f"stop must be at most {_MAX_STOPS} non-empty strings", "stop")
    flags = {name: body.get(name, False) for name in ("stream", "echo", "chargen_pieces")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ApiError(422, f"{name} must be true or false, got {json.dumps(value)}", name)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(422, 'stream_options must be an object like {"include_usage": true}', "stream_options")
    try:
        config = SampleConfig(
            length=_integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, limits.max_tokens),  # type: ignore[arg-type]
            temperature=_number(body, "temperature", 1.0),
            top_k=_integer(body, "top_k", 0, 0, None),  # type: ignore[arg-type]
            top_p=_number(body, "top_p", 1.0),
            seed=_integer(body, "seed", None, -(1 << 63), (1 << 63) - 1),
            stop=tuple(stops),
        )
    except ConfigError as err:  # its messages name the CLI's options: name the API's parameters instead
        param = next((p for p in ("temperature", "top_p", "top_k") if p.replace("_", "-") in str(err)), None)
        message = str(err).replace("--top-", "top_").replace("--", "")
        raise ApiError(422, message, param) from None
    usage = bool(options.get("include_usage", False))
    return CompletionRequest(model, prompts, n, config, flags["stream"], flags["echo"], usage, flags["chargen_pieces"])


def texts(body: dict[str, Any], name: str) -> list[str]:
    return _strings(body, name, [])
