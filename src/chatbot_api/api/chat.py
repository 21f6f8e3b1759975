"""``POST /v1/chat/completions``: JSON or an SSE stream."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from chatbot_api.api.connection import event_stream, while_connected
from chatbot_api.api.deps import PrincipalDep, ServicesDep, client_address, request_id
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.completions import ChatCompletion

__all__ = ["router"]


# The hot path: a valid request is served by api.fast.FastRoutes, any other by this route.
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
    prepared = chat.prepare(
        body, principal, request_id=request_id(request), raw=await request.body()
    )
    quota = await services.limiter.admit(
        principal, client_address(request), tokens=prepared.reserved_tokens
    )
    try:
        if body.stream:
            # Until its first event a stream is watched as a JSON answer is: a client that
            # leaves while it waits for a slot, its prompt or its grammar stops it there.
            stream = await while_connected(
                request,
                chat.open_stream(prepared),
                deadline=deadline,
                timeout_seconds=settings.request_timeout_seconds,
            )
            try:
                return event_stream(stream, quota, settings, deadline=deadline)
            except BaseException:
                await stream.aclose()  # its generation, and an upstream call, end here
                raise
        completion = await while_connected(
            request,
            chat.complete(prepared),
            deadline=deadline,
            timeout_seconds=settings.request_timeout_seconds,
        )
    except Exception:
        await quota.settle(0)  # refused before generating: nothing was used
        raise
    await quota.settle(completion.usage.total_tokens)
    return Response(
        completion.body,
        media_type="application/json",
        headers={**quota.headers, **completion.headers},
    )
