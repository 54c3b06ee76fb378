"""`albert-onnx serve`: the app on uvicorn, with a drain on SIGTERM.

uvicorn alone closes its listening socket on SIGTERM, so clients and load balancers see
refused connections while requests are still running. Here the first SIGTERM (or Ctrl-C)
starts a drain instead: `/ready` and new embedding requests answer 503 (a load balancer
takes the replica out), requests in flight finish, and only then, or after `drain_seconds`,
does uvicorn shut down; the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import sys
import threading
import time
from types import FrameType

import uvicorn

from albert_onnx.serve.app import ServeConfig, Service, create_app


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, drain_seconds: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_seconds = drain_seconds
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is None:
            self.service.draining = True
            self._drain_deadline = time.monotonic() + self.drain_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.service.failure is not None:
            self.should_exit = True
        if self._drain_deadline is not None and (
            self.service.in_flight == 0 or time.monotonic() > self._drain_deadline
        ):
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
            timeout_graceful_shutdown=max(1, int(config.drain_seconds)),
        ),
        service,
        config.drain_seconds,
    )
    threading.Thread(target=service.warm_up, daemon=True, name="albert-onnx-warmup").start()
    server.run()
    if service.engine is not None:
        service.engine.stop(timeout=config.drain_seconds)
    if service.failure is not None:
        raise service.failure
