"""Pure ASGI middleware: security headers on every response, and a cap on request bodies.

One layer for both, so that each request pays for one extra call, not two. A body over the cap
is refused with 413 before it is read when ``Content-Length`` says so, and as soon as the
running count passes the cap when it arrives in chunks. (FastAPI's own ``max_body_size``
answers with a plain-text 413 of Starlette's that bypasses our error envelope.)
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_api.api.error_handlers import error_response
from chatbot_api.errors import RequestTooLargeError

__all__ = ["SECURITY_HEADERS", "HardeningMiddleware"]

#: Sent with every response. The API serves JSON and event streams, never pages to frame or
#: scripts to run; its interactive docs (``/docs``, ``/redoc``) get all but the CSP, which
#: would stop them loading.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-site"),
)
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
_NO_STORE = (b"cache-control", b"no-store")
_DOC_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = list(SECURITY_HEADERS)
        if scope["path"] not in _DOC_PATHS:
            extra.append(_CSP)
        if scope.get("scheme") == "https":
            extra.append(_HSTS)  # browsers ignore it over plain HTTP anyway

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # ASGI header names are lower case.
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append(_NO_STORE)  # answers hold private data: keep them uncached
                message["headers"] = headers + extra
            await send(message)

        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await error_response(RequestTooLargeError())(scope, receive, send_hardened)
            return

        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the route's body read: FastAPI passes an HTTPException on
                    # (anything else becomes a 400) and the app's handler answers 413.
                    raise HTTPException(413)
            return message

        await self.app(scope, receive_capped, send_hardened)
