"""The OpenAI Agents SDK as our client: an agent on its default model, OpenAI's Responses API,
pointed at our server and nothing else (no tracing, no key of OpenAI's)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import ResponseInputMessageItem, ResponseTextDeltaEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chatbot_api.app import create_app
from tests.conftest import make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio

#: What the tool-calling upstream's ``get_weather`` call asks for.
CALL_ID = "call_weather_1"
CITY = "Lyon"


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-agents",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {
        "id": "chatcmpl-agents",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def _pieces(text: str) -> list[str]:
    """How the upstream streams a text: a word at a time, each with the spaces after it."""
    return re.findall(r"\S+\s*", text)


async def _stream_of(message: dict[str, Any], finish: str) -> AsyncIterator[str]:
    """The chunks of ``message``: the role, its text word by word or its tool calls, the
    finish, the usage."""
    yield _chunk({"role": "assistant", "content": None if message.get("tool_calls") else ""})
    for piece in _pieces(message.get("content") or ""):
        yield _chunk({"content": piece})
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        head = {"name": function["name"], "arguments": ""}
        opening = {"index": index, "id": call["id"], "type": "function", "function": head}
        yield _chunk({"tool_calls": [opening]})
        arguments = function["arguments"]
        for piece in (arguments[:5], arguments[5:]):  # arguments arrive in pieces
            yield _chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield _chunk({}, finish)
    yield _chunk({}, None, usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
    yield "data: [DONE]\n\n"


def _answer(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The upstream model's reply to a chat request: the model name picks the behaviour.

    ``weather``: a ``get_weather`` call for a user's question; once the tool's output is the
    last message, a sentence holding it. ``recall``: every user message it was given, in order.
    """
    messages: list[dict[str, Any]] = body["messages"]
    last = messages[-1]
    if body["model"] == "recall":
        heard = [m["content"] for m in messages if m["role"] == "user"]
        return {"role": "assistant", "content": "I heard: " + " | ".join(heard)}, "stop"
    if last["role"] == "tool":
        text = f"The weather in {CITY}: {last['content']}."
        return {"role": "assistant", "content": text}, "stop"
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": CITY})},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"


def tool_calling_upstream() -> Starlette:
    """An OpenAI-compatible chat service that calls a tool, then answers with its output;
    ``app.state.requests`` holds the bodies it was sent."""
    requests: list[dict[str, Any]] = []

    async def completions(request: Request) -> Response:
        body = await request.json()
        requests.append(body)
        message, finish = _answer(body)
        if body.get("stream"):
            return StreamingResponse(_stream_of(message, finish), media_type="text/event-stream")
        return JSONResponse(_completion(message, finish))

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.state.requests = requests
    return app


@pytest.fixture(scope="module", autouse=True)
def no_tracing() -> None:
    """The SDK would export each run's trace to OpenAI: nothing may leave this machine."""
    set_tracing_disabled(True)


@pytest.fixture(scope="module")
def upstream() -> Iterator[LiveServer]:
    with LiveServer(tool_calling_upstream()) as live:
        yield live


@pytest.fixture(scope="module")
def fronting(
    upstream: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Our server, serving ``echo`` and the upstream's ``weather`` and ``recall``."""
    config = tmp_path_factory.mktemp("agents")
    models = config / "models.toml"
    models.write_text(
        f'[models.weather]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n\n'
        f'[models.recall]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
    )
    settings = make_settings(
        models_file=models, database_url=f"sqlite+aiosqlite:///{config / 'agents.db'}"
    )
    with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as live:
        yield live


@pytest.fixture
async def openai_client(fronting: LiveServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{fronting.base_url}/v1", api_key="sk-agents", max_retries=0
    )
    yield client
    await client.close()


def _agent(client: openai.AsyncOpenAI, model: str, **options: Any) -> Agent[None]:
    responses_model = OpenAIResponsesModel(model=model, openai_client=client)
    return Agent(name="assistant", model=responses_model, **options)


async def test_an_agent_gets_the_models_answer(openai_client: openai.AsyncOpenAI) -> None:
    agent = _agent(openai_client, "echo", instructions="Repeat what you are told.")

    result = await Runner.run(agent, "hello agent")

    assert result.final_output == "hello agent"
    assert result.last_response_id is not None
    assert result.last_response_id.startswith("resp_")


async def test_a_streamed_run_yields_the_answer_in_text_deltas(
    openai_client: openai.AsyncOpenAI,
) -> None:
    agent = _agent(openai_client, "echo")

    streamed = Runner.run_streamed(agent, "hello streaming agent")
    deltas = [
        event.data.delta
        async for event in streamed.stream_events()
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
    ]

    assert len(deltas) == 3  # one a word, as echo produces them
    assert "".join(deltas) == "hello streaming agent"
    assert streamed.final_output == "hello streaming agent"


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
async def test_an_agent_calls_a_function_tool_and_answers_with_its_output(
    openai_client: openai.AsyncOpenAI, upstream: LiveServer, stream: bool
) -> None:
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: The city's name.
        """
        asked.append(city)
        return "sunny, 24 degrees"

    agent = _agent(openai_client, "weather", tools=[get_weather])
    question = "What is the weather in Lyon?"

    if stream:
        streamed = Runner.run_streamed(agent, question)
        async for _ in streamed.stream_events():
            pass
        final_output = streamed.final_output
    else:
        final_output = (await Runner.run(agent, question)).final_output

    assert asked == [CITY]  # the tool ran once, with the model's arguments
    assert final_output == "The weather in Lyon: sunny, 24 degrees."
    # The second turn reached the model with the tool's output as the last message.
    last_turn = upstream.app.state.requests[-1]["messages"]
    assert last_turn[-1] == {
        "role": "tool",
        "tool_call_id": CALL_ID,
        "content": "sunny, 24 degrees",
    }


async def test_a_streamed_run_passes_on_the_upstreams_text_as_it_comes(
    openai_client: openai.AsyncOpenAI,
) -> None:
    agent = _agent(openai_client, "recall")

    streamed = Runner.run_streamed(agent, "tell me more")
    deltas = [
        event.data.delta
        async for event in streamed.stream_events()
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
    ]

    # Each piece as the upstream streamed it, not the whole text once the upstream is done.
    assert deltas == ["I ", "heard: ", "tell ", "me ", "more"]
    assert streamed.final_output == "I heard: tell me more"


async def test_a_run_continues_from_the_previous_response_kept_by_the_server(
    openai_client: openai.AsyncOpenAI,
) -> None:
    agent = _agent(openai_client, "recall")

    first = await Runner.run(agent, "my name is Ada")
    second = await Runner.run(
        agent, "what is my name?", previous_response_id=first.last_response_id
    )

    assert first.final_output == "I heard: my name is Ada"
    assert second.final_output == "I heard: my name is Ada | what is my name?"
    # The SDK sent the new message alone: the earlier turn came from the server's store.
    assert second.last_response_id is not None
    items = await openai_client.responses.input_items.list(second.last_response_id)
    assert len(items.data) == 1
    message = items.data[0]
    assert isinstance(message, ResponseInputMessageItem)
    assert message.role == "user"
    assert [(part.type, getattr(part, "text", None)) for part in message.content] == [
        ("input_text", "what is my name?")
    ]
