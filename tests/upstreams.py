"""A fault-injecting OpenAI-compatible upstream: the outside world the ``openai`` provider
talks to, for the paths a healthy upstream never takes. The upstream model name picks the
behaviour."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["SECRET_UPSTREAM_KEY", "fault_upstream"]

SECRET_UPSTREAM_KEY = "sk-upstream-secret-do-not-leak-0123456789"


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "upstream_code",
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def _tool_call_stream() -> AsyncIterator[str]:
    yield _chunk({"role": "assistant", "content": None})
    yield _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_up_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    )
    for piece in ('{"city": ', '"Paris"}'):
        yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield _chunk({}, "tool_calls")
    yield _chunk({}, None, usage={"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16})
    yield "data: [DONE]\n\n"


_TOOL_CALL_COMPLETION = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_up_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}


_PLAIN_COMPLETION = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "no usage here"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}

#: What a captive portal or a misrouted proxy answers with: a web page, status 200.
_WEB_PAGE = "<html><body><h1>Welcome to the hotel network</h1></body></html>"


async def _text_stream(answer: str) -> AsyncIterator[str]:
    yield _chunk({"role": "assistant", "content": ""})
    for word in answer.split(" "):
        yield _chunk({"content": f"{word} "})
    yield _chunk({}, "stop")
    yield "data: [DONE]\n\n"


def _completion_of(answer: str) -> dict[str, Any]:
    completion = json.loads(json.dumps(_PLAIN_COMPLETION))
    completion["choices"][0]["message"]["content"] = answer
    return dict(completion)


async def _event_stream_regardless() -> AsyncIterator[str]:
    yield _chunk({"role": "assistant", "content": "streamed anyway"})
    yield _chunk({}, "stop")
    yield "data: [DONE]\n\n"


async def _empty_stream() -> AsyncIterator[str]:
    yield "data: [DONE]\n\n"


async def _dropping_stream() -> AsyncIterator[str]:
    yield _chunk({"role": "assistant", "content": ""})
    yield _chunk({"content": "half an ans"})
    await asyncio.sleep(0.05)
    raise RuntimeError("the upstream dropped the connection")


async def _completions(request: Request) -> Response:
    body = await request.json()
    behaviour = body["model"]
    if behaviour == "bad-request":
        return _error(400, "Upstream says: 'temperature' is out of range.")
    if behaviour == "unauthorized":
        return _error(401, f"Incorrect API key provided: {SECRET_UPSTREAM_KEY}.")
    if behaviour == "rate-limited":
        return _error(429, "Slow down.", **{"Retry-After": "7"})
    if behaviour == "rate-limited-ms":  # OpenAI's own header, finer than Retry-After
        return _error(429, "Slow down.", **{"retry-after-ms": "2500", "Retry-After": "9"})
    if behaviour == "rate-limited-date":  # RFC 9110 allows a date instead of seconds
        return _error(429, "Slow down.", **{"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"})
    if behaviour == "rate-limited-inf":
        return _error(429, "Slow down.", **{"Retry-After": "inf"})
    if behaviour == "rate-limited-nan":
        return _error(429, "Slow down.", **{"retry-after-ms": "nan", "Retry-After": "4"})
    if behaviour == "rate-limited-vague":
        return _error(429, "Slow down.")
    if behaviour == "web-page":
        return HTMLResponse(_WEB_PAGE)
    if behaviour == "streams-regardless":
        return StreamingResponse(_event_stream_regardless(), media_type="text/event-stream")
    if behaviour == "no-usage":
        return JSONResponse(_PLAIN_COMPLETION)
    if behaviour == "empty-stream":
        return StreamingResponse(_empty_stream(), media_type="text/event-stream")
    if behaviour == "fail-500":
        return _error(500, "Upstream exploded.")
    if behaviour == "stall":  # past the 1 s timeout of the models that call it
        await asyncio.sleep(5)
    if behaviour == "tools" and body["messages"][-1]["role"] == "tool":
        # The round trip's second half: the tool's result comes back, the answer uses it.
        answer = f"The weather in Paris: {body['messages'][-1]['content']}."
        if body.get("stream"):
            return StreamingResponse(_text_stream(answer), media_type="text/event-stream")
        return JSONResponse(_completion_of(answer))
    if behaviour == "tools":
        if body.get("stream"):
            return StreamingResponse(_tool_call_stream(), media_type="text/event-stream")
        return JSONResponse(_TOOL_CALL_COMPLETION)
    if behaviour == "drop-mid-stream":
        return StreamingResponse(_dropping_stream(), media_type="text/event-stream")
    return _error(404, f"The model '{behaviour}' does not exist")


def fault_upstream() -> Starlette:
    return Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
