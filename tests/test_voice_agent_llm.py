"""The voice agent's LLM is this server: ``livekit-plugins-openai``'s ``LLM``, as
``examples/voice_agent.py`` makes it, streams replies from our ``/v1``, tool calls included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.agents import llm
from livekit.plugins import openai as livekit_openai

from chatbot_api.app import create_app
from tests.clients import MASTER, make_key
from tests.conftest import make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer
from tests.upstreams import fault_upstream

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Our server with echo and a model served by a tool-calling upstream of the suite's own."""
    with LiveServer(fault_upstream()) as upstream:
        directory = tmp_path_factory.mktemp("voice-llm")
        models = directory / "models.toml"
        models.write_text(
            f'[models.tools]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
        )
        settings = make_settings(master_key=MASTER, models_file=models, data_dir=directory)
        with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as live:
            yield live


def _agent_llm(server: LiveServer, model: str) -> livekit_openai.LLM:
    key = str(make_key(server, models=[model])["key"])  # a key of ours, for that model only
    return livekit_openai.LLM(model=model, base_url=f"{server.base_url}/v1", api_key=key)


async def _collect(stream: llm.LLMStream) -> tuple[str, list[llm.FunctionToolCall]]:
    text, calls = "", []
    async with stream:
        async for chunk in stream:
            if chunk.delta is not None:
                text += chunk.delta.content or ""
                calls.extend(chunk.delta.tool_calls)
    return text, calls


async def test_the_agents_llm_streams_a_reply_from_echo(ours: LiveServer) -> None:
    agent_llm = _agent_llm(ours, "echo")
    context = llm.ChatContext()
    context.add_message(role="system", content="You are a voice assistant.")
    context.add_message(role="user", content="hello from the voice room")

    text, calls = await _collect(agent_llm.chat(chat_ctx=context))

    assert text == "hello from the voice room"
    assert calls == []
    await agent_llm.aclose()


async def test_a_tool_call_round_trip(ours: LiveServer) -> None:
    @llm.function_tool
    async def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    agent_llm = _agent_llm(ours, "tools")
    context = llm.ChatContext()
    context.add_message(role="user", content="What is the weather in Paris?")

    text, [call] = await _collect(agent_llm.chat(chat_ctx=context, tools=[get_weather]))
    assert text == ""
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})

    # The agent runs the tool and sends its result back, as AgentSession does.
    result = await get_weather(**json.loads(call.arguments))
    context.items.append(
        llm.FunctionCall(call_id=call.call_id, name=call.name, arguments=call.arguments)
    )
    context.items.append(
        llm.FunctionCallOutput(call_id=call.call_id, name=call.name, output=result, is_error=False)
    )
    answer, more_calls = await _collect(agent_llm.chat(chat_ctx=context, tools=[get_weather]))

    assert answer.strip() == "The weather in Paris: sunny in Paris."
    assert more_calls == []
    await agent_llm.aclose()


def test_the_example_worker_builds_its_llm_from_the_dispatch(
    ours: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's own function, given a job's metadata, points the LLM at us."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "voice_agent.py"
    spec = importlib.util.spec_from_file_location("voice_agent", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("CHATBOT_API_URL", f"{ours.base_url}/v1")
    monkeypatch.setenv("CHATBOT_API_KEY", MASTER)

    brief = json.dumps({"model": "echo", "instructions": "Be brief."})
    made = example.agent_llm(brief)
    assert isinstance(made, livekit_openai.LLM)
    assert made.model == "echo"
    assert example.instructions_of(brief) == "Be brief."
    assert example.instructions_of("{}") == example.DEFAULT_INSTRUCTIONS
