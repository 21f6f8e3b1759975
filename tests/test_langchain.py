"""LangChain on both sides: runnables served as models, and ChatOpenAI as our client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam

from chatbot_api.app import create_app
from tests.conftest import SdkFactory, ServerFactory, make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer
from tests.upstreams import fault_upstream

RUNNABLES = """
[models.shouting]
provider = "langchain"
runnable = "tests.lc_runnables:shouting"

[models.capitals]
provider = "langchain"
runnable = "tests.lc_runnables:capital_model"
"""


@pytest.fixture
def served(start_server: ServerFactory, tmp_path: Path) -> LiveServer:
    models = tmp_path / "runnables.toml"
    models.write_text(RUNNABLES)
    return start_server(models_file=models)


def test_a_runnable_is_served_as_a_model(served: LiveServer, sdk: SdkFactory) -> None:
    client = sdk(served, "sk-anything")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there friend"}]

    reply = client.chat.completions.create(model="shouting", messages=messages)
    with client.chat.completions.create(model="shouting", messages=messages, stream=True) as s:
        pieces = [c.choices[0].delta.content for c in s if c.choices and c.choices[0].delta.content]

    assert reply.choices[0].message.content == "HELLO THERE FRIEND "
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3
    assert pieces == ["HELLO ", "THERE ", "FRIEND "]


def test_a_chat_model_stops_at_a_stop_string(served: LiveServer, sdk: SdkFactory) -> None:
    reply = sdk(served, "sk-anything").chat.completions.create(
        model="capitals", messages=[{"role": "user", "content": "Capital of France?"}], stop=["."]
    )

    assert reply.choices[0].message.content == "Paris is the capital of France"


@pytest.fixture(scope="module")
def fronted(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Our server in front of a second one serving echo, and of a tool-calling upstream."""
    upstream_app = create_app(make_settings(), provider_kinds=TEST_PROVIDER_KINDS)
    with LiveServer(upstream_app) as upstream, LiveServer(fault_upstream()) as tools:
        models = tmp_path_factory.mktemp("lc") / "models.toml"
        models.write_text(
            f'[models.proxied]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
            'upstream_model = "echo"\n\n'
            f'[models.tools]\nprovider = "openai"\nbase_url = "{tools.base_url}/v1"\n'
        )
        settings = make_settings(
            models_file=models,
            database_url=f"sqlite+aiosqlite:///{models.parent / 'lc.db'}",
        )
        with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as front:
            yield front


def _chat_openai(server: LiveServer, model: str) -> ChatOpenAI:
    # LangChain's documented keyword names are aliases its typing does not show.
    options: dict[str, Any] = {
        "base_url": f"{server.base_url}/v1",
        "api_key": "sk-anything",
        "model": model,
        "max_retries": 0,
    }
    return ChatOpenAI(**options)


def test_chat_openai_works_through_an_upstream(fronted: LiveServer) -> None:
    chat = _chat_openai(fronted, "proxied")

    answer = chat.invoke("good morning to you")
    streamed = "".join(str(piece.content) for piece in chat.stream("good morning to you"))

    assert answer.content == "good morning to you"
    assert streamed == "good morning to you"


def test_chat_openai_gets_tool_calls_through_an_upstream(fronted: LiveServer) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    chat = _chat_openai(fronted, "tools").bind_tools([get_weather])

    answer = chat.invoke("What is the weather in Paris?")

    assert isinstance(answer, AIMessage)
    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_up_1", "type": "tool_call"}
    ]
