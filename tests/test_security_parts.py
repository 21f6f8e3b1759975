"""The security pieces that need no server: reset formatting, counters, the hardening layer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatbot_api.security.auth import is_loopback
from chatbot_api.security.counters import InProcessCounters
from chatbot_api.security.hardening import HardeningMiddleware
from chatbot_api.security.rate_limit import format_reset


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (0.0174, "18ms"),
        (0.9995, "1000ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.1234, "59.123s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_resets_are_written_as_openai_writes_them(seconds: float, written: str) -> None:
    assert format_reset(seconds) == written


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("api", False)],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.anyio
async def test_counters_add_and_forget_expired_windows() -> None:
    counters = InProcessCounters()

    admitted = await counters.admit(
        "a", "b", requests=2, tokens=5, request_limit=0, token_limit=0, expiry=0
    )
    assert (admitted.requests, admitted.tokens, admitted.admitted) == (2, 5, True)
    assert await counters.incr("a", -1, expiry=0) == 1
    await asyncio.sleep(1.05)  # past the sweep interval: both counters have expired

    assert await counters.incr("a", 1, expiry=60) == 1
    await counters.aclose()


async def _echo_body(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def _hardened(max_body_bytes: int = 100) -> HardeningMiddleware:
    app = Starlette(routes=[Route("/", _echo_body, methods=["POST", "GET"])])
    return HardeningMiddleware(app, max_body_bytes=max_body_bytes)


@pytest.mark.anyio
async def test_https_answers_ask_browsers_to_stay_on_https() -> None:
    transport = httpx.ASGITransport(app=_hardened())
    async with httpx.AsyncClient(transport=transport) as client:
        secure = await client.get("https://api.example/")
        plain = await client.get("http://api.example/")

    assert secure.headers["strict-transport-security"].startswith("max-age=")
    assert "strict-transport-security" not in plain.headers


@pytest.mark.anyio
async def test_an_unreadable_content_length_is_judged_by_the_bytes_that_arrive() -> None:
    sent: list[dict[str, object]] = []
    body = iter([b"x" * 60, b"y" * 60])

    async def receive() -> dict[str, object]:
        chunk = next(body)
        return {"type": "http.request", "body": chunk, "more_body": chunk.startswith(b"x")}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"content-length", b"not-a-number")],
        "scheme": "http",
        "server": ("api.example", 80),
        "client": ("127.0.0.1", 1234),
    }
    await _hardened()(scope, receive, send)  # type: ignore[arg-type]  # a plain-dict ASGI call

    # Refused once 120 bytes had arrived, by the app's handler for the HTTPException(413).
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413


@pytest.mark.anyio
async def test_lifespan_passes_through_untouched() -> None:
    messages: Iterator[dict[str, object]] = iter(
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await _hardened()({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]  # plain dicts

    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
