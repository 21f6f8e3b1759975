"""A fleet of OpenAI-compatible replicas for the gateway tests: each a small real server that
answers chat completions, counts what it is asked, and misbehaves when told to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import LiveServer

__all__ = ["Behaviour", "Replica", "fleet"]

Behaviour = Literal[
    "ok",
    "fail",
    "rate-limited",
    "die-mid-stream",
    "too-long",
    "quote-key",
    "only-pings",
    "bad-utf8",
    "odd-tools",
    "error-mid-stream",
    "error-first",
    "bare-400",
    "json-array",
    "reused-index",
]


class Replica:
    """One deployment. ``hits`` counts the chat completions it was asked for, ``bodies`` keeps
    them; ``behaviour`` and ``delay`` (seconds before answering) may change at any time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.behaviour: Behaviour = "ok"
        self.delay = 0.0
        self.retry_after = "30"
        self.hits = 0
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self.base_url = ""

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.hits += 1
        self.bodies.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.behaviour == "fail":
            return _error(500, "the replica is broken")
        if self.behaviour == "rate-limited":
            return _error(429, "slow down", {"Retry-After": self.retry_after})
        if self.behaviour == "too-long":
            too_long = "This model's maximum context length is 16 tokens."
            return _error(400, too_long, code="context_length_exceeded")
        if self.behaviour == "quote-key":  # a careless upstream, echoing what it was sent
            sent = str(request.headers.get("authorization"))
            body = {"error": {"message": f"bad request; you sent {sent}", "type": "x"}}
            body["error"] |= {"param": sent.removeprefix("Bearer "), "code": sent}
            return JSONResponse(body, status_code=400)
        if self.behaviour == "only-pings":
            return StreamingResponse(_pings(), media_type="text/event-stream")
        if self.behaviour == "bad-utf8":
            return Response(b'{"choices": [], "note": "\xff\xfe"}', media_type="application/json")
        if self.behaviour == "bare-400":
            return Response(b"{}", status_code=400, media_type="application/json")
        if self.behaviour == "json-array":
            return JSONResponse([1, 2, 3])
        if self.behaviour in ("error-mid-stream", "error-first"):
            first = self.behaviour == "error-first"
            return StreamingResponse(
                _erring(body["model"], first=first), media_type="text/event-stream"
            )
        if self.behaviour == "reused-index":
            return StreamingResponse(_reused_index(body["model"]), media_type="text/event-stream")
        if self.behaviour == "odd-tools":
            return StreamingResponse(_odd_tools(body["model"]), media_type="text/event-stream")
        text = f"{self.name}: {body['messages'][-1]['content']}"
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage", False)
            dies = self.behaviour == "die-mid-stream"
            return StreamingResponse(
                _chunks(body["model"], text, usage=usage, dies=dies),
                media_type="text/event-stream",
            )
        return JSONResponse(
            {
                "id": "chatcmpl-replica",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            }
        )


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, code: str = "replica_error"
) -> JSONResponse:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One ``data`` event of a chat-completion stream."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    document = {"id": "chatcmpl-replica", "object": "chat.completion.chunk", "created": 1}
    document |= {"model": model, "choices": [choice]}
    return f"data: {json.dumps(document)}\n\n"


async def _chunks(model: str, text: str, *, usage: bool, dies: bool) -> AsyncIterator[str]:
    yield _chunk(model, {"role": "assistant", "content": ""})
    for word in text.split(" "):
        yield _chunk(model, {"content": word + " "})
        await asyncio.sleep(0.005)
        if dies:
            raise RuntimeError("the replica died mid-stream")
    yield _chunk(model, {}, "stop")
    if usage:
        counts = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        document = {"id": "chatcmpl-replica", "object": "chat.completion.chunk", "created": 1}
        document |= {"model": model, "choices": [], "usage": counts}
        yield f"data: {json.dumps(document)}\n\n"
    yield "data: [DONE]\n\n"


async def _pings() -> AsyncIterator[str]:
    """Keep-alive comments and nothing else, for ever."""
    while True:
        yield ": ping\n\n"
        await asyncio.sleep(0.1)


async def _erring(model: str, *, first: bool) -> AsyncIterator[str]:
    """An error object in the stream: in place of the first chunk, or after one."""
    if not first:
        yield _chunk(model, {"content": "half"})
    yield f"data: {json.dumps({'error': {'message': 'overloaded', 'code': 'busy'}})}\n\n"


async def _reused_index(model: str) -> AsyncIterator[str]:
    """Two tool calls, each numbered 0, told apart by their ids (as some upstreams send)."""
    for call_id, name in (("call_a", "f"), ("call_b", "g")):
        call = {"index": 0, "id": call_id, "type": "function"}
        call["function"] = {"name": name, "arguments": "{}"}
        yield _chunk(model, {"tool_calls": [call]})
    yield "data: [DONE]\n\n"


async def _odd_tools(model: str) -> AsyncIterator[str]:
    """Tool-call pieces of the wrong shapes, then a proper ending."""
    for call in ({"index": "a", "function": "f"}, {"index": 0, "function": {"arguments": 5}}):
        yield _chunk(model, {"tool_calls": [call]})
    yield "data: [DONE]\n\n"


@contextmanager
def fleet(*names: str) -> Iterator[dict[str, Replica]]:
    """Replicas named ``names``, each serving on a port of its own."""
    with ExitStack() as running:
        replicas = {}
        for name in names:
            replica = Replica(name)
            server = running.enter_context(LiveServer(replica.app))
            replica.base_url = f"{server.base_url}/v1"
            replicas[name] = replica
        yield replicas
