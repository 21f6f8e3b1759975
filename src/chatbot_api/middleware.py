"""Pure ASGI middleware: request ids, the access log and the last-resort 500.

Written against raw ASGI (no ``BaseHTTPMiddleware``) so that a streamed body passes through
chunk by chunk, never buffered.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_api import metrics
from chatbot_api.context import RequestContext, request_context
from chatbot_api.errors import internal_error

__all__ = ["REQUEST_ID_HEADER", "REQUEST_ID_STATE", "RequestContextMiddleware"]

REQUEST_ID_HEADER = "x-request-id"
#: Where the request's id waits in ``request.state`` for the routes.
REQUEST_ID_STATE = "request_id"
# A client's id is echoed into headers and logs, so only a short, plain token is trusted.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

logger = logging.getLogger("chatbot_api.access")
error_logger = logging.getLogger("chatbot_api.errors")


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    # Not a secret, only unique: 128 random bits without uuid4's system call per request.
    return f"req_{random.getrandbits(128):032x}"


@functools.cache
def _counted(template: str, method: str, model: str, status: int) -> Any:
    """The request counter's child for these labels: looked up once (``labels()`` takes a
    lock and checks its arguments on every call), as many as the metric has series."""
    return metrics.REQUESTS.labels(template, method, model, status)


@functools.cache
def _timed(template: str, method: str) -> Any:
    return metrics.REQUEST_SECONDS.labels(template, method)


class RequestContextMiddleware:
    """Gives each HTTP request an id (``X-Request-ID``) and writes one access-log line for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = RequestContext(request_id=_incoming_request_id(scope))
        token = request_context.set(context)
        # The routes read the id from the request itself (``api.deps.request_id``).
        scope.setdefault("state", {})[REQUEST_ID_STATE] = context.request_id
        header = (REQUEST_ID_HEADER.encode(), context.request_id.encode())
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_logger.exception("unhandled error while serving the request")
            if not response_started:
                error = internal_error(context.request_id)
                body = error.to_body().model_dump_json().encode()
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": error.status_code,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            status = 500
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            _counted(template, scope["method"], context.model or "", status).inc()
            _timed(template, scope["method"]).observe(elapsed)
            logger.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "model": context.model,
                    "stream": context.stream,
                    "deployment": context.deployment,
                    "prompt_tokens": context.prompt_tokens,
                    "completion_tokens": context.completion_tokens,
                },
            )
            request_context.reset(token)
