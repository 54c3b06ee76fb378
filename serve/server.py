"""`albert-onnx serve`: the app on uvicorn, with a drain on SIGTERM.

uvicorn alone closes its listening socket on SIGTERM, so clients and load balancers see
refused connections while requests are still running. Here the first SIGTERM (or Ctrl-C)
starts a drain instead: `/ready` and new embedding requests answer 503 (a load balancer
takes the replica out), requests in flight finish, and then, no sooner than
`drain_min_seconds` and no later than `drain_seconds`, uvicorn shuts down and the process
exits 0. Requests still running at that deadline are answered 503 (one log line each) and
the process exits 1. A signal during warm-up stops it after its current batch, exit 0.

A signal within SAME_STOP_SECONDS of the first is the same stop request: `timeout` and a
terminal deliver one stop both to the process and through its process group. A later
second signal stops at once: requests still running are cut off, exit status 1.

The HTTP side is uvicorn's h11 protocol with the limits of `connections.py`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import FrameType

import uvicorn

from albert_onnx.serve.app import Service, create_app
from albert_onnx.serve.config import ServeConfig
from albert_onnx.serve.connections import guarded_protocol

SHUTDOWN_SECONDS = 5  # what uvicorn may take once the drain is over: the requests are done
SAME_STOP_SECONDS = 1.0
MAX_HEADER_BYTES = 64 * 1024  # request line and headers: browsers send a few kB


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, serve: ServeConfig) -> None:
        super().__init__(config)
        self.service = service
        self.drain = (serve.drain_min_seconds, serve.drain_seconds)
        self._drain_started: float | None = None
        self.forced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler would re-raise the signal at exit: neither signal goes there
        now = time.monotonic()
        if self._drain_started is None:
            self.service.draining = True
            self.service.stopping.set()
            self._drain_started = now
        elif now - self._drain_started >= SAME_STOP_SECONDS:
            self.forced = self.force_exit = self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.service.failure is not None:
            self.should_exit = True
        if self._drain_started is not None:
            least, most = self.drain
            waited = time.monotonic() - self._drain_started
            if waited >= most and self.service.in_flight:
                self.service.cut_off.set()  # each answers 503 at once, then the exit
            if waited >= least and self.service.in_flight == 0:
                self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"albert-onnx: serving on http://{host}:{port}", file=sys.stderr, flush=True)


def serve(config: ServeConfig) -> int:
    """Load the model (errors end here, before any port is opened), open the port, warm
    up in the background (/ready says when), serve until SIGTERM has drained. Returns the
    exit status: 1 if the drain deadline cut requests off."""
    service = Service(config)
    server = DrainingServer(
        uvicorn.Config(
            create_app(service),
            host=config.host,
            port=config.port,
            http=guarded_protocol(config.connection_limit(), config.request_timeout),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=config.keep_alive_seconds,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        ),
        service,
        config,
    )
    warm_up = threading.Thread(target=service.warm_up, daemon=True, name="albert-onnx-warmup")
    warm_up.start()
    server.run()
    if server.forced:
        print("error: stopped by a second signal; requests in flight were cut off",
              file=sys.stderr, flush=True)  # fmt: skip
        _exit_now(1)
    # onnxruntime must not be running when the interpreter finalizes: it aborts the process
    service.stopping.set()
    warm_up.join()
    if service.engine is not None:
        service.engine.stop(timeout=SHUTDOWN_SECONDS)
        if service.engine.running:
            print("error: the inference thread did not stop in time", file=sys.stderr, flush=True)
            _exit_now(1)
    if service.failure is not None:
        raise service.failure
    if service.cut:
        print(f"error: the drain deadline ({config.drain_seconds:g} s) cut off "
              f"{service.cut:,} request{'s' if service.cut > 1 else ''}",
              file=sys.stderr, flush=True)  # fmt: skip
        return 1
    return 0


def _exit_now(status: int) -> None:
    """Exit at once, skipping interpreter teardown: the inference thread may be inside
    onnxruntime, whose finalization under a running session aborts the process."""
    sys.stderr.flush()
    os._exit(status)
