"""Request ids, the access log, rotated JSON lines and disconnects, read from the log file."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from chatbot_api.middleware import RequestContextMiddleware
from tests.conftest import ServerFactory
from tests.servers import LiveServer


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(path: Path, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = _lines(path) if path.exists() else []
        if any(predicate(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_request_id_is_generated_and_returned(start_server: ServerFactory) -> None:
    server = start_server()

    first = httpx.get(f"{server.base_url}/health")
    second = httpx.get(f"{server.base_url}/health")

    assert first.headers["x-request-id"].startswith("req_")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_incoming_request_id_is_kept_and_a_bad_one_replaced(start_server: ServerFactory) -> None:
    server = start_server()

    kept = httpx.get(f"{server.base_url}/health", headers={"X-Request-ID": "abc-123"})
    replaced = httpx.get(
        f"{server.base_url}/health", headers={"X-Request-ID": "has spaces and <html>"}
    )

    assert kept.headers["x-request-id"] == "abc-123"
    assert replaced.headers["x-request-id"].startswith("req_")


def test_every_line_of_a_request_carries_its_id(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "logs" / "api.log"
    server = start_server(log_file=log_file, log_level="DEBUG")

    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"X-Request-ID": "trace-me"},
        json={
            "model": "echo",
            "messages": [{"role": "user", "content": "a b c"}],
            "unheard_of": 1,
        },
    )

    assert response.status_code == 200
    lines = _wait_for(log_file, lambda line: line.get("logger") == "chatbot_api.access")
    mine = [line for line in lines if line.get("request_id") == "trace-me"]
    assert {line["logger"] for line in mine} >= {"chatbot_api.access", "chatbot_api.schemas.chat"}
    unknown = next(line for line in mine if line["logger"] == "chatbot_api.schemas.chat")
    assert unknown["fields"] == ["unheard_of"]
    access = next(line for line in mine if line["logger"] == "chatbot_api.access")
    assert access["method"] == "POST"
    assert access["path"] == "/v1/chat/completions"
    assert access["status"] == 200
    assert access["model"] == "echo"
    assert (access["prompt_tokens"], access["completion_tokens"]) == (3, 3)
    assert access["duration_ms"] >= 0
    assert {"timestamp", "level", "message"} <= set(access)


def test_unexpected_failure_is_logged_with_its_trace(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(log_file=log_file)

    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "broken-at-start", "messages": [{"role": "user", "content": "x"}]},
    )

    request_id = response.headers["x-request-id"]
    lines = _wait_for(log_file, lambda line: line.get("status") == 500)
    failure = next(line for line in lines if line["logger"] == "chatbot_api.errors")
    assert failure["request_id"] == request_id
    assert "secret internal detail" in failure["exc_info"]
    access = next(line for line in lines if line["logger"] == "chatbot_api.access")
    assert access["status"] == 500


def test_a_client_that_leaves_part_way_through_its_body_is_logged_as_a_400(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(log_file=log_file)

    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nX-Request-ID: left-early\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model": '
        )  # 10 of the 100 bytes it announced, and gone

    lines = _wait_for(log_file, lambda line: line.get("message", "").startswith("POST "))
    mine = [line for line in lines if line.get("request_id") == "left-early"]
    access = next(line for line in mine if line["logger"] == "chatbot_api.access")
    # As nginx logs a client that closed while sending its body: a bad request, not a failure.
    assert access["status"] == 400
    assert not [line for line in mine if line["logger"] == "chatbot_api.errors"]
    assert httpx.get(f"{server.base_url}/health").status_code == 200


async def _two_pieces_then_a_failure(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"the first piece, "
        raise RuntimeError("failed mid-answer")

    return StreamingResponse(pieces(), media_type="text/plain")


def test_a_failure_after_the_answer_started_cuts_it_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Our routes turn their failures into an answer or an error event; this one, of a test
    # app, fails after its status line went out, as a bug would.
    caplog.set_level(logging.INFO, logger="chatbot_api.access")
    app = Starlette(
        routes=[Route("/", _two_pieces_then_a_failure)],
        middleware=[Middleware(RequestContextMiddleware)],
    )

    received: list[bytes] = []
    with (
        LiveServer(app) as server,
        httpx.stream("GET", server.base_url) as answer,
        pytest.raises(httpx.RemoteProtocolError),  # the answer stops short of its end
    ):
        received.extend(answer.iter_raw())

    # The status already sent stands (a second one cannot follow), the body is cut...
    assert answer.status_code == 200
    assert b"".join(received) == b"the first piece, "
    # ...and the operator learns what happened: the trace, and a 500 in the access log.
    failure = next(r for r in caplog.records if r.name == "chatbot_api.errors")
    assert failure.exc_info is not None
    assert "failed mid-answer" in str(failure.exc_info[1])
    access = next(r for r in caplog.records if r.name == "chatbot_api.access")
    assert getattr(access, "status", None) == 500
    # Nothing reached the server itself: no second answer was attempted on the same request.
    assert "Exception in ASGI application" not in caplog.text


def test_log_file_rotates_by_size(start_server: ServerFactory, tmp_path: Path) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(log_file=log_file, log_max_bytes=2048, log_backup_count=2)

    for _ in range(40):
        httpx.get(f"{server.base_url}/health")

    logs = sorted(tmp_path.glob("api.log*"))
    assert [p.name for p in logs] == ["api.log", "api.log.1", "api.log.2"]
    assert all(p.stat().st_size <= 2048 + 1024 for p in logs)


def test_console_format_is_human(
    start_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(log_format="console")

    httpx.get(f"{server.base_url}/health")

    # Rich writes to the terminal's stream; the line is not JSON. The access line is
    # written once the response has gone, so it may trail the client by a moment.
    text = ""
    deadline = time.monotonic() + 10
    while "GET /health 200" not in text and time.monotonic() < deadline:
        output = capsys.readouterr()
        text += output.out + output.err
        time.sleep(0.05)
    assert "GET /health 200" in text
    assert not text.lstrip().startswith("{")


def test_disconnect_stops_generation_and_is_logged(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(log_file=log_file)
    words = " ".join(f"w{i}" for i in range(200))  # 200 tokens at 50 ms each: 10 s in all

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": "echo-slow",
            "messages": [{"role": "user", "content": words}],
            "stream": True,
        },
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # role chunk + a couple of words
    assert any("w1" in line for line in received)

    logs = _wait_for(log_file, lambda line: "disconnected" in line.get("message", ""))
    stopped = [
        line
        for line in logs
        if line.get("request_id") == request_id and "disconnected" in line["message"]
    ]
    assert stopped, "the disconnect was not logged"
    assert stopped[0]["pieces_sent"] < 20
