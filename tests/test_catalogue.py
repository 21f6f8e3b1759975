"""The hostile-input catalogue: every request that once hung, stalled or crashed the server,
and more of its kind, sent to a live server with the bundled model.

For each: the answer is a success or a 4xx in OpenAI's envelope, it comes within a deadline,
and a plain request right after is served normally by the bundled model.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.servers import LiveServer

MODEL = "gemma-3-270m"
#: No request in the catalogue may take longer than this to be answered.
DEADLINE_SECONDS = 60.0


@dataclass(frozen=True)
class Case:
    name: str
    #: Sends the request to the server at the URL given; returns the status and raw body.
    send: Callable[[str], tuple[int, bytes]]
    #: Refused by uvicorn's HTTP parser before our app sees it: a 400 of uvicorn's own text.
    malformed_http: bool = False


def _post(body: Any, headers: dict[str, str] | None = None) -> Callable[[str], tuple[int, bytes]]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}

    def send(base_url: str) -> tuple[int, bytes]:
        answer = httpx.post(
            f"{base_url}/v1/chat/completions",
            content=content,
            headers=headers,
            timeout=DEADLINE_SECONDS,
        )
        return answer.status_code, answer.content

    return send


def _chat(content: Any = "Hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def _schema(schema: Any, **fields: Any) -> dict[str, Any]:
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    return _chat("Answer in JSON.", response_format=response_format, **{"max_tokens": 24, **fields})


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def _raw(request: bytes) -> Callable[[str], tuple[int, bytes]]:
    """Bytes on a socket, for what no HTTP client would send."""

    def send(base_url: str) -> tuple[int, bytes]:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=DEADLINE_SECONDS) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    return send


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


LINKED_LIST = {
    "$defs": {
        "linked_list_node": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "next": {"anyOf": [{"$ref": "#/$defs/linked_list_node"}, {"type": "null"}]},
            },
            "required": ["value", "next"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/linked_list_node",
}

CASES = [
    # Structured output that used to kill local inference or the process.
    Case("enum: []", _post(_schema({"enum": []}))),
    Case("OpenAI's linked list", _post(_schema(LINKED_LIST))),
    Case("pattern ^\\d{5}$", _post(_schema({"type": "string", "pattern": "^\\d{5}$"}))),
    Case("const with a quote", _post(_schema({"const": 'a"b'}))),
    Case(
        "property name with a quote",
        _post(_schema({"type": "object", "properties": {'a"b': {"type": "integer"}}})),
    ),
    Case("maxLength 2000", _post(_schema({"type": "string", "maxLength": 2000}))),
    Case("maxItems 5000", _post(_schema({"type": "array", "maxItems": 5000}))),
    Case(
        "left-recursive anyOf",
        _post(
            _schema(
                {
                    "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "string"}]}},
                    "$ref": "#/$defs/a",
                }
            )
        ),
    ),
    Case("pattern ^[z-a]$ (aborted llama.cpp)", _post(_schema({"pattern": "^[z-a]$"}))),
    Case(
        "enum of 20,000 strings",
        _post(_schema({"enum": [f"s{n}" for n in range(20_000)]}, max_tokens=2)),
    ),
    Case("minimum > maximum", _post(_schema({"type": "integer", "minimum": 9, "maximum": 1}))),
    Case("schema nested 150 deep", _post(_schema(_nested(150)))),
    Case("schema that is not an object", _post(_schema([1, 2]))),
    Case("schema with an external $ref", _post(_schema({"$ref": "http://example.com/s.json"}))),
    Case("regex with 10^6 repetitions", _post(_schema({"pattern": "^a{1000000}$"}))),
    Case("2 MB schema", _post(_schema({"enum": ["x" * 1000] * 2000}))),
    # Strings that cannot be encoded, and other characters.
    Case(
        "lone surrogate in content",
        _post(b'{"model":"gemma-3-270m","messages":[{"role":"user","content":"\\ud800"}]}'),
    ),
    Case(
        "lone surrogate with store",
        _post(
            b'{"model":"gemma-3-270m","store":true,"messages":'
            b'[{"role":"user","content":"a\\udfff"}]}'
        ),
    ),
    Case("NUL in content", _post(_chat("a\u0000b"))),
    Case(
        "invalid UTF-8",
        _post(b'{"model":"gemma-3-270m","messages":[{"role":"user","content":"\xff\xfe"}]}'),
    ),
    Case("chat-template markers in content", _post(_chat("<start_of_turn>model\n<eos>"))),
    # logit_bias keys that are not token ids.
    Case("logit_bias key ²", _post(_chat(logit_bias={"²": 5}))),
    Case("logit_bias key ١٢ (Arabic-Indic digits)", _post(_chat(logit_bias={"١٢": 5}))),
    Case("logit_bias key -1", _post(_chat(logit_bias={"-1": 5}))),
    Case("logit_bias key past the vocabulary", _post(_chat(logit_bias={"99999999999": 5}))),
    Case("logit_bias key of 5,000 digits", _post(_chat(logit_bias={"9" * 5000: 5}))),
    Case(
        "logit_bias value NaN",
        _post(
            b'{"model":"gemma-3-270m","logit_bias":{"5":NaN},'
            b'"messages":[{"role":"user","content":"Hi"}]}'
        ),
    ),
    # Sizes.
    Case("n beyond what the model can ever run", _post(_chat(n=100))),
    Case("max_tokens of 2^31", _post(_chat(max_tokens=2**31))),
    Case("prompt far longer than the context", _post(_chat("word " * 200_000))),
    Case("100,000 levels of nesting", _post(b'{"model":"x","messages":' + b"[" * 100_000)),
    Case("200,000 messages", _post(_chat() | {"messages": [{}] * 200_000})),
    Case("a body that is a bare string", _post(b'"hello"')),
    Case("numbers past 64 bits", _post(_chat(seed=2**70))),
    Case("temperature 2, top_p 0", _post(_chat(temperature=2, top_p=0, max_tokens=4))),
    Case("seed at the edge of 64 bits", _post(_chat(seed=-(2**63), max_tokens=4))),
    Case("unknown model", _post(_chat(model="no-such-model"))),
    Case("100 KB of headers", _post(_chat(max_tokens=2), headers={"x-filler": "a" * 100_000})),
    Case(
        "HTTP request smuggling attempt",
        _raw(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        malformed_http=True,
    ),
    Case("HEAD /health", _raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")),
]


def _assert_envelope_or_success(status: int, body: bytes, name: str) -> None:
    assert status < 500, f"{name}: {status} {body[:300]!r}"
    if status >= 400 and body:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, name
        assert error["message"], name


def _plain_request_served(base_url: str) -> None:
    answer = httpx.post(
        f"{base_url}/v1/chat/completions",
        json=_chat("What is the capital of France?", temperature=0, max_tokens=12),
        timeout=DEADLINE_SECONDS,
    )
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request(llama_server: LiveServer, case: Case) -> None:
    started = time.monotonic()

    status, body = case.send(llama_server.base_url)

    assert time.monotonic() - started < DEADLINE_SECONDS
    if case.malformed_http:
        assert status == 400, body
    else:
        _assert_envelope_or_success(status, body, case.name)
    _plain_request_served(llama_server.base_url)


@pytest.mark.anyio
async def test_200_concurrent_streams(llama_server: LiveServer) -> None:
    """Far more streams than slots and queue places: each is served or refused at once."""
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=DEADLINE_SECONDS, limits=limits) as client:

        async def one(number: int) -> tuple[int, list[str]]:
            body = _chat(f"Count to {number}.", stream=True, max_tokens=8)
            url = f"{llama_server.base_url}/v1/chat/completions"
            async with client.stream("POST", url, json=body) as answer:
                events = [line[6:] async for line in answer.aiter_lines() if line[:6] == "data: "]
                return answer.status_code, events

        started = time.monotonic()
        results = await asyncio.gather(*(one(n) for n in range(200)))
        took = time.monotonic() - started

    served = [events for status, events in results if status == 200]
    refused = [status for status, _ in results if status != 200]
    assert took < DEADLINE_SECONDS
    assert set(refused) <= {503}
    # Every stream that was taken ran to its end.
    assert len(served) >= 4
    assert all(events[-1] == "[DONE]" for events in served)
    assert all("error" not in json.loads(events[-2]) for events in served)
    _plain_request_served(llama_server.base_url)
