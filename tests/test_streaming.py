"""Streaming: what the SDK sees, and the bytes on the wire."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import SdkFactory, ServerFactory
from tests.servers import LiveServer
from tests.spec import validate

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four"}]


def _events(raw: str) -> list[str]:
    """Split an SSE body into its ``data`` payloads, checking the framing of each event."""
    assert raw.endswith("\n\n"), "every event ends with a blank line"
    payloads = []
    for event in raw[:-2].split("\n\n"):
        lines = event.split("\n")
        data = [line for line in lines if not line.startswith(":")]
        assert len(data) == 1, event
        assert data[0].startswith("data: "), event
        payloads.append(data[0].removeprefix("data: "))
    return payloads


def _stream(server: LiveServer, **body: Any) -> httpx.Response:
    payload = {"model": "echo", "messages": HELLO, "stream": True, **body}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=payload)


def test_sdk_streams_role_then_content_then_finish(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="echo", messages=HELLO, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].delta.role is None for chunk in chunks[1:])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "one two three four"
    assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1


def test_usage_chunk_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
        )
    )

    *content, last = chunks
    assert all(chunk.usage is None for chunk in content)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 3)
    assert content[-1].choices[0].finish_reason == "length"


def test_wire_format_without_usage(server: LiveServer) -> None:
    response = _stream(server)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = _events(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_wire_format_with_usage(server: LiveServer) -> None:
    payloads = _events(_stream(server, stream_options={"include_usage": True}).text)

    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


def test_n_streams_each_choice_with_its_role_and_finish(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="echo", messages=HELLO, n=2, stream=True))

    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == "one two three four"
        assert mine[-1].finish_reason == "stop"


def test_stop_in_a_stream_never_leaks(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="echo", messages=HELLO, stream=True, stop="o th")
    )

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one tw"


@pytest.mark.anyio
async def test_async_stream(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="echo-slow", messages=HELLO, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]

    assert "".join(pieces) == "one two three four"


def test_error_after_the_stream_started_is_an_event(server: LiveServer) -> None:
    response = _stream(server, model="broken-mid-stream")

    payloads = _events(response.text)
    assert response.status_code == 200
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])
    validate("ErrorResponse", error)
    assert error["error"]["type"] == "server_error"
    assert "secret internal detail" not in response.text
    assert response.headers["x-request-id"] in error["error"]["message"]
    content = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-2]]
    assert content == ["piece0 ", "piece1 "]


def test_api_error_mid_stream_keeps_its_code(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="overloaded-mid-stream", messages=HELLO, stream=True
    )

    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass

    assert caught.value.code == "server_overloaded"
    assert "overloaded" in caught.value.message


def test_a_stored_stream_that_fails_at_once_gives_its_store_place_back(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    # One place in the store's queue: a failure that kept it would refuse every later store.
    server = start_server(store_queue_size=1)
    body = {"model": "broken-at-start", "stream": True, "store": True, "messages": HELLO}

    failures = [
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body).status_code
        for _ in range(2)
    ]
    reply = sdk(server, "sk-anything").chat.completions.create(
        model="echo", messages=HELLO, store=True
    )

    assert failures == [500, 500]  # before any byte of the stream: a status, not an event
    assert reply.choices[0].message.content == "one two three four"
