"""`albert-onnx serve`: the app on uvicorn, with a drain on SIGTERM.

uvicorn alone closes its listening socket on SIGTERM, so clients and load balancers see
refused connections while requests are still running. Here the first SIGTERM (or Ctrl-C)
starts a drain instead: `/ready` and new embedding requests answer 503 (a load balancer
takes the replica out), requests in flight finish, and then, no sooner than
`drain_min_seconds` and no later than `drain_seconds`, uvicorn shuts down and the process
exits 0. A second signal stops at once: requests still running are cut off, exit status 1.
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

SHUTDOWN_SECONDS = 5  # what uvicorn may take once the drain is over: the requests are done


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, serve: ServeConfig) -> None:
        super().__init__(config)
        self.service = service
        self.drain = (serve.drain_min_seconds, serve.drain_seconds)
        self._drain_started: float | None = None
        self.forced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler would re-raise the signal at exit: neither signal goes there
        if self._drain_started is None:
            self.service.draining = True
            self._drain_started = time.monotonic()
        else:
            self.forced = self.force_exit = self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.service.failure is not None:
            self.should_exit = True
        if self._drain_started is not None:
            least, most = self.drain
            waited = time.monotonic() - self._drain_started
            if waited >= most or (waited >= least and self.service.in_flight == 0):
                self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"albert-onnx: serving on http://{host}:{port}", file=sys.stderr, flush=True)


def serve(config: ServeConfig) -> None:
    """Load the model (errors end here, before any port is opened), open the port, warm
    up in the background (/ready says when), serve until SIGTERM has drained."""
    service = Service(config)
    server = DrainingServer(
        uvicorn.Config(
            create_app(service),
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        ),
        service,
        config,
    )
    threading.Thread(target=service.warm_up, daemon=True, name="albert-onnx-warmup").start()
    server.run()
    if server.forced:
        print("error: stopped by a second signal; requests in flight were cut off",
              file=sys.stderr, flush=True)  # fmt: skip
        # at once, skipping interpreter teardown: the inference thread may be inside
        # onnxruntime, whose finalization under a running session aborts the process
        os._exit(1)
    if service.engine is not None:
        service.engine.stop(timeout=SHUTDOWN_SECONDS)
    if service.failure is not None:
        raise service.failure
