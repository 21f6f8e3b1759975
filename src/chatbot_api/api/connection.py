"""A request's work, run while its client waits for it: stopped when the client leaves or
the request's deadline passes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from chatbot_api.errors import ClientClosedRequestError

__all__ = ["while_connected"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def while_connected(
    request: Request, work: Coroutine[Any, Any, T], time_left: float
) -> T | None:
    """Run ``work`` while the client waits for it: None once ``time_left`` passes, and
    :class:`ClientClosedRequestError` if the client leaves first (its generation stopped).
    A stream learns of a departure from sse-starlette once it has begun; before that, and
    a JSON answer throughout, only from here."""
    finished = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
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
    return None


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # pragma: no cover - after the body, servers (uvicorn too) send only a disconnect
