"""The server's options, checked where the API receives them (the Embedder checks its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from albert_onnx.errors import OptionError
from albert_onnx.runtime.options import check_positive


@dataclass(frozen=True)
class ServeConfig:
    model: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    provider: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    device_id: int | None = None
    max_batch_tokens: int | None = None
    max_queue_tokens: int | None = None  # default: 8 batches, or one full request if more
    max_inputs_per_request: int = 256
    max_wait_ms: float = 2.0
    max_body_bytes: int = 2_000_000
    truncate: bool = True
    isolate_requests: bool = False
    drain_seconds: float = 30.0  # the longest a drain waits for requests in flight
    drain_min_seconds: float = 0.0  # the least: time for a load balancer to see /ready 503
    served_model_name: str | None = None

    def __post_init__(self) -> None:
        check_positive("max_inputs_per_request", self.max_inputs_per_request)
        check_positive("max_body_bytes", self.max_body_bytes)
        if self.max_queue_tokens is not None:
            check_positive("max_queue_tokens", self.max_queue_tokens)
        for name in ("max_wait_ms", "drain_seconds", "drain_min_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise OptionError(f"{name} must be a number of at least 0, not {value!r}")
        if self.max_wait_ms > 1000:
            raise OptionError(f"max_wait_ms is at most 1000, not {self.max_wait_ms!r}")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 <= self.port <= 65535
        ):
            raise OptionError(f"port must be 0 to 65535, not {self.port!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise OptionError("the API key is empty: that would let every request in")
