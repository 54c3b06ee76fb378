"""The cross-request batching engine: HTTP-free, torch-free.

Requests put their tokenized inputs in one queue; one inference thread takes rounds from
it, hands each round to the Embedder as one list (which sorts it by length and cuts batches
under the token budget with the runtime's bucketer), and completes each request's future
with its own rows. text-embeddings-inference batches by tokens in arrival order; infinity
sorts by length but caps batches by item count; this does both.

A round holds at most ROUND_BATCHES batches' worth of tokens (at least one request), taken
in arrival order: enough to sort well by length, few enough that the first clients have
their answers, and send their next requests, while the engine runs the rest.

When the thread is idle, the first request waits at most `max_wait_ms` for company, and
only while other requests are on their way (`arriving()`: read, being tokenized), so a lone
client never waits; when the thread is busy, the next round takes what queued meanwhile.
The queue is bounded in tokens: past `max_queue_tokens` a request is refused at once
(QueueFull, with a retry hint from the measured throughput) instead of waiting without
bound. A cancelled request (its client went away) is dropped if it is still queued. With
`isolate=True` every request runs alone: no cross-request batching, which is the naive
baseline, and makes INT8 vectors independent of other clients' traffic.

If the thread itself fails (a bug, memory exhausted), every waiting future gets the error
and the engine refuses new work: nothing waits forever on a dead thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from albert_onnx.errors import AlbertOnnxError
from albert_onnx.runtime.embedder import Doc, Embedder, OnBatch

ROUND_BATCHES = 8


class QueueFull(AlbertOnnxError):
    """The queue holds as many tokens as it may; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosed(AlbertOnnxError):
    """The engine is stopping, or its thread failed: no new work is taken."""


@dataclass(eq=False)
class Job:
    docs: list[Doc]
    tokens: int
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False


@dataclass
class EngineHooks:
    """What the engine reports as it goes (metrics); every hook is optional."""

    on_batch: OnBatch | None = None  # (docs, real tokens, padded tokens) per batch
    on_round: Callable[[list[Job]], None] | None = None  # jobs taken, before they run
    on_dropped: Callable[[Job], None] | None = None  # a cancelled job removed from the queue


class Engine:
    def __init__(
        self,
        embedder: Embedder,
        max_queue_tokens: int,
        max_wait_ms: float,
        isolate: bool = False,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_queue_tokens = max_queue_tokens
        self.max_wait = max_wait_ms / 1000
        self.isolate = isolate
        self.hooks = hooks or EngineHooks()
        self._queue: list[Job] = []
        self._queued_tokens = 0
        self._running_tokens = 0
        self._arriving = 0
        self._condition = threading.Condition()
        self._closed: str | None = None  # why no new work is taken
        self._tokens_per_s = 0.0  # moving average, for Retry-After
        self._thread = threading.Thread(target=self._loop, daemon=True, name="albert-onnx-engine")
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._closed is None

    @property
    def queued_inputs(self) -> int:
        with self._condition:
            return sum(len(job.docs) for job in self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request that is on its way (being tokenized) until it is queued or fails,
        so that an idle engine knows whether waiting for company can pay."""
        with self._condition:
            self._arriving += 1
        try:
            yield
        finally:
            with self._condition:
                self._arriving -= 1
                self._condition.notify()

    def submit(self, docs: list[Doc]) -> Job:
        """Queue DOCS; the job's future gets their pooled, unnormalized vectors in order."""
        tokens = sum(len(window) for doc in docs for window in doc)
        with self._condition:
            if self._closed is not None:
                raise EngineClosed(self._closed)
            if self._queued_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(
                    f"the queue is full ({self._queued_tokens:,} tokens waiting, limit "
                    f"{self.max_queue_tokens:,}); retry later",
                    self._retry_after(),
                )
            job = Job(docs, tokens)
            self._queue.append(job)
            self._queued_tokens += tokens
            self._condition.notify()
        return job

    def _retry_after(self) -> int:
        backlog = self._queued_tokens + self._running_tokens
        rate = self._tokens_per_s or self.embedder.max_batch_tokens
        return max(1, math.ceil(backlog / rate))

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it is still queued."""
        with self._condition:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
                self._queued_tokens -= job.tokens
                if self.hooks.on_dropped:
                    self.hooks.on_dropped(job)

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread."""
        with self._condition:
            self._closed = self._closed or "the engine is stopping"
            self._condition.notify()
        self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._condition:
            idle = False
            while not self._queue and self._closed is None:
                idle = True
                self._condition.wait()
            if not self._queue:
                return None
            # idle until now: wait a little for company, if any is on its way
            deadline = time.monotonic() + self.max_wait
            while (
                idle
                and not self.isolate
                and self._closed is None
                and self._arriving > 0
                and self._queued_tokens < self.embedder.max_batch_tokens
                and (left := deadline - time.monotonic()) > 0
            ):
                self._condition.wait(left)
            jobs = self._queue[:1] if self.isolate else self._round(self._queue)
            del self._queue[: len(jobs)]
            taken = sum(job.tokens for job in jobs)
            self._queued_tokens -= taken
            self._running_tokens = taken
        return jobs

    def _round(self, queue: list[Job]) -> list[Job]:
        """The oldest jobs that fit in one round's tokens (the first one always does)."""
        limit, total = ROUND_BATCHES * self.embedder.max_batch_tokens, 0
        for count, job in enumerate(queue):
            total += job.tokens
            if total > limit and count:
                return queue[:count]
        return queue[:]

    def _loop(self) -> None:
        jobs: list[Job] = []
        try:
            while (jobs := self._take()) is not None:
                if self.hooks.on_round:
                    self.hooks.on_round(jobs)
                start = time.monotonic()
                tokens = self._run(jobs)
                seconds = time.monotonic() - start
                if tokens and seconds > 0:
                    old, rate = self._tokens_per_s, tokens / seconds
                    self._tokens_per_s = 0.8 * old + 0.2 * rate if old else rate
                self._running_tokens = 0
        except BaseException as exc:  # fail every waiter, then let the thread die loudly
            failure = EngineClosed(f"the inference thread failed: {type(exc).__name__}: {exc}")
            with self._condition:
                self._closed = str(failure)
                waiting, self._queue = [*jobs, *self._queue], []
                self._queued_tokens = 0
            for job in waiting:
                _settle(job.future, exception=failure)
            raise

    def _run(self, jobs: list[Job]) -> int:
        """One round, and the tokens it embedded; if the round fails, each job alone, so
        one bad job cannot fail the others."""
        live = [job for job in jobs if not job.cancelled]
        if not live:
            return 0
        docs = [doc for job in live for doc in job.docs]
        try:
            vectors, _ = self.embedder.pooled(docs, self.hooks.on_batch, normalize=False)
        except AlbertOnnxError as exc:
            if len(live) > 1:
                return sum(self._run([job]) for job in live)
            _settle(live[0].future, exception=exc)
            return 0
        start = 0
        for job in live:
            _settle(job.future, np.ascontiguousarray(vectors[start : start + len(job.docs)]))
            start += len(job.docs)
        return sum(job.tokens for job in live)


def _settle(future: Future, result: object = None, exception: BaseException | None = None) -> None:
    """Complete FUTURE, unless its waiter already cancelled it (the client went away)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
