"""The HTTP front-end: a Starlette app over the engine, and the server's state.

Per embedding request: check the API key, that the server is ready and that the body is
declared JSON; read the body up to the payload limit; parse it (`api.py`); tokenize off the
event loop (tokenizers releases the GIL); queue it in the engine; wait for its vectors or for
the client to go away (then its inputs not yet run are dropped); normalize as asked and
answer. Every refusal is an `ApiError` answered in the endpoint's own protocol, and touches
no other request. A request still running when a drain reaches its deadline is answered
503 and logged in one line, rather than cut off with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import albert_onnx
from albert_onnx.errors import AlbertOnnxError, OptionError
from albert_onnx.runtime.pipeline.pipeline import Doc, Pipeline
from albert_onnx.runtime.pipeline.pooling import l2_normalize
from albert_onnx.runtime.pipeline.quantize import CALIBRATED
from albert_onnx.serve.api import (
    Answers,
    ApiError,
    EmbedCall,
    check_json,
    cohere_response,
    error_body,
    openai_response,
    parse_cohere,
    parse_openai,
    parse_tei,
    tei_response,
)
from albert_onnx.serve.config import ServeConfig
from albert_onnx.serve.engine import Engine, EngineClosed, QueueFull
from albert_onnx.serve.metrics import Metrics

WARMUP_LENGTHS = (8, 64, 128, 256, 512)
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection


class Service:
    """What every request shares: the model, the engine, the metrics, and the state
    (warming up -> ready -> draining)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.pipeline = Pipeline(config.model)
        if config.dtype in CALIBRATED and self.pipeline.calibration is None:
            raise OptionError(
                f"--dtype {config.dtype} quantizes with the model's calibrated ranges, and "
                f"{self.pipeline.model_dir} has none for its {self.pipeline.precision} graph: "
                f"run `albert-onnx calibrate {self.pipeline.model_dir} CORPUS` first"
            )
        self.answers = Answers(config.dtype, self.pipeline.normalize, self.pipeline.calibration)
        self.model_name = config.served_model_name or self.pipeline.model_dir.name
        self.max_queue_tokens = config.max_queue_tokens or max(
            8 * self.pipeline.max_batch_tokens,
            config.max_inputs_per_request * self.pipeline.max_length,
        )
        self.metrics = Metrics(self._queued_inputs, self._queued_tokens)
        self.engine: Engine | None = None
        self.failure: BaseException | None = None  # warm-up failed: the server must stop
        self.draining = False
        self.in_flight = 0  # embedding requests between arrival and answer (event loop only)
        self.cut_off = asyncio.Event()  # set at the drain deadline: answer 503 now
        self.cut = 0  # requests answered 503 at the drain deadline
        self.stopping = threading.Event()  # warm-up stops between batches
        self.tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="albert-onnx-tok")

    def _queued_inputs(self) -> int:
        return self.engine.queued_inputs if self.engine else 0

    def _queued_tokens(self) -> int:
        return self.engine.queued_tokens if self.engine else 0

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive and not self.draining

    def warm_up(self) -> None:
        """Run one full batch at each of a few lengths, so that onnxruntime's allocations
        are done before the first client waits on them; then start the engine. Whatever
        fails here is kept, and stops the server (serve.py)."""
        pipeline = self.pipeline
        budget = pipeline.max_batch_tokens
        try:
            for length in (n for n in WARMUP_LENGTHS if n <= self.pipeline.max_length):
                if self.stopping.is_set():  # a signal came during warm-up: stop cleanly
                    return
                text = " ".join(["word"] * (length - 2))
                pipeline.embed_docs(pipeline.tokenize([text] * max(1, budget // length)))
            self.engine = Engine(
                self.pipeline,
                self.max_queue_tokens,
                self.config.max_wait_ms,
                isolate=self.config.isolate_requests,
                hooks=self.metrics.hooks(),
            )
        except BaseException as exc:
            self.failure = exc
            raise

    def info(self) -> dict[str, Any]:
        """text-embeddings-inference's /info fields, then this server's own."""
        e, c = self.pipeline, self.config
        return {
            "model_id": self.model_name,
            "model_dtype": e.precision,
            "model_pooling": e.pooling,
            "max_input_length": e.max_length,
            "max_batch_tokens": e.max_batch_tokens,
            "max_client_batch_size": c.max_inputs_per_request,
            "auto_truncate": c.truncate,
            "version": albert_onnx.__version__,
            "model_dir": str(e.model_dir),
            "dimension": e.dimension,
            "provider": e.provider,
            "normalize": e.normalize,
            "max_queue_tokens": self.max_queue_tokens,
            "max_wait_ms": c.max_wait_ms,
            "max_body_bytes": c.max_body_bytes,
            "isolate_requests": c.isolate_requests,
            "max_connections": c.connection_limit(),
            "request_timeout": c.request_timeout,
            "dtype": c.dtype,
            "calibrated": e.calibration is not None,
            "ready": self.ready,
        }

    # -- one embedding request ---------------------------------------------------------

    def check_access(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(
                "unauthorized",
                "a valid API key is needed: 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def check_open(self) -> None:
        if self.draining:
            raise ApiError(
                "unavailable", "the server is shutting down", headers={"Retry-After": "1"}
            )
        if self.engine is None:
            raise ApiError("unavailable", "the model is warming up", headers={"Retry-After": "1"})
        if not self.engine.alive:
            raise ApiError("unavailable", "the inference engine has stopped")

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

    def _tokenize(self, call: EmbedCall) -> list[Doc]:
        """In the tokenizer pool, never on the event loop: texts are up to the body limit.
        Each text is tokenized from a bounded prefix (the runtime's tokenizer), which is
        enough to tell that it is over the limit, not by how much."""
        docs = self.pipeline.tokenize(call.texts)
        if not call.truncate:
            for i, doc in enumerate(docs):
                if doc[0].truncated:
                    raise ApiError(
                        "input_too_long",
                        f"{call.field}[{i}] has more than {self.pipeline.max_length} tokens, "
                        "the model's limit; shorten it or allow truncation",
                        param=call.field,
                    )
        return docs

    async def embed(self, request: Request, call: EmbedCall) -> tuple[np.ndarray, int] | None:
        """The vectors of CALL and their real token count, or None if the client left."""
        engine = self.engine
        loop = asyncio.get_running_loop()
        try:
            with engine.arriving():
                docs = await loop.run_in_executor(self.tokenizing, self._tokenize, call)
                job = engine.submit(docs)
        except QueueFull as exc:
            raise ApiError(
                "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from exc
        except EngineClosed as exc:
            raise ApiError("unavailable", str(exc)) from exc
        vectors = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({vectors, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled: its inputs must not run for nobody
            if not vectors.done():
                engine.cancel(job)
                vectors.cancel()
            gone.cancel()
        if vectors.cancelled():
            return None
        try:
            result = vectors.result()
        except AlbertOnnxError as exc:
            raise ApiError("backend", f"embedding failed: {exc}") from exc
        if not np.isfinite(result).all():
            bad = int(np.flatnonzero(~np.isfinite(result).all(axis=1))[0])
            raise ApiError("backend", f"the model gave non-finite values for {call.field}[{bad}]")
        return (l2_normalize(result) if call.normalize else result), job.tokens


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body is read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


Parse = Callable[[bytes], EmbedCall]
Answer = Callable[[EmbedCall, np.ndarray, int], Any]
Handler = Callable[[Request], Awaitable[Response]]


def create_app(service: Service) -> Starlette:
    def endpoint(name: str, parse: Parse, answer: Answer) -> Handler:
        async def respond(request: Request) -> Response:
            try:
                service.check_access(request)
                service.check_open()
                check_json(request.headers.get("content-type"))
                call = parse(await service.read_body(request))
                embedded = await service.embed(request, call)
                if embedded is None:
                    service.metrics.errors.labels("client_gone").inc()
                    return Response(status_code=CLIENT_GONE)
                return JSONResponse(answer(call, *embedded))
            except ApiError as exc:
                return refused(request, exc)
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                service.metrics.errors.labels("client_gone").inc()
                return Response(status_code=CLIENT_GONE)

        async def handle(request: Request) -> Response:
            start = time.monotonic()
            service.in_flight += 1
            work = asyncio.ensure_future(respond(request))
            cut = asyncio.ensure_future(service.cut_off.wait())
            try:
                await asyncio.wait({work, cut}, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    return work.result()
                work.cancel()  # its inputs leave the engine
                service.cut += 1
                waited = time.monotonic() - start
                line = f"{request.method} {request.url.path} after {waited:.1f} s"
                print(f"albert-onnx: cut off at the drain deadline: {line}", file=sys.stderr,
                      flush=True)  # fmt: skip
                return refused(
                    request,
                    ApiError("unavailable", "the server is shutting down and its drain "
                             "deadline cut this request off; retry it",
                             headers={"Retry-After": "1"}),
                )  # fmt: skip
            finally:
                work.cancel()
                cut.cancel()
                service.in_flight -= 1
                service.metrics.request_seconds.labels(name).observe(time.monotonic() - start)

        return handle

    def refused(request: Request, exc: ApiError) -> Response:
        service.metrics.errors.labels(exc.kind).inc()
        return JSONResponse(error_body(request.url.path, exc), exc.status, headers=exc.headers)

    config, pipeline, answers = service.config, service.pipeline, service.answers
    limits = (pipeline.dimension, config.max_inputs_per_request, config.truncate, answers)

    openai = endpoint(
        "v1_embeddings", lambda body: parse_openai(body, service.model_name, *limits),
        lambda call, vectors, tokens: openai_response(vectors, call, service.model_name, tokens,
                                                      answers),
    )  # fmt: skip
    tei = endpoint("embed", lambda body: parse_tei(body, *limits),
                   lambda call, vectors, tokens: tei_response(vectors, call, answers))  # fmt: skip
    cohere = endpoint(
        "v2_embed", lambda body: parse_cohere(body, service.model_name, *limits),
        lambda call, vectors, tokens: cohere_response(vectors, call, tokens, answers),
    )  # fmt: skip

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        if service.draining:
            return JSONResponse({"status": "draining"}, 503)
        if service.engine is None:
            return JSONResponse({"status": "warming up"}, 503)
        if not service.engine.alive:
            return JSONResponse({"status": "engine stopped"}, 503)
        return JSONResponse({"status": "ready"})

    async def guarded(request: Request, answer: Callable[[], Any]) -> Response:
        try:
            service.check_access(request)
        except ApiError as exc:
            return refused(request, exc)
        return JSONResponse(answer())

    async def info(request: Request) -> Response:
        return await guarded(request, service.info)

    async def models(request: Request) -> Response:  # what OpenAI-compatible tools probe
        model = {"id": service.model_name, "object": "model", "created": 0,
                 "owned_by": "albert-onnx"}  # fmt: skip
        return await guarded(request, lambda: {"object": "list", "data": [model]})

    async def metrics(_: Request) -> Response:
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    # TEI serves its embed route at `/` and at SageMaker's `/invocations` too (what
    # huggingface_hub's InferenceClient posts to), and answers health at `GET /` and `/ping`
    return Starlette(
        routes=[
            Route("/v1/embeddings", openai, methods=["POST"]),
            Route("/v2/embed", cohere, methods=["POST"]),
            Route("/embed", tei, methods=["POST"]),
            Route("/invocations", tei, methods=["POST"]),
            Route("/", tei, methods=["POST"]),
            Route("/", health, methods=["GET"]),
            Route("/ping", health),
            Route("/v1/models", models),
            Route("/health", health),
            Route("/ready", ready),
            Route("/info", info),
            Route("/metrics", metrics),
        ]
    )
