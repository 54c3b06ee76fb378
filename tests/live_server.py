"""`albert-onnx serve` as users start it, for the server tests: a live server process on
127.0.0.1 (a free port), plain HTTP calls with timeouts, and a stop by SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conftest import OFFLINE_ENV

TIMEOUT = 60


@dataclass
class Running:
    url: str
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)  # what it printed after "serving on"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=TIMEOUT, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=TIMEOUT, **kwargs)

    def metric(self, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", self.get("/metrics").text, re.M)
        return float(match.group(1)) if match else 0.0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=TIMEOUT)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024


def start(
    model,
    *args: str,
    preexec_fn: Callable[[], None] | None = None,
    wrapper: tuple[str, ...] = (),
) -> Running:
    """Start a server (under WRAPPER, a command such as `timeout 120`, if given)."""
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "albert_onnx", "serve", "--model", str(model),
         "--port", "0", *args],
        env=OFFLINE_ENV, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )  # fmt: skip
    seen = []
    for line in process.stderr:  # warnings may come first
        seen.append(line)
        if match := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line):
            break
    else:
        raise AssertionError("".join(seen))
    server = Running(match.group(1), process)

    def keep_reading() -> None:  # a full pipe must never block the server
        for line in process.stderr:
            server.log.append(line)

    threading.Thread(target=keep_reading, daemon=True).start()
    return server


def stop(server: Running) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=TIMEOUT)


@contextmanager
def serving(model, *args: str, ready: bool = True) -> Iterator[Running]:
    server = start(model, *args)
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        if server.process.poll() is None:
            assert stop(server) == 0
