"""The HTTP front-end: a Starlette app over the engine, and the server's state.

Per embedding request: check the API key and that the server is ready; read the body up to
the payload limit; parse it (`api.py`); tokenize off the event loop (tokenizers releases the
GIL); queue it in the engine; wait for its vectors or for the client to go away (then its
queued inputs are dropped); normalize as asked and answer. Every refusal is an `ApiError`
answered in the endpoint's own protocol, and touches no other request.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from albert_onnx.errors import AlbertOnnxError, OptionError
from albert_onnx.runtime.embedder import Doc, Embedder
from albert_onnx.runtime.options import check_positive
from albert_onnx.runtime.pooling import l2_normalize
from albert_onnx.serve.api import (
    ApiError,
    EmbedCall,
    openai_response,
    parse_openai,
    parse_tei,
    tei_response,
)
from albert_onnx.serve.engine import Engine, QueueFull
from albert_onnx.serve.metrics import Metrics

WARMUP_LENGTHS = (8, 64, 128, 256, 512)


@dataclass(frozen=True)
class ServeConfig:
    model: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    provider: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    device_id: int | None = None
    max_batch_tokens: int | None = None
    max_queue_tokens: int | None = None  # default: a full request of max-length inputs
    max_inputs_per_request: int = 256
    max_wait_ms: float = 2.0
    max_body_bytes: int = 2_000_000
    truncate: bool = True
    isolate_requests: bool = False
    drain_seconds: float = 30.0
    served_model_name: str | None = None

    def __post_init__(self) -> None:
        """Checked here, where the API receives them; the Embedder checks its own."""
        check_positive("max_inputs_per_request", self.max_inputs_per_request)
        check_positive("max_body_bytes", self.max_body_bytes)
        if self.max_queue_tokens is not None:
            check_positive("max_queue_tokens", self.max_queue_tokens)
        for name in ("max_wait_ms", "drain_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise OptionError(f"{name} must be a number of at least 0, not {value!r}")
        if not 0 <= self.port <= 65535:
            raise OptionError(f"port must be 0 to 65535, not {self.port!r}")


class Service:
    """What every request shares: the model, the engine, the metrics, and the state
    (warming up -> ready -> draining)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.embedder = Embedder(
            config.model,
            provider=config.provider,
            precision=config.precision,
            max_batch_tokens=config.max_batch_tokens,
            threads=config.threads,
            device_id=config.device_id,
        )
        self.model_name = config.served_model_name or self.embedder.model_dir.name
        self.max_queue_tokens = config.max_queue_tokens or max(
            8 * self.embedder.max_batch_tokens,
            config.max_inputs_per_request * self.embedder.max_length,
        )
        self.metrics = Metrics(self._queued_inputs, self._queued_tokens)
        self.engine: Engine | None = None
        self.failure: AlbertOnnxError | None = None  # warm-up failed: the server must stop
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.arriving = 0  # requests being tokenized, about to be queued
        self.tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="albert-onnx-tok")

    def _queued_inputs(self) -> int:
        return self.engine.queued_inputs if self.engine else 0

    def _queued_tokens(self) -> int:
        return self.engine.queued_tokens if self.engine else 0

    def warm_up(self) -> None:
        """Run one full batch at each of a few lengths, so that onnxruntime's allocations
        are done before the first client waits on them; then start the engine."""
        budget = self.embedder.max_batch_tokens
        try:
            for length in (n for n in WARMUP_LENGTHS if n <= self.embedder.max_length):
                text = " ".join(["word"] * (length - 2))
                self.embedder.embed([text] * max(1, budget // length))
        except AlbertOnnxError as exc:
            self.failure = exc
            return
        self.engine = Engine(
            self.embedder,
            self.max_queue_tokens,
            self.config.max_wait_ms,
            isolate=self.config.isolate_requests,
            hooks=self.metrics.hooks(time.monotonic),
            arriving=lambda: self.arriving,
        )
        self.ready = True

    def info(self) -> dict[str, Any]:
        e = self.embedder
        return {
            "model": self.model_name,
            "model_dir": str(e.model_dir),
            "dimension": e.dimension,
            "precision": e.precision,
            "provider": e.provider,
            "pooling": e.pooling,
            "normalize": e.normalize,
            "max_input_length": e.max_length,
            "max_batch_tokens": e.max_batch_tokens,
            "max_queue_tokens": self.max_queue_tokens,
            "max_inputs_per_request": self.config.max_inputs_per_request,
            "max_wait_ms": self.config.max_wait_ms,
            "max_body_bytes": self.config.max_body_bytes,
            "truncate": self.config.truncate,
            "isolate_requests": self.config.isolate_requests,
            "ready": self.ready and not self.draining,
        }

    # -- one embedding request ---------------------------------------------------------

    def check_access(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError("unauthorized", "a valid API key is needed: 'Authorization: Bearer KEY'")

    def check_open(self) -> None:
        if self.draining:
            raise ApiError(
                "unavailable", "the server is shutting down", headers={"Retry-After": "1"}
            )
        if not self.ready:
            raise ApiError("unavailable", "the model is warming up", headers={"Retry-After": "1"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                "payload_too_large", f"the body has {int(declared):,} bytes; the limit is {limit:,}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError("payload_too_large", f"the body is over the {limit:,}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def embed(self, request: Request, call: EmbedCall) -> tuple[np.ndarray, int] | None:
        """The vectors of CALL and their real token count, or None if the client left."""
        loop = asyncio.get_running_loop()
        self.arriving += 1
        try:
            docs = await loop.run_in_executor(self.tokenizing, self.embedder.tokenize, call.texts)
            if not call.truncate:
                self._refuse_long(call, docs)
            job = self.engine.submit(docs)
        except QueueFull as exc:
            raise ApiError(
                "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from exc
        finally:
            self.arriving -= 1
        tokens = sum(len(doc[0]) for doc in docs)
        vectors = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_client_gone(request))
        done, _ = await asyncio.wait({vectors, gone}, return_when=asyncio.FIRST_COMPLETED)
        if vectors not in done:
            self.engine.cancel(job)
            vectors.cancel()
            return None
        gone.cancel()
        try:
            result = vectors.result()
        except AlbertOnnxError as exc:
            raise ApiError("backend", f"embedding failed: {exc}") from exc
        return (l2_normalize(result) if call.normalize else result), tokens

    def _refuse_long(self, call: EmbedCall, docs: list[Doc]) -> None:
        for i, doc in enumerate(docs):
            if doc[0].truncated:
                count = self.embedder.count_tokens(call.texts[i])
                raise ApiError(
                    "input_too_long",
                    f"{call.field}[{i}] has {count:,} tokens, over the model's "
                    f"{self.embedder.max_length}; shorten it or allow truncation",
                    param=call.field,
                )


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body is read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


def create_app(service: Service) -> Starlette:
    Handler = Callable[[Request], Awaitable[Response]]

    def endpoint(name: str, parse, answer, error_body) -> Handler:
        async def handle(request: Request) -> Response:
            start = time.monotonic()
            service.in_flight += 1
            try:
                service.check_access(request)
                service.check_open()
                call = parse(await service.read_body(request))
                embedded = await service.embed(request, call)
                if embedded is None:
                    service.metrics.errors.labels("client_gone").inc()
                    return Response(status_code=499)  # nobody is listening any more
                return JSONResponse(answer(call, *embedded))
            except ApiError as exc:
                service.metrics.errors.labels(exc.kind).inc()
                return JSONResponse(error_body(exc), exc.status, headers=exc.headers)
            finally:
                service.in_flight -= 1
                service.metrics.request_seconds.labels(name).observe(time.monotonic() - start)

        return handle

    config = service.config
    embedder = service.embedder

    def parse_v1(body: bytes) -> EmbedCall:
        return parse_openai(
            body, service.model_name, embedder.dimension, config.max_inputs_per_request,
            embedder.normalize, config.truncate,
        )  # fmt: skip

    def parse_embed(body: bytes) -> EmbedCall:
        return parse_tei(body, config.max_inputs_per_request, True, config.truncate)

    openai = endpoint(
        "v1_embeddings", parse_v1,
        lambda call, vectors, tokens: openai_response(vectors, call, service.model_name, tokens),
        ApiError.openai_body,
    )  # fmt: skip
    tei = endpoint(
        "embed", parse_embed, lambda call, vectors, tokens: tei_response(vectors),
        ApiError.tei_body,
    )  # fmt: skip

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        if service.draining:
            return JSONResponse({"status": "draining"}, 503)
        if not service.ready:
            return JSONResponse({"status": "warming up"}, 503)
        return JSONResponse({"status": "ready"})

    async def info(request: Request) -> Response:
        try:
            service.check_access(request)
        except ApiError as exc:
            return JSONResponse(exc.openai_body(), exc.status)
        return JSONResponse(service.info())

    async def metrics(_: Request) -> Response:
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/v1/embeddings", openai, methods=["POST"]),
            Route("/embed", tei, methods=["POST"]),
            Route("/health", health),
            Route("/ready", ready),
            Route("/info", info),
            Route("/metrics", metrics),
        ]
    )
