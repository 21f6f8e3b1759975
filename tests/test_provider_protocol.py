"""Providers an embedding application brings (``create_app(provider_kinds=...)``): the
protocol asks ``generate`` for an async iterator of events, not an async generator, so one
without ``aclose`` is served like any other; one that says nothing still gets a framed stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from chatbot_api.app import create_app
from chatbot_api.config import Settings
from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    Provider,
    TextDelta,
    Usage,
)
from chatbot_api.providers.registry import PROVIDER_KINDS, ModelSpec, ProviderKind
from tests.clients import HELLO
from tests.conftest import SdkFactory, make_settings
from tests.servers import LiveServer


class ScriptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The pieces of every answer.
    words: list[str] = []
    #: Whether the answer ends with a finish and the usage, as the protocol asks.
    finish: bool = True


class _Replay:
    """A plain async iterator over a list of events: no ``aclose``, no ``asend``."""

    def __init__(self, events: Iterable[GenerationEvent]) -> None:
        self._events = iter(events)

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> GenerationEvent:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None


class ScriptedProvider:
    supported_parameters: frozenset[str] = frozenset()

    def __init__(self, config: ScriptConfig) -> None:
        self._config = config

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        events: list[GenerationEvent] = [TextDelta(word) for word in self._config.words]
        if self._config.finish:
            events += [Finish("stop"), Usage(prompt_tokens=1, completion_tokens=len(events))]
        return _Replay(events)

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


def _build(spec: ModelSpec, settings: Settings) -> Provider:
    assert isinstance(spec.config, ScriptConfig)
    return ScriptedProvider(spec.config)


MODELS = """
[models.scripted]
provider = "scripted"
words = ["Hello ", "world."]

[models.mute]
provider = "scripted"
finish = false
"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    config = tmp_path_factory.mktemp("embedded")
    models = config / "models.toml"
    models.write_text(MODELS)
    settings = make_settings(
        models_file=models,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{config / 'embedded.db'}",
    )
    kinds = {**PROVIDER_KINDS, "scripted": ProviderKind(config=ScriptConfig, build=_build)}
    with LiveServer(create_app(settings, provider_kinds=kinds)) as live:
        yield live


def test_a_provider_whose_events_cannot_be_closed_is_served(
    embedded: LiveServer, sdk: SdkFactory
) -> None:
    client = sdk(embedded, "sk-anything")

    whole = client.chat.completions.create(model="scripted", messages=HELLO)
    with client.chat.completions.create(model="scripted", messages=HELLO, stream=True) as s:
        chunks = list(s)

    assert whole.choices[0].message.content == "Hello world."
    assert whole.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["Hello ", "world."]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_provider_that_says_nothing_still_gets_a_framed_stream(embedded: LiveServer) -> None:
    body = {"model": "mute", "stream": True, "messages": HELLO}
    with httpx.stream("POST", f"{embedded.base_url}/v1/chat/completions", json=body) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert answer.status_code == 200
    # The role chunk, then the end: no content, no error.
    assert len(data) == 2
    assert json.loads(data[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert data[1] == "[DONE]"
