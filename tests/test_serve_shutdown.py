"""How the server stops: SIGTERM drains (requests in flight finish, exit 0); a signal
delivered twice at once is one stop; a later second signal stops at once (exit 1); the drain
deadline answers what is still running with a JSON 503 and exits 1; a signal during
warm-up stops it cleanly. Live server processes, each stopped within the test."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import real_texts
from live_server import TIMEOUT, start

LONG = " ".join(real_texts()[::2][:8])  # at the 512-token limit


def test_sigterm_finishes_every_request_in_flight_then_exits_0(english_export):
    server = start(english_export, "--provider", "cpu", "--max-wait-ms", "0")
    server.wait_ready()
    long_inputs = [" ".join(real_texts()[::2][:4])] * 48
    with ThreadPoolExecutor(max_workers=6) as clients:
        calls = [
            clients.submit(server.post, "/embed", json={"inputs": long_inputs}) for _ in range(6)
        ]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        during = server.get("/ready").status_code
        refused = server.post("/embed", json={"inputs": "late"}).status_code
        statuses = [call.result().status_code for call in calls]
    assert server.process.wait(timeout=TIMEOUT) == 0
    assert statuses == [200] * 6
    assert (during, refused) == (503, 503)


def test_a_signal_delivered_twice_at_once_is_one_stop(english_export):
    """`timeout 120 albert-onnx serve`, then one SIGTERM to `timeout`: it forwards the
    signal to the server and to its process group, so the server receives it twice."""
    server = start(english_export, "--provider", "cpu", wrapper=("timeout", "120"))
    process = server.process
    server.wait_ready()
    with ThreadPoolExecutor(max_workers=3) as clients:
        calls = [clients.submit(server.post, "/embed", json={"inputs": [LONG] * 64})
                 for _ in range(3)]  # fmt: skip
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)  # to `timeout` itself
        statuses = [call.result().status_code for call in calls]
    assert process.wait(timeout=TIMEOUT) == 0  # timeout exits with the server's status
    assert statuses == [200] * 3


def test_a_later_second_signal_stops_at_once_with_status_1(english_export):
    server = start(english_export, "--provider", "cpu", "--precision", "fp32",
                   "--max-queue-tokens", "600000")  # fmt: skip
    server.wait_ready()
    busy = [LONG] * 250
    with ThreadPoolExecutor(max_workers=4) as clients:
        calls = [clients.submit(server.post, "/embed", json={"inputs": busy}) for _ in range(4)]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.2)  # past the window in which a second signal is the same stop
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=TIMEOUT) == 1
        for call in calls:
            with pytest.raises(httpx.HTTPError):
                call.result().raise_for_status()


def test_the_drain_deadline_answers_503_logs_each_request_and_exits_1(english_export):
    server = start(english_export, "--provider", "cpu", "--precision", "fp32",
                   "--drain-seconds", "1", "--max-queue-tokens", "600000")  # fmt: skip
    server.wait_ready()
    busy = [LONG] * 250
    with ThreadPoolExecutor(max_workers=3) as clients:
        calls = [clients.submit(server.post, "/embed", json={"inputs": busy}) for _ in range(3)]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        responses = [call.result() for call in calls]
    assert server.process.wait(timeout=TIMEOUT) == 1
    for response in responses:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error_type"] == "Unhealthy"
        assert "drain deadline cut this request off" in response.json()["error"]
    time.sleep(0.2)  # the reader thread has the last lines
    log = "".join(server.log)
    assert log.count("cut off at the drain deadline: POST /embed after") == 3
    assert "error: the drain deadline (1 s) cut off 3 requests" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_during_warm_up_stops_it_cleanly_with_status_0(english_export, attempt):
    """Warm-up runs a full batch at several lengths; a large budget makes it take seconds.
    Stopping it used to abort the process (rc 134, onnxruntime torn down mid-run)."""
    server = start(english_export, "--provider", "cpu", "--max-batch-tokens", "32768")
    time.sleep(0.3)
    assert server.get("/ready").status_code == 503  # still warming up
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=TIMEOUT) == 0
    time.sleep(0.2)
    log = "".join(server.log)
    assert "terminate called" not in log and "Traceback" not in log


def test_a_drain_answers_503_at_least_its_minimum(english_export):
    server = start(english_export, "--provider", "cpu", "--drain-min-seconds", "1")
    server.wait_ready()
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.get("/ready").status_code == 503  # still answering, for the load balancer
    assert server.process.wait(timeout=TIMEOUT) == 0
    assert time.monotonic() - stopped >= 1


def test_a_503_at_the_deadline_is_json_in_the_endpoints_protocol(english_export):
    """The OpenAI endpoint's cut-off request gets OpenAI's error shape."""
    server = start(english_export, "--provider", "cpu", "--precision", "fp32",
                   "--drain-seconds", "0.5")  # fmt: skip
    server.wait_ready()
    with ThreadPoolExecutor(max_workers=1) as clients:
        call = clients.submit(server.post, "/v1/embeddings", json={"input": [LONG] * 250})
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        response = call.result()
    assert server.process.wait(timeout=TIMEOUT) == 1
    assert response.status_code == 503
    assert json.loads(response.text)["error"]["type"] == "server_error"
