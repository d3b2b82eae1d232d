"""The HTTP side of `chargen serve` (Starlette): the OpenAI-style completions and models routes,
chargen's own eval and classify routes, the playground page, and what keeps them safe: the
bearer key (compared in constant time), the limits, and errors as one message in the OpenAI
error format, never a traceback.

Each language model has one Scheduler (chargen.serve.batching) whose thread steps every stream;
its text comes back to the event loop in batches (chargen.serve.streaming), and a streaming
handler sends whatever has arrived since it last sent, so a slow client gets larger chunks rather
than slowing the batch.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chargen.analysis.surprise import read_surprise
from chargen.generation.draw import fresh_seed
from chargen.generation.sampler import MAX_BATCH
from chargen.serve.batching import Closed, QueueFull, Scheduler
from chargen.serve.models import Loaded
from chargen.serve.requests import ApiError, Limits, completion_request, model_name, parse_json
from chargen.serve.stream import Stream
from chargen.serve.streaming import Completion, Delivery, Inbox

RETRY_AFTER = 1  # seconds a client told 429 should wait


class ServeApp:
    """The models, their schedulers and the ASGI app over them."""

    def __init__(
        self,
        loaded: Loaded,
        limits: Limits,
        api_key: str | None = None,
        max_batch: int = MAX_BATCH,
        max_waiting: int = 64,
    ) -> None:
        self.loaded, self.limits, self.max_batch, self.max_waiting = loaded, limits, max_batch, max_waiting
        self._key = api_key.encode() if api_key else None
        self.schedulers: dict[str, Scheduler] = {}
        routes = [
            Route("/", self._playground, methods=["GET"]),
            Route("/v1/models", self._guarded(self._models), methods=["GET"]),
            Route("/v1/models/{name:path}", self._guarded(self._model), methods=["GET"]),
            Route("/v1/completions", self._guarded(self._completions), methods=["POST"]),
            Route("/v1/eval", self._guarded(self._eval), methods=["POST"]),
            Route("/v1/classify", self._guarded(self._classify), methods=["POST"]),
            Route("/v1/status", self._guarded(self._status), methods=["GET"]),
        ]
        handlers = {HTTPException: self._http_error, Exception: self._server_error}
        self.asgi = Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)  # type: ignore[arg-type]

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        deliver = Delivery(asyncio.get_running_loop())
        for name, sampler in self.loaded.generators.items():
            self.schedulers[name] = Scheduler(sampler, deliver, self.max_batch, self.max_waiting)
            self.schedulers[name].start()
        try:
            yield
        finally:
            self.end_streams(wait=True)

    def end_streams(self, wait: bool = False) -> None:
        """Shutting down: every open stream ends now (cleanly, with its final chunk)."""
        for scheduler in self.schedulers.values():
            scheduler.close(wait)

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ApiError as err:
                headers = {"Retry-After": str(RETRY_AFTER)} if err.status == 429 else None
                return JSONResponse(err.body(), err.status, headers=headers)

        return guarded

    def _authorize(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "this server needs an API key: send the header Authorization: Bearer KEY")
        if not hmac.compare_digest(token.strip().encode(), self._key):
            raise ApiError(401, "the API key is wrong", code="invalid_api_key")

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        body = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))).body()
        return JSONResponse(body, exc.status_code)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)  # for the operator; the client gets one line
        return JSONResponse(ApiError(500, "internal server error (details are in the server's log)").body(), 500)

    async def _json(self, request: Request) -> dict[str, Any]:
        """The body, at most limits.max_body bytes however it is sent."""
        limit = self.limits.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"the request body is over {limit} bytes")
        return parse_json(bytes(raw))

    def _sampler_name(self, body: dict[str, Any]) -> str:
        name = model_name(body)
        if name in self.loaded.generators:
            return name
        if name in self.loaded.classifiers:
            raise ApiError(404, f"{name!r} is a classifier: use /v1/classify", "model", "model_not_found")
        raise ApiError(
            404, f"no model named {name!r}; loaded: {', '.join(self.loaded.names)}", "model", "model_not_found"
        )

    async def _playground(self, request: Request) -> Response:
        page = resources.files("chargen.serve").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    def _describe(self, name: str) -> dict[str, Any]:
        kind = "classifier" if name in self.loaded.classifiers else "generator"
        found = {"id": name, "object": "model", "created": self.loaded.created[name], "owned_by": "chargen"}
        found["chargen_kind"] = kind
        if kind == "classifier":
            found["labels"] = self.loaded.classifiers[name].labels
        return found

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._describe(name) for name in self.loaded.names]})

    async def _model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.loaded.created:
            raise ApiError(404, f"no model named {name!r}", "model", "model_not_found")
        return JSONResponse(self._describe(name))

    async def _status(self, request: Request) -> Response:
        load = {name: {"running": s.running, "waiting": s.waiting} for name, s in self.schedulers.items()}
        return JSONResponse({"object": "chargen.status", "models": load})

    async def _completions(self, request: Request) -> Response:
        ask = completion_request(await self._json(request), self.limits)
        name = self._sampler_name({"model": ask.model})
        config = ask.config if ask.config.seed is not None else replace(ask.config, seed=fresh_seed())
        inbox = Inbox()
        primes = [p for p in ask.prompts for _ in range(ask.n)]  # choice i is stream i of the seed
        streams = [Stream(prime, config, i, inbox, ask.chargen_pieces) for i, prime in enumerate(primes)]
        try:
            self.schedulers[name].submit(streams)
        except QueueFull:
            raise ApiError(
                429, "too many requests are waiting for this model; retry shortly", code="queue_full"
            ) from None
        except Closed:
            raise ApiError(503, "the server is shutting down") from None
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time())}
        head["model"] = name
        prompt_tokens = sum(len(self.loaded.generators[name].tokenizer.encode(p)) for p in primes)
        completion = Completion(ask, primes, head, prompt_tokens, inbox, lambda: self.schedulers[name].cancel(streams))
        if ask.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(completion.events(), media_type="text/event-stream", headers=headers)
        return JSONResponse(await completion.whole())

    async def _eval(self, request: Request) -> Response:
        body = await self._json(request)
        sampler = self.loaded.generators[self._sampler_name(body)]
        text = body.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(422, "text is required: the text to score, as a string", "text")
        if len(text) > self.limits.max_eval_chars:
            raise ApiError(422, f"text is over {self.limits.max_eval_chars} characters", "text")
        ids = sampler.tokenizer.encode(text).long()
        if len(ids) < 2:
            raise ApiError(422, "text is too short to score: it needs at least two tokens", "text")
        surprise = await run_in_threadpool(read_surprise, sampler.model, sampler.tokenizer, text, ids)
        pieces = [{"text": t, "bits": None if b != b else round(b, 4)} for t, b in zip(surprise.pieces, surprise.bits)]
        found = {"object": "chargen.eval", "model": body["model"], "bpc": surprise.bpc}
        return JSONResponse({**found, "characters": surprise.characters, "tokens": len(ids), "surprise": pieces})

    async def _classify(self, request: Request) -> Response:
        body = await self._json(request)
        name = model_name(body)
        classifier = self.loaded.classifiers.get(name)
        if classifier is None:
            known = ", ".join(self.loaded.classifiers) or "none"
            raise ApiError(
                404, f"no classifier named {name!r}; loaded classifiers: {known}", "model", "model_not_found"
            )
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(422, "input is required: a string or a non-empty list of strings", "input")
        if len(texts) > self.limits.max_texts:
            raise ApiError(422, f"input may hold at most {self.limits.max_texts} texts", "input")
        predictions = await run_in_threadpool(classifier.predict, texts)
        data = [{"index": i, **p.to_dict()} for i, p in enumerate(predictions)]
        return JSONResponse({"object": "list", "model": name, "data": data})
