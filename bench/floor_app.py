"""The floor: a bare Starlette app that reads the same request and returns the same JSON.

Whatever it costs is the price of uvicorn, HTTP and JSON parsing; what our server costs
beyond it is our own overhead.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def chat_completions(request: Request) -> Response:
    body = json.loads(await request.body())
    text = body["messages"][-1]["content"]
    words = len(text.split())
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
