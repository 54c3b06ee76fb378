"""The server's engine shares the model fairly: a large request is cut into batches that
take turns with other requests' batches, so a small request waits about one batch behind
it, and a request whose client has gone loses its batches not yet run. The engine alone
(with a real Embedder), then a live server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from albert_onnx.runtime.options import ModelOptions
from albert_onnx.runtime.pipeline.pipeline import Pipeline
from albert_onnx.serve.engine import Engine, EngineClosed, EngineHooks

from conftest import real_texts
from live_server import TIMEOUT, serving

BUDGET = 512  # padded tokens per batch: a 64-text request of ~128 tokens takes 16 batches


@pytest.fixture(scope="module")
def pipeline(english_export) -> Pipeline:
    options = ModelOptions(english_export, "cpu", "fp32", max_batch_tokens=BUDGET)
    return Pipeline(options)


def long_texts(count: int) -> list[str]:
    """Texts of about 128 tokens each (WikiText paragraphs cut to 80 words)."""
    words = " ".join(real_texts()[::2]).split()
    return [" ".join(words[i * 80 : (i + 1) * 80]) for i in range(count)]


class Recorder:
    """Engine hooks that record each batch, and can act after a given one."""

    def __init__(self) -> None:
        self.batches = 0
        self.docs: list[int] = []  # per batch
        self.dropped = 0
        self.after: dict[int, Callable[[], None]] = {}

    def hooks(self) -> EngineHooks:
        def on_batch(docs: int, real: int, padded: int) -> None:
            self.batches += 1
            self.docs.append(docs)
            if action := self.after.get(self.batches):
                action()

        def on_dropped(inputs: int) -> None:
            self.dropped += inputs

        return EngineHooks(on_batch=on_batch, on_dropped=on_dropped)


def test_a_small_request_waits_about_one_batch_behind_a_large_one(pipeline):
    recorder = Recorder()
    engine = Engine(pipeline, max_queue_tokens=10**6, max_wait_ms=0, hooks=recorder.hooks())
    large_texts, small_texts = long_texts(64), ["a short question"]
    arrived = {}

    def small_arrives() -> None:
        arrived["at_batch"] = recorder.batches
        arrived["job"] = engine.submit(pipeline.tokenize(small_texts))
        arrived["job"].future.add_done_callback(
            lambda _: arrived.setdefault("done_at_batch", recorder.batches)
        )

    recorder.after[1] = small_arrives  # while the large request's first batch has just run
    large = engine.submit(pipeline.tokenize(large_texts))
    large_vectors = large.future.result(timeout=TIMEOUT)
    small_vectors = arrived["job"].future.result(timeout=TIMEOUT)
    engine.stop()

    assert recorder.batches >= 16  # the large request really is many batches
    # it came as the large request's first batch ended; the next round holds the large
    # one's next batch and the small one's, shorter texts first: it was answered before
    # another batch of the large request ran (batches are counted once they have run)
    assert arrived["done_at_batch"] == arrived["at_batch"] == 1
    # and each gets its own rows, as if it had run alone
    alone = [pipeline.pooled(pipeline.tokenize(t), normalize=False)[0] for t in
             (large_texts, small_texts)]  # fmt: skip
    assert np.abs(large_vectors - alone[0]).max() < 1e-5
    assert np.abs(small_vectors - alone[1]).max() < 1e-5


def test_many_small_requests_still_share_batches(pipeline):
    """Fairness does not cost cross-request batching: 32 one-text requests queued together
    run in a few batches, not 32."""
    recorder = Recorder()
    engine = Engine(pipeline, max_queue_tokens=10**6, max_wait_ms=0, hooks=recorder.hooks())
    blocker = engine.submit(pipeline.tokenize(long_texts(4)))  # the others queue behind it
    jobs = [engine.submit(pipeline.tokenize([text])) for text in real_texts()[1::2][:32]]
    for job in [blocker, *jobs]:
        job.future.result(timeout=TIMEOUT)
    engine.stop()
    assert recorder.batches <= 8


def test_a_cancelled_request_loses_the_batches_not_yet_run(pipeline):
    recorder = Recorder()
    engine = Engine(pipeline, max_queue_tokens=10**6, max_wait_ms=0, hooks=recorder.hooks())
    texts = long_texts(64)
    jobs = []
    recorder.after[1] = lambda: engine.cancel(jobs[0])  # the client left after one batch
    jobs.append(engine.submit(pipeline.tokenize(texts)))
    with pytest.raises(TimeoutError):
        jobs[0].future.result(timeout=2)
    engine.stop()
    assert recorder.batches == 1  # the batch running when it left, and no other
    assert recorder.dropped == len(texts) - recorder.docs[0]
    assert engine.queued_tokens == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_inference_thread_fails_its_waiters_instead_of_hanging(english_export):
    """The engine alone (no HTTP): a bug in a round must not leave futures waiting."""
    pipeline = Pipeline(ModelOptions(english_export, "cpu"))
    engine = Engine(pipeline, max_queue_tokens=100_000, max_wait_ms=0)

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in a round")

    pipeline.pooled_batches = broken  # the failure being tested: not an albert-onnx error
    job = engine.submit(pipeline.tokenize(["a text"]))
    with pytest.raises(EngineClosed, match="RuntimeError: a bug in a round"):
        job.future.result(timeout=TIMEOUT)
    assert not engine.alive
    with pytest.raises(EngineClosed):
        engine.submit(pipeline.tokenize(["another"]))
    engine.stop(timeout=TIMEOUT)  # the thread's end (and its traceback) belong to this test
    assert not engine.running


# -- a live server ----------------------------------------------------------------------


def test_a_one_text_request_is_answered_while_a_large_one_runs(english_export):
    large = [" ".join(real_texts()[::2][:8])] * 256  # 256 inputs at the 512-token limit
    with serving(english_export, "--provider", "cpu", "--precision", "fp32") as server:
        answered = {}

        def send_large() -> None:
            answered["large"] = server.post("/embed", json={"inputs": large}).status_code
            answered["large_done"] = time.monotonic()

        holder = threading.Thread(target=send_large)
        holder.start()
        time.sleep(0.3)  # the large request is running by now
        small = server.post("/embed", json={"inputs": "a short question"})
        small_done = time.monotonic()
        holder.join(TIMEOUT)
        assert small.status_code == 200 and answered["large"] == 200
        assert small_done < answered["large_done"]  # it did not wait for the large one


def test_a_client_that_leaves_has_its_remaining_batches_dropped(english_export):
    busy = [" ".join(real_texts()[::2][:8])] * 250  # 128,000 tokens each
    with serving(english_export, "--provider", "cpu", "--precision", "fp32",
                 "--max-queue-tokens", "400000") as server:  # fmt: skip
        holder = threading.Thread(
            target=server.post, args=("/embed",), kwargs={"json": {"inputs": busy}}
        )
        holder.start()
        time.sleep(0.3)
        body = json.dumps({"inputs": busy}).encode()
        with server.connect() as conn:  # sent whole, then the client leaves
            conn.sendall(
                b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        holder.join(TIMEOUT)
        deadline = time.monotonic() + 10
        while server.metric("albert_onnx_inputs_dropped_total") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the round running when it left finishes
        dropped = server.metric("albert_onnx_inputs_dropped_total")
        embedded = server.metric("albert_onnx_inputs_total")
        assert embedded + dropped == 500  # every input either ran or was dropped, once
        assert dropped >= 125  # it left early: most of its batches never ran
        assert server.post("/embed", json={"inputs": "still fine"}).status_code == 200
