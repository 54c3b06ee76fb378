"""The server's options and their defaults, declared once (the CLI takes its defaults from
here), checked where the API receives them (the Embedder checks its own)."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

from albert_onnx.errors import OptionError
from albert_onnx.runtime.options import Dtype, ModelOptions, check_choice, check_positive

RESERVED_DESCRIPTORS = 64  # model files, the event loop, logs, metrics: what a server holds
DEFAULT_MAX_CONNECTIONS = 2048


def descriptor_limit() -> int:
    """The process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_room() -> int:
    """How many connections the descriptor limit leaves room for."""
    return descriptor_limit() - RESERVED_DESCRIPTORS


@dataclass(frozen=True)
class ServeConfig:
    model: ModelOptions = field(default_factory=ModelOptions)  # what runs, and how
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue_tokens: int | None = None  # default: 8 batches, or one full request if more
    max_inputs_per_request: int = 256
    max_wait_ms: float = 2.0
    max_body_bytes: int = 2_000_000
    truncate: bool = True
    isolate_requests: bool = False
    drain_seconds: float = 30.0  # the longest a drain waits for requests in flight
    drain_min_seconds: float = 0.0  # the least: time for a load balancer to see /ready 503
    served_model_name: str | None = None
    max_connections: int | None = None  # default: DEFAULT_MAX_CONNECTIONS, or what fits
    request_timeout: float = 30.0  # for a whole request (headers and body) to arrive
    keep_alive_seconds: float = 5.0  # an idle connection between requests
    dtype: Dtype = "float32"  # vectors answered unless a request asks for others

    def __post_init__(self) -> None:
        if self.model.pooling == "none" or self.model.long_texts != "truncate":
            raise OptionError("the server answers one vector per whole text: pooling 'none' and "
                              "long_texts 'chunk' are not served")  # fmt: skip
        check_choice("dtype", self.dtype, Dtype)
        check_positive("max_inputs_per_request", self.max_inputs_per_request)
        check_positive("max_body_bytes", self.max_body_bytes)
        if self.max_queue_tokens is not None:
            check_positive("max_queue_tokens", self.max_queue_tokens)
        for name in ("max_wait_ms", "drain_seconds", "drain_min_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise OptionError(f"{name} must be a number of at least 0, not {value!r}")
        for name in ("request_timeout", "keep_alive_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise OptionError(f"{name} must be a number of seconds above 0, not {value!r}")
        if self.max_wait_ms > 1000:
            raise OptionError(f"max_wait_ms is at most 1000, not {self.max_wait_ms!r}")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 <= self.port <= 65535
        ):
            raise OptionError(f"port must be 0 to 65535, not {self.port!r}")
        if self.api_key is not None:
            _check_api_key(self.api_key)
        if self.max_connections is not None:
            check_positive("max_connections", self.max_connections)
            if self.max_connections > connection_room():
                raise OptionError(
                    f"max_connections {self.max_connections:,} does not fit under this "
                    f"process's limit of {descriptor_limit():,} open files ({RESERVED_DESCRIPTORS}"
                    " kept for the server itself); raise the limit (ulimit -n) or lower it"
                )

    def connection_limit(self) -> int:
        """The connection cap: as given, or the default where the descriptor limit allows."""
        if self.max_connections is not None:
            return self.max_connections
        room = connection_room()
        if room < 1:
            raise OptionError(
                f"this process may open only {descriptor_limit():,} files; the server needs "
                f"more than {RESERVED_DESCRIPTORS} (raise ulimit -n)"
            )
        return min(DEFAULT_MAX_CONNECTIONS, room)


def _check_api_key(key: str) -> None:
    """HTTP headers carry ASCII: a key with other characters could never be matched by a
    client, and one with spaces or control characters would not survive the header."""
    if not key.strip():
        raise OptionError("the API key is empty: that would let every request in")
    if not all("!" <= c <= "~" for c in key):
        raise OptionError(
            "the API key must be printable ASCII without spaces (HTTP headers carry ASCII; "
            "clients could never send this one)"
        )
