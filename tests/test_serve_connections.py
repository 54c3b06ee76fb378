"""One client's connections cannot stall or exhaust the server: headers are bounded, a
request must arrive within the request timeout, and at the connection cap an idle or slow
connection makes room for one that sends whole requests. Live servers on 127.0.0.1, raw
sockets as the attacker's tool, bounded loops."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import pytest

from conftest import real_texts
from live_server import TIMEOUT, serving


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    chunks = []
    try:
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_response(conn: socket.socket) -> bytes:
    """One whole response on a kept-alive connection (by its content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def body_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.fixture(scope="module")
def server(english_export):
    with serving(english_export, "--provider", "cpu", "--request-timeout", "1.5") as running:
        yield running


def test_a_header_over_64_kib_is_refused_without_reading_it(server):
    """A 64 MB header was read whole (and kept 60 MB of memory); now the server answers
    400 and closes once the request line and headers pass 64 KiB."""
    before = server.rss_mb()
    refused = 0
    for _ in range(3):
        with server.connect() as conn:
            conn.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                for _ in range(1024):  # up to 64 MB, a megabyte-long header line at a time
                    conn.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                refused += 1  # closed by the server long before 64 MB
                continue
            response = read_all(conn)
            refused += response.startswith(b"HTTP/1.1 400")
    assert refused == 3
    assert server.rss_mb() - before < 16
    assert server.post("/embed", json={"inputs": "still fine"}).status_code == 200


def test_a_connection_that_sends_nothing_is_closed_after_the_request_timeout(server):
    with server.connect() as conn:
        started = time.monotonic()
        assert read_all(conn) == b""  # closed without a word: nothing was asked
        assert 1.4 < time.monotonic() - started < 10


def test_a_half_sent_request_gets_408(server):
    with server.connect() as conn:
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
        response = read_all(conn)
    assert response.startswith(b"HTTP/1.1 408")
    assert "did not arrive whole within 1.5 s" in body_of(response)["error"]["message"]


def test_a_body_trickling_a_byte_at_a_time_gets_408(server):
    with server.connect() as conn:
        conn.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        try:
            for byte in b'{"inputs": "slow"':
                conn.sendall(bytes([byte]))
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_all(conn)
    assert response.startswith(b"HTTP/1.1 408")
    assert body_of(response)["error_type"] == "Validation"  # TEI's error shape on /embed
    assert server.post("/embed", json={"inputs": "still fine"}).status_code == 200


def test_a_client_gone_in_the_middle_of_its_body_harms_nothing(server):
    before = server.metric('albert_onnx_errors_total{kind="client_gone"}')
    with server.connect() as conn:
        conn.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inp'
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while server.metric('albert_onnx_errors_total{kind="client_gone"}') == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.post("/embed", json={"inputs": "still fine"}).status_code == 200


def test_keep_alive_connections_are_reused_and_bounded(server):
    with server.connect() as conn:
        for _ in range(3):  # three requests on one connection
            body = b'{"inputs": "again"}'
            conn.sendall(
                b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert read_response(conn).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_all(conn) == b""  # then idle: closed by the server
        assert time.monotonic() - started < 10


def limit_open_files(count: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


def test_at_the_connection_cap_idle_connections_make_room_for_whole_requests(english_export):
    """Under `ulimit -n 200`, 250 idle connections made every other request fail with a
    reset: now the cap sits below the limit, and the longest-waiting idle connection is
    closed to make room."""
    from live_server import start, stop

    server = start(english_export, "--provider", "cpu", preexec_fn=limit_open_files(200))
    idle: list[socket.socket] = []
    try:
        server.wait_ready()
        assert server.get("/info").json()["max_connections"] == 200 - 64
        for _ in range(250):
            idle.append(server.connect())
            if len(idle) % 50 == 0:  # normal requests keep working all along
                assert server.post("/embed", json={"inputs": "hello"}).status_code == 200
        assert server.post("/embed", json={"inputs": "after the flood"}).status_code == 200
        closed = sum(closed_by_server(conn) for conn in idle)
        assert closed >= 250 - 136  # the oldest idle connections made room
        assert server.process.poll() is None
    finally:
        for conn in idle:
            conn.close()
        assert stop(server) == 0


def closed_by_server(conn: socket.socket) -> bool:
    """Whether the server has closed CONN (without waiting for it)."""
    conn.settimeout(0.01)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(english_export):
    busy = [" ".join(real_texts()[::2][:8])] * 256
    with serving(english_export, "--provider", "cpu", "--max-connections", "2",
                 "--max-queue-tokens", "400000") as server:  # fmt: skip
        request = {"json": {"inputs": busy}}
        holders = [
            threading.Thread(target=server.post, args=("/embed",), kwargs=request) for _ in range(2)
        ]
        for holder in holders:
            holder.start()
        time.sleep(0.5)  # both requests are being answered
        with server.connect() as conn:
            response = read_all(conn)
        for holder in holders:
            holder.join(TIMEOUT)
        assert response.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in response.lower()
        assert "connections open" in body_of(response)["error"]["message"]


def test_a_client_that_stops_reading_its_response_is_disconnected(english_export):
    """A 10 MB answer to a client that reads nothing: once the kernel's buffers are full the
    server would hold the rest for as long as the client likes; it waits one request
    timeout, then closes the connection."""
    texts = [f"text number {i}" for i in range(8192)]
    with serving(english_export, "--provider", "cpu", "--request-timeout", "1.5",
                 "--max-inputs-per-request", "8192") as server:  # fmt: skip
        body = json.dumps({"input": texts, "encoding_format": "float"}).encode()
        with socket.socket() as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.connect(server.address)
            conn.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(4)  # embedded and answered by now; nothing read
            conn.settimeout(TIMEOUT)
            received = read_all(conn)
        assert received.startswith(b"HTTP/1.1 200")
        length = int(received.split(b"content-length: ")[1].split(b"\r\n")[0])
        assert len(received.split(b"\r\n\r\n", 1)[1]) < length  # cut, not delivered whole
        assert server.post("/embed", json={"inputs": "still fine"}).status_code == 200
