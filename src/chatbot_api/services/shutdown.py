"""Streams during a graceful shutdown: finish within the grace period, or end with an error.

sse-starlette notices the server's shutdown (uvicorn's SIGTERM handling) and sets the
response's ``shutdown_event``; it force-cancels the stream only after its own grace period,
which the route sets a little longer than ours. Until the shutdown, chunks pass straight
through; after it, each next chunk is awaited only until our deadline, and a stream still
running then is stopped and ends with an error event and ``[DONE]``, so that the client
knows it was cut short and can retry elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio

from chatbot_api.errors import ServerShuttingDownError

__all__ = ["end_at_shutdown"]

logger = logging.getLogger(__name__)


async def end_at_shutdown(
    stream: AsyncIterator[str], shutdown: anyio.Event, grace_seconds: float
) -> AsyncIterator[str]:
    iterator = aiter(stream)
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    try:
        while True:
            timeout = None
            if shutdown.is_set():
                if deadline is None:
                    deadline = loop.time() + grace_seconds
                timeout = max(0.0, deadline - loop.time())
            try:
                payload = await asyncio.wait_for(anext(iterator), timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                logger.warning("shutdown grace period over; ending a stream that was still running")
                yield ServerShuttingDownError().to_body().model_dump_json()
                yield "[DONE]"
                return
            yield payload
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
