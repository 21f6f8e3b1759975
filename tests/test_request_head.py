"""A request's head is bounded in size and time by the server ``chatbot-api serve`` runs:
headers that never end, or arrive a line at a time, get an answer in the envelope and a closed
connection instead of holding memory and a connection for ever."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import ServerProcess, clean_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    scratch = tmp_path_factory.mktemp("head")
    models = scratch / "models.toml"
    models.write_text('[models."echo-slow"]\nprovider = "echo"\ntoken_delay = 0.05\n')
    env = clean_env(
        CHATBOT_MODELS_FILE=str(models),
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{scratch / 'head.db'}",
        CHATBOT_BODY_TIMEOUT_SECONDS="1",
    )
    with ServerProcess(env, scratch / "output.txt") as running:
        yield running


def _answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes the connection; the status, headers and body."""
    conn.settimeout(10)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def _send_until_refused(conn: socket.socket, piece: bytes, limit: int) -> int:
    sent = 0
    try:
        while sent < limit:
            conn.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_headers_that_never_end_are_a_431_not_a_growing_worker(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        # 8 KB header lines, never the blank line that ends them; 64 MB would be sent if the
        # server read on.
        sent = _send_until_refused(conn, b"X-Pad: " + b"a" * 8000 + b"\r\n", 64 * 1024 * 1024)
        status, headers, body = _answer(conn)

    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert sent < 64 * 1024 * 1024
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_one_endless_header_line_is_a_431(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        _send_until_refused(conn, b"a" * 65536, 64 * 1024 * 1024)
        status, _, body = _answer(conn)

    assert status == 431
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_headers_sent_a_line_at_a_time_are_a_408(server: ServerProcess) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        try:
            for n in range(20):  # a line every 0.3 s: the head would take 6 s
                conn.sendall(f"X-Drip-{n}: x\r\n".encode())
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = _answer(conn)

    assert status == 408
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert "headers" in error["message"]
    assert time.monotonic() - started < 6


def test_a_connection_that_never_speaks_is_closed(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        status, _, _ = _answer(conn)

    assert status == 408


def test_kept_alive_requests_and_a_large_body_are_untouched(server: ServerProcess) -> None:
    # Several requests on one connection, each well inside the bounds, one with a body far
    # larger than the head's limit that arrives in the same pieces as its head.
    big = {"model": "echo", "messages": [{"role": "user", "content": "word " * 100_000}]}
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(0.4)  # together longer than the head's time, each far inside it
        answer = client.post("/v1/chat/completions", json=big)

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"].startswith("word word")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS handshake
    ],
    ids=["bad chunk size", "two Content-Lengths", "TLS"],
)
def test_what_is_not_http_is_a_400_in_the_envelope(
    server: ServerProcess, request_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(request_bytes)
        status, headers, body = _answer(conn)

    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "invalid_http"


def _post(payload: dict[str, object]) -> bytes:
    body = json.dumps(payload).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


#: A stream of 200 pieces, 10 s at 0.05 s each.
_SLOW_STREAM = _post(
    {
        "model": "echo-slow",
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(f"w{n}" for n in range(200))}],
    }
)


def test_a_slow_head_pipelined_behind_a_stream_closes_the_connection_without_a_408_inside_it(
    server: ServerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        # The next request right behind it, never finished.
        conn.sendall(_SLOW_STREAM + b"GET /health HTTP/1.1\r\nHost: t\r\n")
        conn.settimeout(30)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk

    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: " in received
    assert b"[DONE]" not in received  # cut at the head's deadline, long before its end
    assert b"HTTP/1.1 408" not in received


def test_bytes_that_are_not_http_behind_a_running_stream_close_it_without_a_400_inside_it(
    server: ServerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(_SLOW_STREAM)
        conn.settimeout(30)
        received = b""
        while b"data: " not in received:
            received += conn.recv(65536)
        conn.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # mid-stream: not HTTP
        while chunk := conn.recv(65536):
            received += chunk

    assert received.startswith(b"HTTP/1.1 200")
    assert b"[DONE]" not in received
    assert b"HTTP/1.1 400" not in received


def test_trailers_past_the_headers_bound_are_a_431(server: ServerProcess) -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    trailers = b"".join(f"X-Trailer-{n}: {'t' * 100}\r\n".encode() for n in range(1000))
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n"
        )
        time.sleep(0.5)  # the request is under way, its headers counted, when they arrive
        _send_until_refused(conn, trailers, len(trailers))
        status, _, answer = _answer(conn)

    assert status == 431
    assert json.loads(answer)["error"]["code"] == "headers_too_large"


def test_a_few_trailers_are_dropped_and_the_request_served(server: ServerProcess) -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        status, _, answer = _answer(conn)

    assert status == 200
    assert json.loads(answer)["choices"][0]["message"]["content"] == "hi"
