"""The floor: a bare Starlette app that reads the same request and returns the same JSON.

Whatever it costs is the price of uvicorn, HTTP and JSON parsing; what our server costs
beyond it is our own overhead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def _events(model: str, text: str, usage: dict[str, int] | None) -> list[bytes]:
    """An OpenAI-style stream of ``text``: the role, one chunk per word, the finish, the usage
    when asked for, ``[DONE]``."""
    head: dict[str, object] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}
    head |= {"object": "chat.completion.chunk", "model": model}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word + " "}) for word in text.split()]
    events.append(chunk({}, "stop"))
    if usage is not None:
        events.append(_sse({**head, "choices": [], "usage": usage}))
    return [*events, b"data: [DONE]\n\n"]


async def _each(events: list[bytes]) -> AsyncIterator[bytes]:
    """The events as an async iterator: Starlette runs a plain one in a thread, a cost no
    server of tokens pays."""
    for event in events:
        yield event


def _sse(document: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


async def chat_completions(request: Request) -> Response:
    body = json.loads(await request.body())
    text = body["messages"][-1]["content"]
    words = len(text.split())
    if body.get("stream"):
        asked = (body.get("stream_options") or {}).get("include_usage")
        usage = {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words}
        events = _events(body["model"], text, usage if asked else None)
        return StreamingResponse(_each(events), media_type="text/event-stream")
    answer = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words},
    }
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])
