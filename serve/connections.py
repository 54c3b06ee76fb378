"""What uvicorn does not bound on its own: how long a request may take to arrive, and how
many connections may be open.

The HTTP parser is uvicorn's h11 protocol, chosen for `h11_max_incomplete_event_size`:
httptools has no limit on the request line and headers (a 64 MB header was read whole),
h11 answers 400 and closes once they pass the limit (server.py sets 64 KiB). This module
subclasses that protocol with two guards, the way peers mitigate slow-HTTP attacks
(uvicorn has no request timeout: its keep-alive timer restarts on every byte received):

- **Request deadline.** From the moment a connection waits for a request (it opened, or
  its last response ended), the whole request, headers and body, must arrive within
  `request_timeout` seconds. A connection that sent nothing by then is closed; one that
  sent part of a request gets a JSON 408 and is closed. Responses are not timed: the
  deadline ends when the request has arrived. A client that stops reading its response,
  though, holds the server's memory for it: once the socket's write buffer stays full for
  `request_timeout` seconds, the connection is closed.
- **Connection cap.** At `max_connections` open connections (kept below the process's file
  descriptor limit, see `ServeConfig.connection_limit`), a new connection makes room by closing
  the one that has waited longest for its request (idle, or sending slowly): a flood of
  idle or slow connections cannot lock out clients that send whole requests. If every
  connection has a request being answered, the new one gets a JSON 503 and is closed.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from albert_onnx.serve.api import ApiError, error_body

RECEIVING = (h11.IDLE, h11.SEND_BODY)  # h11's states of a request not yet whole


def raw_response(status: int, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answering outside the app
    (before a request has arrived, the app cannot answer)."""
    payload = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + payload


def guarded_protocol(max_connections: int, request_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request deadline and a connection cap."""

    class GuardedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _stalled: asyncio.TimerHandle | None = None  # the write buffer is full since then
        waiting_since: float | None = None  # when it began waiting for a request

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            crowded = len(self.connections) >= max_connections
            super().connection_made(transport)
            if crowded and not self._make_room():
                error = ApiError(
                    "unavailable",
                    f"the server has {max_connections:,} connections open, each with a "
                    "request being answered; retry shortly",
                    headers={"Retry-After": "1"},
                )
                self._refuse(error)
                return
            self._arm()

        def _make_room(self) -> bool:
            """Close the connection that has waited longest for its request, if any."""
            waiting = [
                c for c in self.connections
                if c is not self and isinstance(c, GuardedProtocol) and c.waiting_since is not None
            ]  # fmt: skip
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
            oldest._give_up(
                ApiError(
                    "unavailable",
                    "closed to make room for a new connection: this one had not sent a whole "
                    "request and the server is at its connection limit",
                )
            )
            return True

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state not in RECEIVING:  # the request is whole
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state in RECEIVING:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._unstall()
            super().connection_lost(exc)

        def pause_writing(self) -> None:  # the client is not reading what it is sent
            super().pause_writing()
            if self._stalled is None:
                self._stalled = self.loop.call_later(request_timeout, self.transport.abort)

        def resume_writing(self) -> None:
            self._unstall()
            super().resume_writing()

        def _unstall(self) -> None:
            if self._stalled is not None:
                self._stalled.cancel()
                self._stalled = None

        def _arm(self) -> None:
            if self._deadline is None:
                self.waiting_since = self.loop.time()
                self._deadline = self.loop.call_later(request_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self.waiting_since = None, None

        def _timed_out(self) -> None:
            self._deadline = None
            self._give_up(
                ApiError(
                    "request_timeout",
                    f"the request did not arrive whole within {request_timeout:g} s",
                )
            )

        def _give_up(self, error: ApiError) -> None:
            """Stop waiting for this connection's request: answer ERROR if part of a
            request came, close either way. An app waiting for the body sees a disconnect."""
            self._disarm()
            if self.transport.is_closing():
                return
            started = self.conn.their_state is not h11.IDLE or bool(self.conn.trailing_data[0])
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:
                    started = False  # the app is answering: nothing more may be written
                cycle.disconnected = True
                cycle.message_event.set()
            if started:
                self._refuse(error)
            else:
                self.transport.close()

        def _refuse(self, error: ApiError) -> None:
            path = self.scope["path"] if self.cycle is not None else None
            self.transport.write(raw_response(error.status, error_body(path, error), error.headers))
            self.transport.close()

    return GuardedProtocol
