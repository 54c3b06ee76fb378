"""The cross-request batching engine: HTTP-free, torch-free.

Requests put their tokenized inputs in one queue; one inference thread takes rounds from
it, hands each round to the pipeline as one list (which sorts it by length and cuts batches
under the token budget with the runtime's bucketer), and completes each request's future
as soon as the batch holding its last row has run.

Fair at batch granularity. A request of at most WHOLE_BATCHES batches' tokens (the 1 to 16
texts of typical traffic) takes its turn whole; a larger one is cut into slices of about one
batch's tokens (its inputs sorted longest first and grouped under the token budget by the
bucketer, without its padding bound: a slice is a turn, and the round cuts the batches) and
takes one slice per turn, going to the back of the queue after each. A round takes turns in
queue order, up to ROUND_BATCHES batches' worth of tokens. Many small requests still share a
round, sorted by length together, as in first-come first-served batching; a large request
takes one batch per round, so a small request that arrives behind it waits about one batch,
not the whole large request (text-embeddings-inference queues each input as its own entry
for the same reason). Inside a round the whole requests run first, then the slices of large
ones, and each request is answered as soon as the batch holding its last input has run.

When the thread is idle, the first request waits at most `max_wait_ms` for company, and
only while other requests are on their way (`arriving()`: read, being tokenized), so a lone
client never waits; when the thread is busy, the next round takes what queued meanwhile.
The queue is bounded in tokens: past `max_queue_tokens` a request is refused at once
(QueueFull, with a retry hint from the measured throughput) instead of waiting without
bound. A cancelled request (its client went away) loses every slice not yet taken: at most
the round already running is spent on it. With `isolate=True` a round is one slice of one
request: no cross-request batching, which is the naive baseline, and makes INT8 vectors
independent of other clients' traffic.

If the thread itself fails (a bug, memory exhausted), every waiting future gets the error
and the engine refuses new work: nothing waits forever on a dead thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from albert_onnx.errors import AlbertOnnxError, OptionError
from albert_onnx.runtime.pipeline.bucketer import group
from albert_onnx.runtime.pipeline.pipeline import Doc, OnBatch, Pipeline

ROUND_BATCHES = 8
WHOLE_BATCHES = 2  # a request of at most this many batches' tokens runs in one turn


class QueueFull(AlbertOnnxError):
    """The queue holds as many tokens as it may; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosed(AlbertOnnxError):
    """The engine is stopping, or its thread failed: no new work is taken."""


@dataclass(eq=False)
class Job:
    """One request: its inputs, the slices still to run, and the rows done so far."""

    docs: list[Doc]
    slices: deque[np.ndarray]  # positions in `docs`, one slice per round it takes part in
    lengths: np.ndarray  # tokens per doc
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    started: bool = False  # its first slice was taken
    cancelled: bool = False
    vectors: np.ndarray | None = None
    left: int = 0  # docs whose vectors are not in yet

    def __post_init__(self) -> None:
        self.left = len(self.docs)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def queued_inputs(self) -> int:
        return sum(len(rows) for rows in self.slices)

    @property
    def queued_tokens(self) -> int:
        return sum(int(self.lengths[rows].sum()) for rows in self.slices)


@dataclass(eq=False)
class Taken:
    """One job's turn in a round (all of it, or a slice), and how many of its rows are
    still to come."""

    job: Job
    rows: np.ndarray
    whole: bool
    left: int = 0

    def __post_init__(self) -> None:
        self.left = len(self.rows)

    @property
    def tokens(self) -> int:
        return int(self.job.lengths[self.rows].sum())

    def deliver(self, row: int, vector: np.ndarray) -> None:
        """The vector of the job's doc ROW; the job is answered with its last one."""
        job = self.job
        if job.vectors is None:
            job.vectors = np.empty((len(job.docs), len(vector)), dtype=np.float32)
        job.vectors[row] = vector
        self.left -= 1
        job.left -= 1
        if not job.left:
            _settle(job.future, job.vectors)


@dataclass
class EngineHooks:
    """What the engine reports as it goes (metrics); every hook is optional."""

    on_batch: OnBatch | None = None  # (docs, real tokens, padded tokens) per batch
    on_started: Callable[[Job], None] | None = None  # a job's first slice is taken
    on_dropped: Callable[[int], None] | None = None  # inputs of a cancelled job never run


class Engine:
    def __init__(
        self,
        pipeline: Pipeline,
        max_queue_tokens: int,
        max_wait_ms: float,
        isolate: bool = False,
        hooks: EngineHooks | None = None,
    ) -> None:
        if pipeline.chunked:
            raise OptionError("the engine embeds whole texts: long_texts='chunk' is not served")
        self.pipeline = pipeline
        self.max_queue_tokens = max_queue_tokens
        self.max_wait = max_wait_ms / 1000
        self.isolate = isolate
        self.hooks = hooks or EngineHooks()
        self._queue: deque[Job] = deque()  # jobs with slices left, in turn order
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
    def running(self) -> bool:
        """The inference thread has not ended (it may be closed to new work)."""
        return self._thread.is_alive()

    @property
    def queued_inputs(self) -> int:
        with self._condition:
            return sum(job.queued_inputs for job in self._queue)

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
        lengths = np.array([sum(len(w) for w in doc) for doc in docs], dtype=np.int64)
        # slices are turns, not batches: one batch's tokens each, whatever their lengths
        # (the round cuts the batches); with the padding bound, the 1 to 16 texts of mixed
        # lengths of a typical request would be several slices, and take several rounds
        slices = group(lengths, self.pipeline.max_batch_tokens, max_padding=math.inf)
        job = Job(docs, deque(slices), lengths)
        tokens = job.tokens
        if not docs:
            _settle(job.future, np.zeros((0, self.pipeline.dimension), dtype=np.float32))
            return job
        with self._condition:
            if self._closed is not None:
                raise EngineClosed(self._closed)
            if self._queued_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(
                    f"the queue is full ({self._queued_tokens:,} tokens waiting, limit "
                    f"{self.max_queue_tokens:,}); retry later",
                    self._retry_after(),
                )
            self._queue.append(job)
            self._queued_tokens += tokens
            self._condition.notify()
        return job

    def _retry_after(self) -> int:
        backlog = self._queued_tokens + self._running_tokens
        rate = self._tokens_per_s or self.pipeline.max_batch_tokens
        return max(1, math.ceil(backlog / rate))

    def cancel(self, job: Job) -> None:
        """The client went away: drop every slice of the job not yet taken."""
        with self._condition:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
                self._queued_tokens -= job.queued_tokens
                if self.hooks.on_dropped:
                    self.hooks.on_dropped(job.queued_inputs)
                job.slices.clear()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread."""
        with self._condition:
            self._closed = self._closed or "the engine is stopping"
            self._condition.notify()
        self._thread.join(timeout)

    def _take(self) -> list[Taken] | None:
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
                and self._queued_tokens < self.pipeline.max_batch_tokens
                and (left := deadline - time.monotonic()) > 0
            ):
                self._condition.wait(left)
            taken = self._round()
            self._running_tokens = sum(t.tokens for t in taken)
            self._queued_tokens -= self._running_tokens
        for t in taken:
            if not t.job.started:
                t.job.started = True
                if self.hooks.on_started:
                    self.hooks.on_started(t.job)
        return taken

    def _round(self) -> list[Taken]:
        """Jobs in turn, up to one round's tokens (one turn at least): a job of at most
        WHOLE_BATCHES batches' tokens is taken whole; a larger one gives its next slice and
        goes to the back of the queue."""
        budget = self.pipeline.max_batch_tokens
        taken: list[Taken] = []
        total = 0
        for _ in range(len(self._queue)):
            job = self._queue[0]
            whole = job.queued_tokens <= WHOLE_BATCHES * budget
            rows = np.concatenate(job.slices) if whole else job.slices[0]
            tokens = int(job.lengths[rows].sum())
            if taken and (self.isolate or total + tokens > ROUND_BATCHES * budget):
                break
            self._queue.popleft()
            if whole:
                job.slices.clear()
            else:
                job.slices.popleft()
                self._queue.append(job)
            taken.append(Taken(job, rows, whole))
            total += tokens
        return taken

    def _loop(self) -> None:
        taken: list[Taken] = []
        try:
            while (taken := self._take()) is not None:
                start = time.monotonic()
                tokens = self._run(taken)
                seconds = time.monotonic() - start
                if tokens and seconds > 0:
                    old, rate = self._tokens_per_s, tokens / seconds
                    self._tokens_per_s = 0.8 * old + 0.2 * rate if old else rate
                self._running_tokens = 0
        except BaseException as exc:  # fail every waiter, then let the thread die loudly
            failure = EngineClosed(f"the inference thread failed: {type(exc).__name__}: {exc}")
            with self._condition:
                self._closed = str(failure)
                waiting = [*(t.job for t in taken), *self._queue]
                self._queue.clear()
                self._queued_tokens = 0
            for job in waiting:
                _settle(job.future, exception=failure)
            raise

    def _run(self, taken: list[Taken]) -> int:
        """One round, and the tokens it embedded: the whole requests first, then the slices
        of large ones, each group sorted and batched by the pipeline. Each batch's rows go
        to their jobs as soon as it has run, and a job whose rows are all in is answered
        then, not at the end of the round. If the round fails, each unfinished turn runs
        alone, so one bad request cannot fail the others."""
        live = [t for t in taken if not t.job.cancelled]
        try:
            for group_ in ([t for t in live if t.whole], [t for t in live if not t.whole]):
                owners = [(t, row) for t in group_ for row in t.rows]  # whose, which doc
                docs = [t.job.docs[row] for t, row in owners]
                for positions, vectors in self.pipeline.pooled_batches(docs, self.hooks.on_batch):
                    for position, vector in zip(positions, vectors, strict=True):
                        t, row = owners[position]
                        t.deliver(row, vector)
        except AlbertOnnxError as exc:
            if len(live) > 1:
                return sum(self._run([t]) for t in live if t.left)
            self._fail(live[0].job, exc)
            return 0
        return sum(t.tokens for t in live)

    def _fail(self, job: Job, exc: BaseException) -> None:
        """JOB's slice failed: its future gets the error and its other slices never run."""
        with self._condition:
            if job in self._queue:
                self._queue.remove(job)
                self._queued_tokens -= job.queued_tokens
            job.slices.clear()
        _settle(job.future, exception=exc)


def _settle(future: Future, result: object = None, exception: BaseException | None = None) -> None:
    """Complete FUTURE, unless its waiter already cancelled it (the client went away)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
