"""Prometheus metrics of one server, in a registry of its own (not the process-global one,
so that two apps in one process, as in tests, never clash)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from albert_onnx.serve.engine import EngineHooks, Job

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = tuple(2**k for k in range(4, 19))
PADDING_BUCKETS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self, queue_inputs: Callable[[], int], queue_tokens: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("albert_onnx_queue_inputs", "Inputs waiting in the queue", registry=r).set_function(
            queue_inputs
        )
        Gauge("albert_onnx_queue_tokens", "Tokens waiting in the queue", registry=r).set_function(
            queue_tokens
        )
        self.batch_tokens = Histogram(
            "albert_onnx_batch_tokens", "Padded tokens per batch run", buckets=TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_padding = Histogram(
            "albert_onnx_batch_padding_ratio", "Padded tokens per real token, minus one",
            buckets=PADDING_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "albert_onnx_request_seconds", "Request latency, from its arrival to its answer",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "albert_onnx_queue_seconds", "Time a request waited before its first inputs ran",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inputs = Counter("albert_onnx_inputs", "Inputs embedded", registry=r)
        self.tokens = Counter("albert_onnx_tokens", "Real tokens embedded", registry=r)
        self.dropped = Counter(
            "albert_onnx_inputs_dropped", "Queued inputs dropped because the client went away",
            registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "albert_onnx_errors", "Requests refused or failed, by kind", ["kind"], registry=r
        )

    def hooks(self) -> EngineHooks:
        def on_batch(docs: int, real: int, padded: int) -> None:
            self.batch_tokens.observe(padded)
            if real:
                self.batch_padding.observe(padded / real - 1)
            self.inputs.inc(docs)
            self.tokens.inc(real)

        def on_started(job: Job) -> None:
            self.queue_seconds.observe(time.monotonic() - job.queued_at)

        return EngineHooks(on_batch=on_batch, on_started=on_started, on_dropped=self.dropped.inc)

    def text(self) -> bytes:
        return generate_latest(self.registry)
