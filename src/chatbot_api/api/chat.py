"""``POST /v1/chat/completions``: JSON or an SSE stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from chatbot_api.api.deps import PrincipalDep, ServicesDep, client_address, request_id
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.api.responses import error_responses
from chatbot_api.errors import ClientClosedRequestError, DeadlineExceededError
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.completions import ChatCompletion
from chatbot_api.security.rate_limit import settle_after
from chatbot_api.services.stream_end import end_in_time

__all__ = ["router"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How much longer than our grace period sse-starlette waits before it cancels a stream.
_BACKSTOP_SECONDS = 2.0

router = APIRouter(prefix="/v1", tags=["chat"], route_class=JSONBodyRoute)

_STREAM_DOC = {
    "description": (
        "With `stream: true`: Server-Sent Events. Each event is `data: <chat.completion.chunk "
        "JSON>` and a blank line; the first chunk of each choice carries the role, the last "
        "its `finish_reason`; with `stream_options.include_usage` a final chunk with empty "
        "`choices` carries `usage`. The stream ends with `data: [DONE]`. An error after the "
        'stream started arrives as `data: {"error": {...}}`.'
    ),
    "content": {
        "text/event-stream": {
            "example": (
                'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
                '"model":"echo","choices":[{"index":0,"delta":{"role":"assistant",'
                '"content":""},"logprobs":null,"finish_reason":null}]}\n\n'
                "data: [DONE]\n\n"
            )
        }
    },
}


@router.post(
    "/chat/completions",
    summary="Create a chat completion",
    response_model=ChatCompletion,
    responses={200: _STREAM_DOC, **error_responses(400, 404, 408, 413, 502, 503, 504)},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, principal: PrincipalDep
) -> Response:
    """OpenAI's chat completion: a `chat.completion` object, or a stream of chunks.

    The answer carries OpenAI's `x-ratelimit-*` headers for the caller's requests and tokens
    per minute; the tokens are reserved up front (prompt plus maximum) and settled after.
    """
    settings = services.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_seconds
    chat = services.chat
    prepared = chat.prepare(body, principal, request_id=request_id(request))
    quota = await services.limiter.admit(
        principal, client_address(request), tokens=prepared.reserved_tokens
    )
    try:
        if body.stream:
            # Until its first token a stream is watched as a JSON answer is: a client that
            # leaves while it waits for a slot, its prompt or its grammar stops it there.
            stream = await _while_connected(
                request, chat.open_stream(prepared), deadline - loop.time()
            )
            if stream is None:
                raise DeadlineExceededError(settings.request_timeout_seconds)
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
                headers=quota.headers,
                shutdown_event=shutdown,
                # Ours ends the stream with an error event; sse-starlette's is the backstop.
                shutdown_grace_period=grace + _BACKSTOP_SECONDS,
            )
        completion = await _while_connected(
            request, chat.complete(prepared), deadline - loop.time()
        )
        if completion is None:
            raise DeadlineExceededError(settings.request_timeout_seconds)
    except Exception:
        await quota.settle(0)  # refused before generating: nothing was used
        raise
    await quota.settle(completion.usage.total_tokens)
    return Response(completion.body, media_type="application/json", headers=quota.headers)


async def _while_connected(
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
