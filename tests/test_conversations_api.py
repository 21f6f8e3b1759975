"""OpenAI's Conversations API through the official SDK: conversations and their items, the
turns of responses created in a conversation, and the owner every route is scoped to.

Every test runs on SQLite and on PostgreSQL (their turns are written by different code), each
test with an API key of its own, so that it sees its own conversations only."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseInputItemParam

from chatbot_api.app import create_app
from tests.clients import MASTER, make_key
from tests.conftest import SdkFactory, make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer
from tests.spec import validate
from tests.test_response_state import BACKENDS, database_for


@pytest.fixture(scope="module", params=BACKENDS)
def conversations_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_file: Path
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("conversations")
    with database_for(request.param, directory) as url:
        settings = make_settings(
            master_key=MASTER,
            database_url=url,
            data_dir=directory,
            models_file=models_file,
            # The shortest lease: a background response that is not finished for good is
            # found out in seconds, not a test that hangs.
            background_lease_seconds=2,
        )
        with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as live:
            yield live


@pytest.fixture
def key(conversations_server: LiveServer) -> str:
    """A new API key: a caller of its own."""
    return str(make_key(conversations_server)["key"])


@pytest.fixture
def client(conversations_server: LiveServer, key: str, sdk: SdkFactory) -> openai.OpenAI:
    return sdk(conversations_server, key)


@pytest.fixture
def http(conversations_server: LiveServer, key: str) -> Iterator[httpx.Client]:
    """The same caller over plain HTTP, to read the JSON as sent."""
    with httpx.Client(
        base_url=conversations_server.base_url, headers={"Authorization": f"Bearer {key}"}
    ) as plain:
        yield plain


def _user(text: str) -> ResponseInputItemParam:
    return {"role": "user", "content": text}


def _text(item: Any) -> tuple[str, str]:
    """A message item as (role, its text), whichever parts (input or output) hold it."""
    assert item.type == "message", item
    return item.role, "".join(getattr(part, "text", "") for part in item.content)


def _id(item: Any) -> str:
    """An item's id, which every stored item has."""
    assert isinstance(item.id, str), item
    return item.id


def _texts(client: openai.OpenAI, conversation_id: str) -> list[tuple[str, str]]:
    """Every item of the conversation, oldest first, as (role, text)."""
    items = client.conversations.items.list(conversation_id, order="asc", limit=100)
    return [_text(item) for item in items]


def _error(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    """The error of an answer, checked against OpenAI's envelope."""
    body: dict[str, Any] = caught.value.response.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


def test_a_conversation_is_created_retrieved_updated_and_deleted(client: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex
    raw = client.conversations.with_raw_response.create(
        metadata={"run": tag},
        items=[_user("hello there"), {"role": "assistant", "content": "hi, who are you?"}],
    )
    validate("ConversationResource", raw.http_response.json())
    created = raw.parse()
    assert created.id.startswith("conv_")
    assert created.object == "conversation"
    assert created.metadata == {"run": tag}
    assert _texts(client, created.id) == [
        ("user", "hello there"),
        ("assistant", "hi, who are you?"),
    ]

    retrieved = client.conversations.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()

    updated = client.conversations.update(created.id, metadata={"run": tag, "topic": "greeting"})
    assert updated.id == created.id
    assert updated.metadata == {"run": tag, "topic": "greeting"}
    assert client.conversations.retrieve(created.id).metadata == {"run": tag, "topic": "greeting"}

    deleted_raw = client.conversations.with_raw_response.delete(created.id)
    validate("DeletedConversationResource", deleted_raw.http_response.json())
    deleted = deleted_raw.parse()
    assert (deleted.id, deleted.object, deleted.deleted) == (
        created.id,
        "conversation.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.conversations.retrieve(created.id)
    error = _error(caught)
    assert created.id in error["message"]
    assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete(created.id)


def test_a_conversation_can_start_empty(client: openai.OpenAI) -> None:
    created = client.conversations.create()

    assert created.metadata in ({}, None)
    assert client.conversations.retrieve(created.id).id == created.id
    page = client.conversations.items.list(created.id)
    assert page.data == []
    assert not page.has_more


def test_items_are_added_and_listed_in_pages(client: openai.OpenAI, http: httpx.Client) -> None:
    conversation = client.conversations.create(items=[_user("zero")])

    raw = client.conversations.items.with_raw_response.create(
        conversation.id,
        items=[_user("one"), {"role": "assistant", "content": "two"}, _user("three")],
    )
    added_json = raw.http_response.json()
    validate("ConversationItemList", added_json)
    added = raw.parse()
    assert [_text(item) for item in added.data] == [
        ("user", "one"),
        ("assistant", "two"),
        ("user", "three"),
    ]
    ids = [_id(item) for item in added.data]
    assert all(ids)
    assert len(set(ids)) == 3
    client.conversations.items.create(conversation.id, items=[_user("four")])

    # Newest first by default, as OpenAI's.
    newest = client.conversations.items.list(conversation.id)
    assert [_text(item)[1] for item in newest.data] == ["four", "three", "two", "one", "zero"]
    assert not newest.has_more
    every_id = [_id(item) for item in reversed(newest.data)]  # oldest first
    assert every_id[1:4] == ids

    first = client.conversations.items.list(conversation.id, limit=2, order="asc")
    assert [item.id for item in first.data] == every_id[:2]
    assert first.has_more
    second = client.conversations.items.list(
        conversation.id, limit=2, order="asc", after=every_id[1]
    )
    assert [item.id for item in second.data] == every_id[2:4]
    backwards = client.conversations.items.list(
        conversation.id, limit=2, order="desc", after=every_id[3]
    )
    assert [item.id for item in backwards.data] == [every_id[2], every_id[1]]
    # The SDK follows `after` through every page.
    paged = client.conversations.items.list(conversation.id, limit=2, order="asc")
    assert [item.id for item in paged] == every_id
    paged_desc = client.conversations.items.list(conversation.id, limit=2)
    assert [item.id for item in paged_desc] == every_id[::-1]

    listed = http.get(
        f"/v1/conversations/{conversation.id}/items",
        params={"limit": 3, "after": every_id[0], "order": "asc"},
    ).json()
    validate("ConversationItemList", listed)
    for item in listed["data"]:
        validate("ConversationItem", item)
    assert [item["id"] for item in listed["data"]] == every_id[1:4]
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
        every_id[1],
        every_id[3],
        True,
    )


def test_an_item_is_retrieved_and_deleted(client: openai.OpenAI, http: httpx.Client) -> None:
    conversation = client.conversations.create(items=[_user("keep me"), _user("drop me")])
    kept_id, dropped_id = (
        _id(item) for item in client.conversations.items.list(conversation.id, order="asc")
    )

    item = client.conversations.items.retrieve(dropped_id, conversation_id=conversation.id)
    assert _text(item) == ("user", "drop me")
    assert item.id == dropped_id
    raw = http.get(f"/v1/conversations/{conversation.id}/items/{dropped_id}")
    assert raw.status_code == 200
    validate("ConversationItem", raw.json())

    after_delete = client.conversations.items.delete(dropped_id, conversation_id=conversation.id)

    assert after_delete.id == conversation.id
    assert after_delete.object == "conversation"
    assert [i.id for i in client.conversations.items.list(conversation.id)] == [kept_id]
    with pytest.raises(openai.NotFoundError) as caught:
        client.conversations.items.retrieve(dropped_id, conversation_id=conversation.id)
    assert dropped_id in _error(caught)["message"]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(dropped_id, conversation_id=conversation.id)
    assert _text(client.conversations.items.retrieve(kept_id, conversation_id=conversation.id)) == (
        "user",
        "keep me",
    )


@pytest.mark.parametrize("by_object", [False, True], ids=["id", "object"])
def test_a_response_in_a_conversation_reads_and_extends_it(
    client: openai.OpenAI, by_object: bool
) -> None:
    conversation = client.conversations.create(items=[_user("my name is Ada")])

    def ask(text: str) -> Response:
        if by_object:
            return client.responses.create(
                model="echo", input=text, conversation={"id": conversation.id}
            )
        return client.responses.create(model="echo", input=text, conversation=conversation.id)

    first = ask("hello there")
    assert first.output_text == "hello there"
    assert first.conversation is not None
    assert first.conversation.id == conversation.id
    assert first.usage is not None
    # The model read the conversation's item (4 words) and this turn's input (2).
    assert first.usage.input_tokens == 6

    second = ask("what is my name")
    assert second.output_text == "what is my name"
    assert second.usage is not None
    # And now the first turn too: its input (2) and answer (2), then this input (4).
    assert second.usage.input_tokens == 12

    assert _texts(client, conversation.id) == [
        ("user", "my name is Ada"),
        ("user", "hello there"),
        ("assistant", "hello there"),
        ("user", "what is my name"),
        ("assistant", "what is my name"),
    ]
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    # The turn's items are the response's own: the same ids.
    assert [items[2].id, items[4].id] == [first.output[0].id, second.output[0].id]
    first_input = list(client.responses.input_items.list(first.id))
    assert [item.id for item in first_input] == [items[1].id]


def test_a_response_continued_from_one_in_a_conversation_sees_the_conversation(
    client: openai.OpenAI,
) -> None:
    conversation = client.conversations.create(items=[_user("remember the word apple")])
    first = client.responses.create(model="echo", input="okay", conversation=conversation.id)

    after = client.responses.create(model="echo", input="which word", previous_response_id=first.id)

    assert after.output_text == "which word"
    assert after.usage is not None
    # The conversation's item (4), the first turn (1 + 1) and this input (2).
    assert after.usage.input_tokens == 8


def test_a_response_in_another_keys_conversation_is_not_found(
    conversations_server: LiveServer, sdk: SdkFactory
) -> None:
    server = conversations_server
    alice = sdk(server, str(make_key(server)["key"]))
    mallory = sdk(server, str(make_key(server)["key"]))
    conversation = alice.conversations.create(items=[_user("a secret")])

    with pytest.raises(openai.NotFoundError) as caught:
        mallory.responses.create(model="echo", input="tell me", conversation=conversation.id)
    assert _error(caught)["param"] == "conversation"
    with pytest.raises(openai.NotFoundError):
        mallory.responses.create(
            model="echo", input="tell me", conversation={"id": conversation.id}
        )

    assert _texts(alice, conversation.id) == [("user", "a secret")]
    answer = alice.responses.create(model="echo", input="mine", conversation=conversation.id)
    assert answer.usage is not None
    assert answer.usage.input_tokens == 3  # the secret (2) and this (1): nothing of Mallory's


def test_every_conversation_route_is_scoped_to_its_owner(
    conversations_server: LiveServer, sdk: SdkFactory
) -> None:
    server = conversations_server
    alice = sdk(server, str(make_key(server)["key"]))
    mallory = sdk(server, str(make_key(server)["key"]))
    conversation = alice.conversations.create(metadata={"owner": "alice"}, items=[_user("mine")])
    item_id = _id(alice.conversations.items.list(conversation.id).data[0])
    other = mallory.conversations.create(items=[_user("hers")])

    attempts: dict[str, Callable[[], object]] = {
        "retrieve": lambda: mallory.conversations.retrieve(conversation.id),
        "update": lambda: mallory.conversations.update(conversation.id, metadata={"x": "y"}),
        "delete": lambda: mallory.conversations.delete(conversation.id),
        "list items": lambda: mallory.conversations.items.list(conversation.id),
        "add items": lambda: mallory.conversations.items.create(
            conversation.id, items=[_user("planted")]
        ),
        "retrieve item": lambda: mallory.conversations.items.retrieve(
            item_id, conversation_id=conversation.id
        ),
        "delete item": lambda: mallory.conversations.items.delete(
            item_id, conversation_id=conversation.id
        ),
        # Alice's item, asked for through a conversation that is Mallory's own.
        "retrieve item via own": lambda: mallory.conversations.items.retrieve(
            item_id, conversation_id=other.id
        ),
        "delete item via own": lambda: mallory.conversations.items.delete(
            item_id, conversation_id=other.id
        ),
    }
    for name, attempt in attempts.items():
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert "No " in _error(caught)["message"], name

    assert alice.conversations.retrieve(conversation.id).metadata == {"owner": "alice"}
    assert _texts(alice, conversation.id) == [("user", "mine")]
    assert _texts(mallory, other.id) == [("user", "hers")]


def test_more_than_twenty_items_are_refused(client: openai.OpenAI) -> None:
    many = [_user(f"item {i}") for i in range(21)]

    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.create(items=many)
    assert (_error(caught)["param"] or "").startswith("items")

    conversation = client.conversations.create(items=many[:20])
    assert len(list(client.conversations.items.list(conversation.id, limit=100))) == 20
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.items.create(conversation.id, items=many)
    assert (_error(caught)["param"] or "").startswith("items")
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conversation.id, items=[])
    assert len(list(client.conversations.items.list(conversation.id, limit=100))) == 20


def test_an_item_of_an_unknown_type_is_refused_naming_it(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    conversation = client.conversations.create()
    bad = [{"role": "user", "content": "fine"}, {"type": "web_search_call", "id": "ws_1"}]

    for url in (
        "/v1/conversations",
        f"/v1/conversations/{conversation.id}/items",
    ):
        answer = http.post(url, json={"items": bad})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        validate("ErrorResponse", body)
        assert body["error"]["param"].startswith("items[1]")
        assert "type" in body["error"]["message"]
    assert client.conversations.items.list(conversation.id).data == []


LONG = "x" * 300


@pytest.mark.parametrize("conversation_id", ["conv_%00bad", f"conv_{LONG}"], ids=["nul", "long"])
def test_a_strange_conversation_id_is_not_found(http: httpx.Client, conversation_id: str) -> None:
    base = f"/v1/conversations/{conversation_id}"
    item = {"role": "user", "content": "x"}
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", base, None),
        ("POST", base, {"metadata": {"a": "b"}}),
        ("DELETE", base, None),
        ("GET", f"{base}/items", None),
        ("POST", f"{base}/items", {"items": [item]}),
        ("GET", f"{base}/items/msg_1", None),
        ("DELETE", f"{base}/items/msg_1", None),
    ]
    for method, url, body in calls:
        answer = http.request(method, url, json=body)
        assert answer.status_code == 404, (method, url, answer.status_code, answer.text)
        validate("ErrorResponse", answer.json())
    # In a body, a NUL and an id longer than any (128 characters) are refused as such (400).
    in_body = conversation_id.replace("%00", "\0")
    answer = http.post(
        "/v1/responses", json={"model": "echo", "input": "x", "conversation": in_body}
    )
    assert answer.status_code == 400, answer.text
    validate("ErrorResponse", answer.json())
    assert answer.json()["error"]["param"] == "conversation"


@pytest.mark.parametrize("item_id", ["msg_%00bad", f"msg_{LONG}"], ids=["nul", "long"])
def test_a_strange_item_id_is_not_found(
    client: openai.OpenAI, http: httpx.Client, item_id: str
) -> None:
    conversation = client.conversations.create(items=[_user("still here")])
    url = f"/v1/conversations/{conversation.id}/items/{item_id}"

    for method in ("GET", "DELETE"):
        answer = http.request(method, url)
        assert answer.status_code == 404, (method, answer.status_code, answer.text)
        validate("ErrorResponse", answer.json())
    listed = http.get(f"/v1/conversations/{conversation.id}/items", params={"after": item_id})
    assert listed.status_code == 200, listed.text
    assert _texts(client, conversation.id) == [("user", "still here")]


def test_deleting_a_response_keeps_its_turn_in_the_conversation(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    answer = client.responses.create(
        model="echo", input="remember this", conversation=conversation.id
    )

    client.responses.delete(answer.id)

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)
    assert _texts(client, conversation.id) == [
        ("user", "remember this"),
        ("assistant", "remember this"),
    ]
    output_id = _id(answer.output[0])
    assert client.conversations.items.retrieve(output_id, conversation_id=conversation.id).id == (
        output_id
    )
    later = client.responses.create(model="echo", input="and this", conversation=conversation.id)
    assert later.usage is not None
    assert later.usage.input_tokens == 6  # the deleted response's turn (2 + 2) is still read


def test_deleting_a_conversation_keeps_its_stored_responses(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[_user("before")])
    answer = client.responses.create(
        model="echo", input="stored turn", conversation=conversation.id
    )

    client.conversations.delete(conversation.id)

    kept = client.responses.retrieve(answer.id)
    assert kept.status == "completed"
    assert kept.output_text == "stored turn"
    (input_item,) = client.responses.input_items.list(answer.id).data
    assert _text(input_item) == ("user", "stored turn")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="echo", input="more", conversation=conversation.id)
    onwards = client.responses.create(model="echo", input="go on", previous_response_id=answer.id)
    assert onwards.output_text == "go on"
    assert onwards.usage is not None
    # The stored turn (2 + 2) and this input (2); the conversation's own item went with it.
    assert onwards.usage.input_tokens == 6


def test_an_item_taken_out_of_a_conversation_stays_with_its_response(
    client: openai.OpenAI,
) -> None:
    conversation = client.conversations.create()
    answer = client.responses.create(
        model="echo", input="forget these words", conversation=conversation.id
    )
    (asked,) = client.responses.input_items.list(answer.id).data

    client.conversations.items.delete(_id(asked), conversation_id=conversation.id)

    assert _texts(client, conversation.id) == [("assistant", "forget these words")]
    assert [_id(item) for item in client.responses.input_items.list(answer.id)] == [_id(asked)]
    later = client.responses.create(model="echo", input="now", conversation=conversation.id)
    assert later.usage is not None
    assert later.usage.input_tokens == 3 + 1  # the answer and this input, not the deleted item


@pytest.mark.parametrize("mode", ["stream", "background", "unstored"])
def test_every_kind_of_response_adds_its_turn_to_the_conversation(
    client: openai.OpenAI, mode: str
) -> None:
    conversation = client.conversations.create(items=[_user("first of all")])

    done: Response
    if mode == "stream":
        with client.responses.stream(
            model="echo", input="streamed words", conversation=conversation.id
        ) as events:
            done = events.get_final_response()
        assert done.status == "completed"
    elif mode == "background":
        queued = client.responses.create(
            model="echo", input="streamed words", conversation=conversation.id, background=True
        )
        done = client.responses.retrieve(queued.id)
        for _ in range(200):  # bounds a hang only; echo answers at once
            if done.status not in ("queued", "in_progress"):
                break
            done = client.responses.retrieve(queued.id)
        assert done.status == "completed"
    else:
        done = client.responses.create(
            model="echo", input="streamed words", conversation=conversation.id, store=False
        )
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(done.id)
    assert done.output_text == "streamed words"

    assert _texts(client, conversation.id) == [
        ("user", "first of all"),
        ("user", "streamed words"),
        ("assistant", "streamed words"),
    ]
    later = client.responses.create(model="echo", input="next", conversation=conversation.id)
    assert later.usage is not None
    assert later.usage.input_tokens == 3 + 2 + 2 + 1


def test_another_keys_items_cannot_be_referenced(
    conversations_server: LiveServer, sdk: SdkFactory
) -> None:
    server = conversations_server
    alice = sdk(server, str(make_key(server)["key"]))
    mallory = sdk(server, str(make_key(server)["key"]))
    conversation = alice.conversations.create(items=[_user("alice's secret words")])
    secret_id = _id(alice.conversations.items.list(conversation.id).data[0])
    own = mallory.conversations.create()

    with pytest.raises(openai.BadRequestError) as caught:
        mallory.conversations.items.create(
            own.id, items=[{"type": "item_reference", "id": secret_id}]
        )
    assert _error(caught)["param"] == "items[0].id"
    with pytest.raises(openai.BadRequestError) as caught:
        mallory.conversations.create(items=[{"type": "item_reference", "id": secret_id}])
    assert _error(caught)["param"] == "items[0].id"
    with pytest.raises(openai.BadRequestError) as caught:
        mallory.responses.create(model="echo", input=[{"type": "item_reference", "id": secret_id}])
    assert _error(caught)["param"] == "input[0].id"
    assert mallory.conversations.items.list(own.id).data == []

    # Alice may reference her own item: it is copied into the new conversation as it was.
    copied = alice.conversations.create(items=[{"type": "item_reference", "id": secret_id}])
    assert _texts(alice, copied.id) == [("user", "alice's secret words")]


def test_metadata_beyond_the_limits_is_refused(client: openai.OpenAI) -> None:
    too_many = {f"key{i}": "value" for i in range(17)}
    conversation = client.conversations.create(metadata={"kept": "yes"})

    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.create(metadata=too_many)
    assert (_error(caught)["param"] or "").startswith("metadata")
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.update(conversation.id, metadata=too_many)
    assert (_error(caught)["param"] or "").startswith("metadata")
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conversation.id, metadata={"long": "v" * 513})
    assert client.conversations.retrieve(conversation.id).metadata == {"kept": "yes"}


def _settled(client: openai.OpenAI, response_id: str) -> Response:
    """The background response once it is no longer queued or in progress (bounded)."""
    deadline = time.monotonic() + 30  # bounds a hang only
    seen = client.responses.retrieve(response_id)
    while seen.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = client.responses.retrieve(response_id)
    return seen


def test_deleting_a_conversation_keeps_a_background_response_running_in_it(
    client: openai.OpenAI,
) -> None:
    conversation = client.conversations.create()
    words = " ".join(f"word{i}" for i in range(40))  # two seconds of echo-slow
    queued = client.responses.create(
        model="echo-slow", input=words, conversation=conversation.id, background=True
    )

    client.conversations.delete(conversation.id)  # while the answer is being generated

    done = _settled(client, queued.id)
    assert done.error is None, done.error
    assert done.status == "completed"
    assert done.output_text == words


def test_an_item_referenced_again_is_listed_on_every_page(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[_user("say it twice")])
    first_id = _id(client.conversations.items.list(conversation.id).data[0])
    # The same item again (it keeps its id), then another.
    client.conversations.items.create(
        conversation.id, items=[{"type": "item_reference", "id": first_id}, _user("then this")]
    )
    whole = [_text(item) for item in client.conversations.items.list(conversation.id, order="asc")]
    assert whole == [("user", "say it twice"), ("user", "say it twice"), ("user", "then this")]

    # The SDK pages with `after`: one item a page must still give every item, in order.
    for order in ("asc", "desc"):
        paged = client.conversations.items.list(conversation.id, limit=1, order=order)
        expected = whole if order == "asc" else whole[::-1]
        assert [_text(item) for item in paged] == expected, order


def test_a_key_lists_its_own_conversations_in_pages(
    conversations_server: LiveServer, http: httpx.Client, sdk: SdkFactory, key: str
) -> None:
    """Our extension: ``GET /v1/conversations``, what the playground's sidebar reads."""
    mine = sdk(conversations_server, key)
    made = [mine.conversations.create(metadata={"n": str(n)}).id for n in range(5)]
    other = sdk(conversations_server, str(make_key(conversations_server)["key"]))
    theirs = other.conversations.create(metadata={"n": "theirs"}).id

    first = http.get("/v1/conversations", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    validate("ConversationResource", page["data"][0])
    assert [c["id"] for c in page["data"]] == made[::-1][:2]  # newest first
    assert (page["object"], page["has_more"]) == ("list", True)
    assert (page["first_id"], page["last_id"]) == (made[4], made[3])
    second = http.get("/v1/conversations", params={"limit": 10, "after": page["last_id"]}).json()
    assert [c["id"] for c in second["data"]] == made[::-1][2:]
    assert second["has_more"] is False

    oldest = http.get("/v1/conversations", params={"order": "asc", "limit": 100}).json()
    assert [c["id"] for c in oldest["data"]] == made
    assert theirs not in [c["id"] for c in oldest["data"]]
    # Another key's id as the cursor, or a NUL in it, reveals nothing and is no error.
    for cursor in (theirs, "conv_\0x"):
        empty = http.get("/v1/conversations", params={"after": cursor})
        assert empty.status_code == 200
        assert empty.json()["data"] == []
    mine.conversations.delete(made[0])
    left = http.get("/v1/conversations", params={"order": "asc"}).json()["data"]
    assert [c["id"] for c in left] == made[1:]
    bad = http.get("/v1/conversations", params={"limit": 0})
    assert bad.status_code == 400
    validate("ErrorResponse", bad.json())
