"""A request's lifetime: its work runs while its client waits and its deadline holds, and
a stream ends at its deadline or at shutdown with the stream's own last events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse

from chatbot_api.config import Settings
from chatbot_api.errors import ClientClosedRequestError, DeadlineExceededError
from chatbot_api.security.rate_limit import Quota, settle_after
from chatbot_api.services.chat import ChatStream
from chatbot_api.services.stream_end import end_in_time

__all__ = ["event_stream", "while_connected"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How much longer than our grace period sse-starlette waits before it cancels a stream.
_BACKSTOP_SECONDS = 2.0


async def while_connected(
    request: Request, work: Coroutine[Any, Any, T], *, deadline: float, timeout_seconds: float
) -> T:
    """Run ``work`` while the client waits for it: :class:`DeadlineExceededError` once
    ``deadline`` (event-loop time) passes, :class:`ClientClosedRequestError` if the client
    leaves first; either way its generation is stopped. A stream learns of a departure from
    sse-starlette once it has begun; before that, and a JSON answer throughout, only here."""
    finished = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    time_left = deadline - asyncio.get_running_loop().time()
    try:
        await asyncio.wait({finished, gone}, timeout=time_left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not finished.done():
            finished.cancel()
            await asyncio.wait({finished})
    if not finished.cancelled():
        return finished.result()
    if gone.done() and not gone.cancelled():
        logger.info("client disconnected; generation stopped")
        raise ClientClosedRequestError()
    logger.warning("ended at its deadline; generation stopped")
    raise DeadlineExceededError(timeout_seconds)


def event_stream(
    stream: ChatStream, quota: Quota, settings: Settings, *, deadline: float
) -> EventSourceResponse:
    """The SSE answer for ``stream``: its tokens settled when it ends, cut at ``deadline``
    or once the shutdown's grace period is over."""
    shutdown = anyio.Event()
    grace = settings.shutdown_grace_seconds
    payloads = end_in_time(
        settle_after(stream, quota),
        stream,
        deadline=deadline,
        timeout_seconds=settings.request_timeout_seconds,
        shutdown=shutdown,
        grace_seconds=grace,
    )
    return EventSourceResponse(
        payloads,
        sep="\n",
        ping=settings.sse_ping_seconds,
        headers={**quota.headers, **stream.headers},
        shutdown_event=shutdown,
        # Ours ends the stream with its own last events; sse-starlette's is the backstop.
        shutdown_grace_period=grace + _BACKSTOP_SECONDS,
    )


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # pragma: no cover - after the body, servers (uvicorn too) send only a disconnect
