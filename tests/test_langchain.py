"""LangChain on both sides: runnables served as models, and ChatOpenAI as our client."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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

[models.blocks]
provider = "langchain"
runnable = "tests.lc_runnables:block_model"

[models."blocks-streamed"]
provider = "langchain"
runnable = "tests.lc_runnables:streaming_in_blocks"
"""

FRENCH: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Capital, in French?"}]


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


def test_a_stop_string_that_never_completes_holds_nothing_back(
    served: LiveServer, sdk: SdkFactory
) -> None:
    # The answer ends in "?", which could begin "?!": it is held back, then sent at the end.
    reply = sdk(served, "sk-anything").chat.completions.create(
        model="capitals", messages=[{"role": "user", "content": "Capital of France?"}], stop=["?!"]
    )

    assert reply.choices[0].message.content == "Paris is the capital of France. Next question?"


def test_an_answer_in_content_blocks_is_served_as_its_text(
    served: LiveServer, sdk: SdkFactory
) -> None:
    reply = sdk(served, "sk-anything").chat.completions.create(model="blocks", messages=FRENCH)

    assert reply.choices[0].message.content == "Bonjour Paris."  # the reasoning block left out
    assert reply.usage is not None
    # The model's own counts, not ours (which would be 3 and 2 words).
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 5)


def test_token_counts_reported_across_a_stream_add_up(served: LiveServer, sdk: SdkFactory) -> None:
    client = sdk(served, "sk-anything")

    whole = client.chat.completions.create(model="blocks-streamed", messages=FRENCH)
    with client.chat.completions.create(
        model="blocks-streamed",
        messages=FRENCH,
        stream=True,
        stream_options={"include_usage": True},
    ) as s:
        chunks = list(s)

    assert whole.choices[0].message.content == "Bonjour Paris."
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (12, 5)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["Bonjour ", "Paris."]  # no piece for the chunks without text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 17


def test_a_server_of_runnables_is_ready(served: LiveServer) -> None:
    assert httpx.get(f"{served.base_url}/ready").status_code == 200


async def _start(models: Path, tmp_path: Path, data_dir: Path) -> None:
    """What uvicorn runs at start, and prints the error of before it exits."""
    settings = make_settings(
        models_file=models,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'start.db'}",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("runnable", "message"),
    [
        (
            "tests.lc_runnables",
            "runnable 'tests.lc_runnables' is not an import path like 'package.module:name'",
        ),
        (
            "tests.lc_runnables:__all__",
            "'tests.lc_runnables:__all__' is a list, not a LangChain runnable",
        ),
    ],
)
async def test_a_path_to_no_runnable_stops_the_start_naming_it(
    tmp_path: Path, data_dir: Path, runnable: str, message: str
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.wrong]\nprovider = "langchain"\nrunnable = "{runnable}"\n')

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        await _start(models, tmp_path, data_dir)


@pytest.mark.anyio
async def test_without_the_langchain_extra_the_start_says_what_to_install(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(RUNNABLES)
    monkeypatch.setitem(sys.modules, "langchain_core.runnables", None)  # as if not installed

    with pytest.raises(ValueError, match=re.escape("pip install 'chatbot-api[langchain]'")):
        await _start(models, tmp_path, data_dir)


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


def _chat_openai(server: LiveServer, model: str, *, use_responses_api: bool = False) -> ChatOpenAI:
    # LangChain's documented keyword names are aliases its typing does not show.
    options: dict[str, Any] = {
        "base_url": f"{server.base_url}/v1",
        "api_key": "sk-anything",
        "model": model,
        "max_retries": 0,
        "use_responses_api": use_responses_api,
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


def test_chat_openai_works_over_the_responses_api(fronted: LiveServer) -> None:
    chat = _chat_openai(fronted, "proxied", use_responses_api=True)

    answer = chat.invoke("good morning to you")
    pieces = list(chat.stream("good morning to you"))

    assert answer.text == "good morning to you"
    assert str(answer.response_metadata["id"]).startswith("resp_")  # a response, not a chat
    assert answer.usage_metadata is not None
    assert (answer.usage_metadata["input_tokens"], answer.usage_metadata["output_tokens"]) == (4, 4)
    assert "".join(piece.text for piece in pieces) == "good morning to you"
    assert str(pieces[0].response_metadata["id"]).startswith("resp_")


def test_chat_openai_gets_tool_calls_over_the_responses_api(fronted: LiveServer) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    chat = _chat_openai(fronted, "tools", use_responses_api=True).bind_tools([get_weather])

    answer = chat.invoke("What is the weather in Paris?")

    assert isinstance(answer, AIMessage)
    assert str(answer.response_metadata["id"]).startswith("resp_")
    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_up_1", "type": "tool_call"}
    ]
