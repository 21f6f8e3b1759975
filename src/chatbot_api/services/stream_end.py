"""When a stream must end although its model has more to say: at its request's deadline
(``CHATBOT_REQUEST_TIMEOUT_SECONDS``), or when the server shuts down and the grace period is
over.

Until then chunks pass straight through. Each next chunk is awaited only until the nearer of
the two times; a stream still running then is stopped (which stops its generation), its
:class:`~chatbot_api.services.chat.ChatStream` notes why for the log, and the client is told
with the stream's own ending (a chat stream's error event and ``[DONE]``, a response's
``response.failed``), so that it knows the answer was cut short and can retry.

sse-starlette notices the server's shutdown (uvicorn's SIGTERM handling) and sets the
response's ``shutdown_event``; it force-cancels the stream only after its own grace period,
which the route sets a little longer than ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio

from chatbot_api.errors import ChatbotAPIError, DeadlineExceededError, ServerShuttingDownError
from chatbot_api.services.chat import ChatStream

__all__ = ["end_in_time"]

logger = logging.getLogger(__name__)


async def end_in_time(
    payloads: AsyncIterator[Any],
    stream: ChatStream,
    *,
    deadline: float,
    timeout_seconds: float,
    shutdown: anyio.Event,
    grace_seconds: float,
) -> AsyncIterator[Any]:
    """``payloads`` until they end, ``deadline`` (event-loop time) passes, or the grace
    period after ``shutdown`` is over."""
    iterator = aiter(payloads)
    loop = asyncio.get_running_loop()
    shutdown_at: float | None = None
    waiting_for_shutdown = asyncio.ensure_future(shutdown.wait())
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            if step is None:
                step = asyncio.ensure_future(anext(iterator))
            if shutdown_at is None and shutdown.is_set():
                shutdown_at = loop.time() + grace_seconds
            ends = deadline if shutdown_at is None else min(deadline, shutdown_at)
            watched: set[asyncio.Future[Any]] = {step}
            if shutdown_at is None:
                watched.add(waiting_for_shutdown)
            if (left := ends - loop.time()) > 0:
                await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if step.done():
                try:
                    payload = step.result()
                except StopAsyncIteration:
                    return
                step = None
                yield payload
            elif loop.time() >= ends:
                error: ChatbotAPIError
                if shutdown_at is not None and shutdown_at <= deadline:
                    stream.ended = "ended at shutdown"
                    error = ServerShuttingDownError()
                else:
                    stream.ended = "ended at its deadline"
                    error = DeadlineExceededError(timeout_seconds)
                logger.warning("%s; stopping a stream that was still running", stream.ended)
                await _stop(step)
                for payload in stream.ending(error):
                    yield payload
                return
            # else the shutdown began: look again with the grace period's end in view
    finally:
        waiting_for_shutdown.cancel()
        if step is not None:
            await _stop(step)  # the generator cannot be closed while a step runs in it
        if stream.ended is None and shutdown.is_set():
            # Cut after the shutdown began (sse-starlette's backstop, for a client that
            # stopped reading): the server ended it, not the client.
            stream.ended = "ended at shutdown"
        # The stream itself too: a wrapper that never started (its first step cancelled
        # before it ran) does not run its own ``finally`` when closed.
        await stream.aclose()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _stop(step: asyncio.Future[Any]) -> None:
    """Cancel a step and wait until it is over, whatever it ends with."""
    step.cancel()
    await asyncio.wait({step})
    if not step.cancelled():
        step.exception()  # retrieved: it ended otherwise before the cancellation reached it
