"""Stored completions through the official SDK, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartTextParam, ChatCompletionMessageParam

from chatbot_api.app import create_app
from tests.conftest import ServerFactory, make_settings
from tests.databases import BACKENDS, database_url_for
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer
from tests.spec import validate
from tests.upstreams import fault_upstream


@pytest.fixture(scope="module", params=BACKENDS)
def stored_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    models_file: Path,
) -> Iterator[LiveServer]:
    url = database_url_for(request.param, tmp_path_factory.mktemp("db"))
    settings = make_settings(database_url=url, models_file=models_file)
    with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as live:
        yield live


@pytest.fixture
def sdk(stored_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{stored_server.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def _ask(sdk: openai.OpenAI, text: str, *, tag: str, model: str = "echo") -> str:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": text},
    ]
    completion = sdk.chat.completions.create(
        model=model,
        messages=messages,
        store=True,
        metadata={"run": tag},
    )
    return completion.id


def test_stored_completion_is_retrieved_whole(
    sdk: openai.OpenAI, stored_server: LiveServer
) -> None:
    tag = uuid.uuid4().hex
    completion_id = _ask(sdk, "remember me", tag=tag)

    stored = sdk.chat.completions.retrieve(completion_id)

    assert stored.id == completion_id
    assert stored.choices[0].message.content == "remember me"
    assert stored.metadata == {"run": tag}
    assert stored.usage is not None
    assert stored.usage.completion_tokens == 2
    raw = httpx.get(f"{stored_server.base_url}/v1/chat/completions/{completion_id}").json()
    validate("CreateChatCompletionResponse", raw)
    assert raw["request_id"].startswith("req_")


def test_unstored_completion_is_not_found(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "forget me"}]
    )

    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(completion.id)


def test_list_filters_by_model_and_metadata_and_pages(
    sdk: openai.OpenAI, stored_server: LiveServer
) -> None:
    tag = uuid.uuid4().hex
    ids = [_ask(sdk, f"question {i}", tag=tag) for i in range(5)]
    other = _ask(sdk, "slow one", tag=tag, model="echo-slow")
    _ask(sdk, "elsewhere", tag=uuid.uuid4().hex)

    first = sdk.chat.completions.list(model="echo", metadata={"run": tag}, limit=2)
    assert [c.id for c in first.data] == ids[:2]
    assert first.has_more
    every = [c.id for c in sdk.chat.completions.list(model="echo", metadata={"run": tag}, limit=2)]
    assert every == ids  # the SDK follows `after` through all pages
    newest = sdk.chat.completions.list(metadata={"run": tag}, order="desc", limit=10)
    assert [c.id for c in newest.data] == [other, *reversed(ids)]
    assert not newest.has_more
    raw = httpx.get(
        f"{stored_server.base_url}/v1/chat/completions",
        params={"metadata[run]": tag, "limit": 3, "after": ids[0]},
    ).json()
    validate("ChatCompletionList", raw)
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[1], ids[3], True)


def test_empty_list(sdk: openai.OpenAI) -> None:
    page = sdk.chat.completions.list(metadata={"run": "nothing-has-this"})

    assert page.data == []
    assert not page.has_more


def test_update_replaces_metadata(sdk: openai.OpenAI) -> None:
    completion_id = _ask(sdk, "tag me", tag=uuid.uuid4().hex)

    updated = sdk.chat.completions.update(completion_id, metadata={"reviewed": "yes"})

    assert updated.metadata == {"reviewed": "yes"}
    assert sdk.chat.completions.retrieve(completion_id).metadata == {"reviewed": "yes"}
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.update("chatcmpl-missing", metadata={"a": "b"})


def test_delete(sdk: openai.OpenAI) -> None:
    completion_id = _ask(sdk, "delete me", tag=uuid.uuid4().hex)

    deleted = sdk.chat.completions.delete(completion_id)

    assert (deleted.id, deleted.deleted, deleted.object) == (
        completion_id,
        True,
        "chat.completion.deleted",
    )
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(completion_id)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.delete(completion_id)


def test_messages_are_listed_and_paged(sdk: openai.OpenAI, stored_server: LiveServer) -> None:
    completion_id = _ask(sdk, "what did I say?", tag=uuid.uuid4().hex)

    messages = list(sdk.chat.completions.messages.list(completion_id, limit=1))

    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("user", "what did I say?"),
    ]
    assert [m.id for m in messages] == [f"{completion_id}-0", f"{completion_id}-1"]
    raw = httpx.get(
        f"{stored_server.base_url}/v1/chat/completions/{completion_id}/messages",
        params={"order": "desc"},
    ).json()
    assert [m["role"] for m in raw["data"]] == ["user", "system"]
    # The spec's message list reuses the *response* message schema, whose role may only be
    # "assistant"; OpenAI's own example lists a "user" message. Check all but the role.
    validate(
        "ChatCompletionMessageList",
        {**raw, "data": [{**m, "role": "assistant"} for m in raw["data"]]},
    )


def test_messages_with_content_parts_are_listed_with_their_text(sdk: openai.OpenAI) -> None:
    parts: list[ChatCompletionContentPartTextParam] = [
        {"type": "text", "text": "what is "},
        {"type": "text", "text": "in this picture?"},
    ]
    completion = sdk.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": parts}], store=True
    )

    [message] = list(sdk.chat.completions.messages.list(completion.id))

    assert message.content == "what is in this picture?"
    assert message.content_parts is not None
    assert [part.model_dump(exclude_none=True) for part in message.content_parts] == parts


def test_a_streamed_completion_is_stored_as_assembled(sdk: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex
    stream = sdk.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three"}],
        store=True,
        metadata={"run": tag},
        stream=True,
        max_tokens=2,
    )
    streamed_id = {chunk.id for chunk in stream}.pop()

    stored = sdk.chat.completions.retrieve(streamed_id)

    assert stored.choices[0].message.content == "one two"
    assert stored.choices[0].finish_reason == "length"
    assert stored.usage is not None
    assert stored.usage.completion_tokens == 2


@pytest.fixture(scope="module")
def tool_calling_upstream() -> Iterator[LiveServer]:
    """An OpenAI-compatible service of the suite's own whose ``tools`` model calls a tool."""
    with LiveServer(fault_upstream()) as live:
        yield live


def test_a_streamed_tool_call_is_stored_whole(
    start_server: ServerFactory, tool_calling_upstream: LiveServer, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.tools]\nprovider = "openai"\nbase_url = "{tool_calling_upstream.base_url}/v1"\n'
        "max_retries = 0\n"
    )
    server = start_server(models_file=models)
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="tools",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=tools,
            store=True,
            stream=True,
        )
        streamed_id = {chunk.id for chunk in stream}.pop()

        stored = sdk.chat.completions.retrieve(streamed_id)

    # The upstream streamed the arguments in pieces; the stored answer has them joined.
    [call] = stored.choices[0].message.tool_calls or []
    assert call.id == "call_up_1"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert stored.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"key": "v" * 513},
    ],
)
def test_metadata_limits_are_400(sdk: openai.OpenAI, metadata: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "x"}],
            store=True,
            metadata=metadata,
        )

    assert caught.value.param is not None
    assert caught.value.param.startswith("metadata")


def test_bad_paging_parameters_are_400(stored_server: LiveServer) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"metadata": "x"}):
        response = httpx.get(f"{stored_server.base_url}/v1/chat/completions", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["param"] in ("limit", "order", "metadata")
