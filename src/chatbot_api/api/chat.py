"""``POST /v1/chat/completions``: JSON or an SSE stream."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sse_starlette import EventSourceResponse

from chatbot_api.api.deps import ServicesDep
from chatbot_api.api.responses import error_responses
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.completions import ChatCompletion

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["chat"])

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
    responses={200: _STREAM_DOC, **error_responses(400, 404, 500)},
)
async def create_chat_completion(body: ChatCompletionRequest, services: ServicesDep) -> Response:
    """OpenAI's chat completion: a `chat.completion` object, or a stream of chunks."""
    chat = services.chat
    prepared = chat.prepare(body)
    if body.stream:
        stream = await chat.open_stream(prepared)
        return EventSourceResponse(stream, sep="\n", ping=services.settings.sse_ping_seconds)
    return Response(await chat.complete(prepared), media_type="application/json")
