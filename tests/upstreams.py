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
from starlette.responses import JSONResponse, Response, StreamingResponse
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
    if behaviour == "fail-500":
        return _error(500, "Upstream exploded.")
    if behaviour == "stall":
        await asyncio.sleep(30)
    if behaviour == "tools":
        if body.get("stream"):
            return StreamingResponse(_tool_call_stream(), media_type="text/event-stream")
        return JSONResponse(_TOOL_CALL_COMPLETION)
    if behaviour == "drop-mid-stream":
        return StreamingResponse(_dropping_stream(), media_type="text/event-stream")
    return _error(404, f"The model '{behaviour}' does not exist")


def fault_upstream() -> Starlette:
    return Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
