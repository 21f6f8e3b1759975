"""Pure ASGI middleware: security headers on every response, and limits on what a request
may send.

One layer for all of it, so that each request pays for one extra call, not several:

- headers over :data:`MAX_HEADER_BYTES` in all get 431 (uvicorn's httptools parser sets no
  limit of its own and hands the app a megabyte of headers as readily as a kilobyte);
- a body over the cap gets 413 before it is read when ``Content-Length`` says so, and as soon
  as the running count passes the cap when it arrives in chunks (FastAPI's own
  ``max_body_size`` answers with a plain-text 413 of Starlette's that bypasses our envelope);
- a body still arriving ``body_timeout_seconds`` after the app started reading it gets 408,
  whether it trickles in a byte at a time or stalls: uvicorn waits for it for ever.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_api.api.error_handlers import BodyReadError, error_response
from chatbot_api.api.playground import PAGE_PATHS, STATIC_PREFIX
from chatbot_api.errors import (
    RequestHeadersTooLargeError,
    RequestTimeoutError,
    RequestTooLargeError,
)

__all__ = ["MAX_HEADER_BYTES", "SECURITY_HEADERS", "HardeningMiddleware"]

#: Sent with every response. The API serves JSON and event streams, never pages to frame or
#: scripts to run; its interactive docs (``/docs``, ``/redoc``) get all but the CSP, which
#: would stop them loading.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-site"),
)
#: Names and values of all request headers together. Browsers and the SDKs send about one
#: KiB; proxies commonly stop at 8 to 32 KiB.
MAX_HEADER_BYTES = 64 * 1024

_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
#: The playground's page: its own scripts, styles and API, nothing inline, nothing from
#: elsewhere (an image in a reply's Markdown cannot call out with what the page holds).
_PAGE_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
)
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
_NO_STORE = (b"cache-control", b"no-store")
_REVALIDATE = (b"cache-control", b"no-cache")
_DOC_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_PAGE_PATHS = frozenset(PAGE_PATHS)
_PAGE_FILES = STATIC_PREFIX + "/"


def _header_facts(scope: Scope) -> tuple[int, int | None]:
    """The size of the headers, and the ``Content-Length`` they declare (if readable)."""
    size = 0
    declared = None
    for name, value in scope["headers"]:
        size += len(name) + len(value)
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
    return size, declared


class HardeningMiddleware:
    """``create_app`` passes both limits from the settings; the default deadline is theirs."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, body_timeout_seconds: float = 30.0
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = list(SECURITY_HEADERS)
        path = scope["path"]
        if path in _PAGE_PATHS or path.startswith(_PAGE_FILES):
            extra.append(_PAGE_CSP)
        elif path not in _DOC_PATHS:
            extra.append(_CSP)
        if scope.get("scheme") == "https":
            extra.append(_HSTS)  # browsers ignore it over plain HTTP anyway

        # The page's scripts and styles hold nothing private: kept, checked by ETag each time.
        caching = _REVALIDATE if path.startswith(_PAGE_FILES) else _NO_STORE

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # ASGI header names are lower case.
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append(caching)  # answers hold private data: keep them uncached
                message["headers"] = headers + extra
            await send(message)

        header_bytes, declared = _header_facts(scope)
        if header_bytes > MAX_HEADER_BYTES:
            refusal = error_response(RequestHeadersTooLargeError(MAX_HEADER_BYTES))
            await refusal(scope, receive, send_hardened)
            return
        if declared is not None and declared > self.max_body_bytes:
            await error_response(RequestTooLargeError())(scope, receive, send_hardened)
            return

        received = 0
        deadline: float | None = None
        body_complete = False

        async def receive_guarded() -> Message:
            # Raised inside the route's body read, these pass through FastAPI as they are
            # (anything else becomes a bare 400) and the app's handler answers in the envelope.
            nonlocal received, deadline, body_complete
            if body_complete:  # later calls wait for a disconnect, as long as a stream lasts
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.body_timeout_seconds
            # asyncio's own timeout, not anyio's cancel scope: uvicorn runs on asyncio, and it
            # costs half as much on a path every request with a body takes.
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyReadError(RequestTimeoutError()) from None
            # A client that left arrives as "http.disconnect", with neither "body" nor
            # "more_body": it ends the body here as a last piece would, and passes on.
            body_complete = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyReadError(RequestTooLargeError())
            return message

        await self.app(scope, receive_guarded, send_hardened)
