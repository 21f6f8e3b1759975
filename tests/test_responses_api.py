"""OpenAI's Responses API through the official SDK, sync and async: creating a response (as
JSON, as typed SSE events, in the background), continuing it, reading, listing, deleting and
cancelling it, counting its input tokens, and the errors a client meets on the way.

What a response leaves in the store (continuations, listings, deletion, background work, the
owner it belongs to) is tested on SQLite and on PostgreSQL, whose turns are written by
different code, each test with an API key of its own.

The ``echo`` model answers with the last user message, a word a token, so every answer and
every count here is known in advance."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCallItem,
    ResponseFunctionToolCallOutputItem,
    ResponseInputItemParam,
    ResponseInputMessageItem,
    ResponseOutputMessage,
)

from chatbot_api.app import create_app
from tests.clients import MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory, make_settings
from tests.databases import BACKENDS
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import AnyServer, LiveServer
from tests.spec import validate
from tests.test_response_state import database_for

QUESTION = "Hello there, how are you?"

#: The events of a one-message answer, in OpenAI's order, around its text deltas.
OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture(scope="module", params=BACKENDS)
def stored_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_file: Path
) -> Iterator[LiveServer]:
    """A server that needs API keys, on SQLite or on PostgreSQL."""
    directory = tmp_path_factory.mktemp("responses")
    with database_for(request.param, directory) as url:
        settings = make_settings(
            master_key=MASTER, database_url=url, data_dir=directory, models_file=models_file
        )
        with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as live:
            yield live


@pytest.fixture
def stored(stored_server: LiveServer, sdk: SdkFactory) -> openai.OpenAI:
    """A client of ``stored_server`` with an API key of its own."""
    return sdk(stored_server, str(make_key(stored_server)["key"]))


def _user(text: str) -> ResponseInputItemParam:
    return {"role": "user", "content": text}


def _error(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    """The error the SDK raised, its body checked against OpenAI's envelope."""
    body: dict[str, Any] = caught.value.response.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


def _http_error(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


def _text(item: Any) -> str:
    """The text of a message item, whichever parts (input or output) hold it."""
    assert item.type == "message", item
    return "".join(getattr(part, "text", "") for part in item.content)


def _events(
    server: AnyServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The events of a streamed response as sent: each ``data:`` line's JSON, checked to
    carry the type its ``event:`` line names."""
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/responses",
        json={**body, "stream": True},
        headers=headers,
        timeout=30,
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        named: str | None = None
        for line in answer.iter_lines():
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                named = value
            elif field == "data":
                event: dict[str, Any] = json.loads(value)
                assert event["type"] == named
                events.append(event)
    return events


def _finished(client: openai.OpenAI, response_id: str) -> Response:
    """Poll a background response until it is no longer queued or in progress."""
    deadline = time.monotonic() + 30
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"{response_id} is still {response.status}"
        time.sleep(0.05)


# --- Creating a response ------------------------------------------------------------------


def test_echo_answers_the_last_user_message_with_its_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model="echo", input=QUESTION)

    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == "echo"
    assert response.output_text == QUESTION
    assert response.error is None
    assert response.incomplete_details is None
    [message] = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    assert response.usage is not None
    # Echo counts words: five read, five written.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 5)
    assert response.usage.total_tokens == 10


def test_a_response_is_sent_as_the_spec_describes(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="echo", input=QUESTION, metadata={"topic": "greeting"}, temperature=0.5
    )

    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/json"
    body = raw.http_response.json()
    validate("Response", body)
    assert body["metadata"] == {"topic": "greeting"}
    assert body["temperature"] == 0.5
    assert raw.parse().output_text == QUESTION


def test_instructions_are_read_by_the_model_and_returned(client: openai.OpenAI) -> None:
    plain = client.responses.create(model="echo", input="what time is it")
    instructed = client.responses.create(
        model="echo", input="what time is it", instructions="Answer in three words."
    )

    assert instructed.instructions == "Answer in three words."
    assert instructed.output_text == "what time is it"
    assert plain.usage is not None
    assert instructed.usage is not None
    # The four words of the instructions are read as well.
    assert instructed.usage.input_tokens == plain.usage.input_tokens + 4


def test_the_parameters_a_model_honours_are_accepted_and_shown_in_the_response(
    client: openai.OpenAI,
) -> None:
    response = client.responses.create(
        model="echo",
        input="hi there",
        temperature=0.2,
        top_p=0.9,
        truncation="auto",
        parallel_tool_calls=False,
        tool_choice="none",
        tools=[],
        text={"format": {"type": "text"}},
        safety_identifier="user-1",
        prompt_cache_key="greetings",
        service_tier="auto",
        max_tool_calls=3,
        include=[],
    )

    assert response.output_text == "hi there"
    assert (response.temperature, response.top_p) == (0.2, 0.9)
    assert response.truncation == "auto"
    assert response.parallel_tool_calls is False
    assert response.tool_choice == "none"
    assert response.safety_identifier == "user-1"


def test_a_list_of_items_is_read_and_listed_back_newest_first(stored: openai.OpenAI) -> None:
    earlier_answer = f"msg_{uuid.uuid4().hex}"
    items: list[ResponseInputItemParam] = [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is the weather "},
                {"type": "input_text", "text": "in Paris?"},
            ],
        },
        {
            "type": "message",
            "id": earlier_answer,
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_weather",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_weather", "output": "sunny, 21 C"},
        _user("Thanks, and tomorrow?"),
    ]

    response = stored.responses.create(model="echo", input=items)
    listed = stored.responses.input_items.list(response.id)

    assert response.output_text == "Thanks, and tomorrow?"
    newest, output, call, answer, oldest = listed.data
    assert isinstance(newest, ResponseInputMessageItem)
    assert (newest.role, _text(newest)) == ("user", "Thanks, and tomorrow?")
    assert isinstance(output, ResponseFunctionToolCallOutputItem)
    assert (output.call_id, output.output) == ("call_weather", "sunny, 21 C")
    assert isinstance(call, ResponseFunctionToolCallItem)
    assert (call.call_id, call.name, call.arguments) == (
        "call_weather",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert isinstance(answer, ResponseOutputMessage)
    assert (answer.id, answer.role) == (earlier_answer, "assistant")
    assert _text(answer) == "Let me look."
    assert isinstance(oldest, ResponseInputMessageItem)
    assert oldest.role == "user"
    assert [part.type for part in oldest.content] == ["input_text", "input_text"]
    assert _text(oldest) == "What is the weather in Paris?"
    assert not listed.has_more
    assert all(isinstance(item.id, str) and item.id for item in listed.data)

    plain = stored.responses.input_items.with_raw_response.list(response.id).http_response.json()
    validate("ResponseItemList", plain)
    assert plain["first_id"] == newest.id
    assert plain["last_id"] == oldest.id


def test_input_items_are_paged_with_limit_after_and_order(stored: openai.OpenAI) -> None:
    words = ["one", "two", "three", "four", "five"]
    response = stored.responses.create(model="echo", input=[_user(word) for word in words])

    first = stored.responses.input_items.list(response.id, limit=2, order="asc")
    second = stored.responses.input_items.list(
        response.id, limit=2, order="asc", after=first.data[-1].id
    )
    third = stored.responses.input_items.list(
        response.id, limit=2, order="asc", after=second.data[-1].id
    )
    newest = stored.responses.input_items.list(response.id, limit=2)
    every = list(stored.responses.input_items.list(response.id, limit=2))

    assert [_text(item) for item in first.data] == ["one", "two"]
    assert first.has_more
    assert [_text(item) for item in second.data] == ["three", "four"]
    assert second.has_more
    assert [_text(item) for item in third.data] == ["five"]
    assert not third.has_more
    assert [_text(item) for item in newest.data] == ["five", "four"]
    # The SDK's auto-paging walks the pages by ``after``, newest first.
    assert [_text(item) for item in every] == ["five", "four", "three", "two", "one"]

    plain = stored.responses.input_items.with_raw_response.list(
        response.id, limit=2, order="desc", after=newest.data[-1].id
    ).http_response.json()
    validate("ResponseItemList", plain)
    assert [item["content"][0]["text"] for item in plain["data"]] == ["three", "two"]
    assert plain["has_more"] is True


def test_max_output_tokens_cuts_the_answer_and_leaves_it_incomplete(
    client: openai.OpenAI,
) -> None:
    raw = client.responses.with_raw_response.create(
        model="echo", input=QUESTION, max_output_tokens=2
    )
    response = raw.parse()

    validate("Response", raw.http_response.json())
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert response.output_text == "Hello there,"
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.status == "incomplete"
    assert response.usage is not None
    assert response.usage.output_tokens == 2
    assert client.responses.retrieve(response.id).status == "incomplete"


# --- Streaming ----------------------------------------------------------------------------


def test_a_stream_sends_openais_events_in_order_each_as_the_spec_describes(
    server: LiveServer,
) -> None:
    events = _events(server, {"model": "echo", "input": QUESTION})

    kinds = [event["type"] for event in events]
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    assert kinds == [
        *OPENING,
        *["response.output_text.delta"] * 5,
        *CLOSING,
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert "".join(deltas) == QUESTION
    text_done = events[kinds.index("response.output_text.done")]
    assert text_done["text"] == QUESTION
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == QUESTION
    assert completed["usage"]["input_tokens"] == 5
    assert completed["usage"]["output_tokens"] == 5
    # Every event speaks of the one response and its one message.
    assert {events[0]["response"]["id"], completed["id"]} == {completed["id"]}
    item_id = completed["output"][0]["id"]
    assert {event["item_id"] for event in events if "item_id" in event} == {item_id}
    for event in events:
        validate("ResponseStreamEvent", event)


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(server: LiveServer) -> None:
    events = _events(server, {"model": "echo", "input": QUESTION, "max_output_tokens": 3})

    kinds = [event["type"] for event in events]
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    assert kinds == [
        *OPENING,
        *["response.output_text.delta"] * 3,
        *CLOSING,
        "response.incomplete",
    ]
    assert "".join(deltas) == "Hello there, how"
    incomplete = events[-1]["response"]
    assert incomplete["status"] == "incomplete"
    assert incomplete["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[kinds.index("response.output_item.done")]["item"]["status"] == "incomplete"
    for event in events:
        validate("ResponseStreamEvent", event)


@pytest.mark.parametrize(
    ("model", "message"),
    [("broken-mid-stream", "The server had an error"), ("overloaded-mid-stream", "overloaded")],
)
def test_a_stream_whose_model_fails_midway_ends_with_response_failed(
    server: LiveServer, model: str, message: str
) -> None:
    events = _events(server, {"model": model, "input": "one two three four"})

    kinds = [event["type"] for event in events]
    assert kinds[: len(OPENING)] == OPENING
    assert kinds[-1] == "response.failed"
    assert set(kinds[len(OPENING) : -1]) == {"response.output_text.delta"}
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert message in failed["error"]["message"]
    assert "secret internal detail" not in json.dumps(events)
    for event in events:
        validate("ResponseStreamEvent", event)


def test_the_sdks_stream_helper_reads_the_events_and_the_final_response(
    client: openai.OpenAI,
) -> None:
    with client.responses.stream(model="echo-slow", input="streamed word by word") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert kinds == [*OPENING, *["response.output_text.delta"] * 4, *CLOSING, "response.completed"]
    assert final.status == "completed"
    assert final.output_text == "streamed word by word"


def test_create_with_stream_true_gives_typed_events(client: openai.OpenAI) -> None:
    stream = client.responses.create(model="echo", input="one two", stream=True)
    with stream:
        events = list(stream)

    assert [event.type for event in events] == [
        *OPENING,
        "response.output_text.delta",
        "response.output_text.delta",
        *CLOSING,
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output_text == "one two"


def test_a_streamed_response_is_stored_and_continued_as_soon_as_it_ends(
    stored: openai.OpenAI,
) -> None:
    with stored.responses.stream(model="echo", input="first question") as stream:
        first = stream.get_final_response()

    second = stored.responses.create(
        model="echo", input="second question", previous_response_id=first.id
    )

    assert stored.responses.retrieve(first.id).output_text == "first question"
    assert second.output_text == "second question"
    assert second.usage is not None
    assert second.usage.input_tokens == 6


# --- State: continuing, retrieving, deleting -----------------------------------------------


def test_a_continuation_sees_the_earlier_turn(stored: openai.OpenAI) -> None:
    first = stored.responses.create(model="echo", input="first question")
    second = stored.responses.create(
        model="echo", input="second question", previous_response_id=first.id
    )
    third = stored.responses.create(
        model="echo", input="third question", previous_response_id=second.id
    )

    assert second.output_text == "second question"
    assert second.previous_response_id == first.id
    assert first.usage is not None
    assert second.usage is not None
    assert third.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    # Two words each: the first question, its answer, the second question; then two more.
    assert (first.usage.input_tokens, second.usage.input_tokens) == (2, 6)
    assert third.usage.input_tokens == 10
    # A response lists the input of its own turn only.
    assert [_text(item) for item in stored.responses.input_items.list(second.id)] == [
        "second question"
    ]


def test_instructions_are_not_carried_over_to_a_continuation(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="echo", input="first question", instructions="Be very brief."
    )
    second = client.responses.create(
        model="echo", input="second question", previous_response_id=first.id
    )

    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.input_tokens == 5
    assert second.instructions is None
    assert second.usage.input_tokens == 6


def test_a_response_is_retrieved_as_it_was_created(client: openai.OpenAI) -> None:
    created = client.responses.create(
        model="echo", input=QUESTION, instructions="Be brief.", metadata={"k": "v"}
    )

    raw = client.responses.with_raw_response.retrieve(created.id)
    body = raw.http_response.json()

    validate("Response", body)
    assert body == created.to_dict(mode="json") | {"output": body["output"]}
    assert raw.parse().output_text == QUESTION
    assert [item["id"] for item in body["output"]] == [item.id for item in created.output]


def test_replaying_a_responses_events_is_refused_naming_stream(client: openai.OpenAI) -> None:
    created = client.responses.create(model="echo", input="no replays")

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.retrieve(created.id, stream=True)

    assert _error(caught)["param"] == "stream"
    assert client.responses.retrieve(created.id).output_text == "no replays"


def test_a_deleted_response_is_not_found(stored: openai.OpenAI) -> None:
    first = stored.responses.create(model="echo", input="soon gone")

    deleted = stored.responses.with_raw_response.delete(first.id).http_response
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as retrieved:
        stored.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as deleted_again:
        stored.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as listed:
        stored.responses.input_items.list(first.id)
    with pytest.raises(openai.NotFoundError) as continued:
        stored.responses.create(model="echo", input="again", previous_response_id=first.id)

    assert retrieved.value.status_code == 404
    error = _error(retrieved)
    assert error["type"] == "invalid_request_error"
    assert first.id in error["message"]
    assert _error(deleted_again)["param"] == "response_id"
    assert _error(listed)["param"] == "response_id"
    assert _error(continued)["param"] == "previous_response_id"


def test_the_sdks_delete_succeeds(client: openai.OpenAI) -> None:
    created = client.responses.create(model="echo", input="delete me")

    client.responses.delete(created.id)

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_a_response_not_stored_cannot_be_retrieved_or_continued(stored: openai.OpenAI) -> None:
    raw = stored.responses.with_raw_response.create(model="echo", input="keep nothing", store=False)
    response = raw.parse()

    with pytest.raises(openai.NotFoundError) as retrieved:
        stored.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as continued:
        stored.responses.create(model="echo", input="next", previous_response_id=response.id)

    assert raw.http_response.json()["store"] is False
    assert response.output_text == "keep nothing"
    assert retrieved.value.status_code == 404
    _error(retrieved)
    assert continued.value.status_code == 404
    assert _error(continued)["param"] == "previous_response_id"


def test_a_streamed_response_not_stored_cannot_be_retrieved(
    client: openai.OpenAI, server: LiveServer
) -> None:
    events = _events(server, {"model": "echo", "input": "keep nothing", "store": False})
    response_id = events[-1]["response"]["id"]

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)

    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["store"] is False


def test_an_item_reference_brings_back_an_earlier_answer(stored: openai.OpenAI) -> None:
    first = stored.responses.create(model="echo", input="first question")
    answer = first.output[0].id
    assert isinstance(answer, str)

    second = stored.responses.create(
        model="echo", input=[{"type": "item_reference", "id": answer}, _user("second question")]
    )
    listed = stored.responses.input_items.list(second.id, order="asc")

    assert second.output_text == "second question"
    assert second.usage is not None
    # The earlier answer (two words) is read before the new question (two words).
    assert second.usage.input_tokens == 4
    referenced, asked = listed.data
    assert isinstance(referenced, ResponseOutputMessage)
    assert (referenced.id, referenced.role, _text(referenced)) == (
        answer,
        "assistant",
        "first question",
    )
    assert _text(asked) == "second question"


def test_an_unknown_previous_response_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="echo", input="hi", previous_response_id="resp_unknown")

    assert _error(caught)["param"] == "previous_response_id"


def test_previous_response_id_and_conversation_together_are_refused(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(model="echo", input="first question")
    conversation = client.conversations.create()

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="echo",
            input="second question",
            previous_response_id=first.id,
            conversation=conversation.id,
        )

    assert caught.value.status_code == 400
    assert _error(caught)["param"] == "conversation"


# --- Owners -------------------------------------------------------------------------------


def test_another_keys_response_is_not_found(stored_server: LiveServer, sdk: SdkFactory) -> None:
    owner = sdk(stored_server, str(make_key(stored_server)["key"]))
    stranger = sdk(stored_server, str(make_key(stored_server)["key"]))
    mine = owner.responses.create(model="echo", input="mine alone")
    running = owner.responses.create(model="echo-silent", input="mine", background=True)

    with pytest.raises(openai.NotFoundError) as retrieved:
        stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as deleted:
        stranger.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as listed:
        stranger.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError) as continued:
        stranger.responses.create(model="echo", input="theirs", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError) as counted:
        stranger.responses.input_tokens.count(
            model="echo", input="theirs", previous_response_id=mine.id
        )
    with pytest.raises(openai.NotFoundError) as cancelled:
        stranger.responses.cancel(running.id)

    for caught in (retrieved, deleted, listed, continued, counted, cancelled):
        assert caught.value.status_code == 404
        _error(caught)
    assert _error(continued)["param"] == "previous_response_id"
    # The stranger's attempts changed nothing: the owner still has both.
    assert owner.responses.retrieve(mine.id).output_text == "mine alone"
    assert owner.responses.cancel(running.id).status == "cancelled"


def test_without_a_key_responses_are_refused(stored_server: LiveServer, sdk: SdkFactory) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(stored_server, "sk-not-a-key").responses.create(model="echo", input="hi")

    assert caught.value.status_code == 401
    _error(caught)


# --- Background ---------------------------------------------------------------------------


def test_a_background_response_is_queued_at_once_and_completes(stored: openai.OpenAI) -> None:
    raw = stored.responses.with_raw_response.create(
        model="echo-slow", input="done in the background", background=True
    )
    queued = raw.parse()

    assert queued.status in ("queued", "in_progress")
    assert queued.background is True
    assert queued.output == []
    finished = _finished(stored, queued.id)
    assert finished.status == "completed"
    assert finished.output_text == "done in the background"
    assert finished.usage is not None
    assert finished.usage.output_tokens == 4
    assert [_text(item) for item in stored.responses.input_items.list(queued.id)] == [
        "done in the background"
    ]
    validate("Response", raw.http_response.json())
    validate(
        "Response", stored.responses.with_raw_response.retrieve(queued.id).http_response.json()
    )


def test_a_finished_background_response_can_be_continued(stored: openai.OpenAI) -> None:
    queued = stored.responses.create(model="echo", input="first question", background=True)
    _finished(stored, queued.id)

    second = stored.responses.create(
        model="echo", input="second question", previous_response_id=queued.id
    )

    assert second.output_text == "second question"
    assert second.usage is not None
    assert second.usage.input_tokens == 6


@pytest.fixture
def running(stored: openai.OpenAI) -> Iterator[Response]:
    """A background response on a model that takes five seconds a word, cancelled after."""
    response = stored.responses.create(model="echo-silent", input="never finished", background=True)
    yield response
    stored.responses.cancel(response.id)


def test_a_background_response_is_cancelled_and_stays_cancelled(
    stored: openai.OpenAI, running: Response
) -> None:
    raw = stored.responses.with_raw_response.cancel(running.id)
    cancelled = raw.parse()

    assert cancelled.id == running.id
    assert cancelled.status == "cancelled"
    assert cancelled.output == []
    assert stored.responses.retrieve(running.id).status == "cancelled"
    # Cancelling again gives the cancelled response as it is.
    assert stored.responses.cancel(running.id).status == "cancelled"
    assert stored.responses.retrieve(running.id).status == "cancelled"
    validate("Response", raw.http_response.json())


def test_a_background_response_whose_model_fails_reads_as_failed(client: openai.OpenAI) -> None:
    queued = client.responses.create(
        model="broken-mid-stream", input="one two three", background=True
    )

    failed = _finished(client, queued.id)

    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "server_error"
    assert "secret internal detail" not in failed.error.message
    validate(
        "Response", client.responses.with_raw_response.retrieve(queued.id).http_response.json()
    )


def test_a_running_background_response_cannot_be_continued_yet(
    stored: openai.OpenAI, running: Response
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stored.responses.create(model="echo", input="too soon", previous_response_id=running.id)

    assert _error(caught)["param"] == "previous_response_id"


def test_a_foreground_response_cannot_be_cancelled(client: openai.OpenAI) -> None:
    response = client.responses.create(model="echo", input="already done")

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(response.id)

    assert caught.value.status_code == 400
    _error(caught)
    assert client.responses.retrieve(response.id).status == "completed"


def test_a_background_response_must_be_stored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="echo", input="hi", background=True, store=False)

    assert _error(caught)["param"] == "background"


def test_a_background_response_cannot_be_streamed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="echo", input="hi", background=True, stream=True)

    assert _error(caught)["param"] == "stream"


# --- Errors -------------------------------------------------------------------------------

SCHEMA_FORMAT = {
    "type": "json_schema",
    "name": "answer",
    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        pytest.param(
            {"model": "no-such-model", "input": "hi"},
            404,
            "model",
            "model_not_found",
            id="unknown-model",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "text": {"format": SCHEMA_FORMAT}},
            400,
            "text.format",
            "unsupported_parameter",
            id="structured-output-on-echo",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "tools": [FUNCTION]},
            400,
            "tools",
            "unsupported_parameter",
            id="function-tools-on-echo",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "tools": [{"type": "web_search"}]},
            400,
            "tools[0].type",
            "unsupported_parameter",
            id="built-in-tool",
        ),
        pytest.param(
            {"model": "echo", "input": [_user("hi"), {"type": "web_search_call", "id": "ws_1"}]},
            400,
            "input[1]",
            "invalid_value",
            id="unknown-item-type",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "include": ["file_search_call.results"]},
            400,
            "include[0]",
            "unsupported_parameter",
            id="include-of-a-tool",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "prompt": {"id": "pmpt_1"}},
            400,
            "prompt",
            "unsupported_parameter",
            id="prompt-template",
        ),
        pytest.param(
            {"model": "echo", "input": []},
            400,
            "input",
            "missing_required_parameter",
            id="empty-input",
        ),
        pytest.param(
            {"model": "echo"},
            400,
            "input",
            "missing_required_parameter",
            id="no-input",
        ),
        pytest.param(
            {"model": "echo", "input": [{"type": "item_reference", "id": "msg_unknown"}]},
            400,
            "input[0].id",
            None,
            id="unknown-item-reference",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "text": {"format": {"type": "json_object"}}},
            400,
            "text.format",
            "unsupported_parameter",
            id="json-mode-on-echo",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "text": {"format": {"type": "xml"}}},
            400,
            "text.format.type",
            "invalid_value",
            id="unknown-text-format",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "reasoning": {"effort": "low"}},
            400,
            "reasoning.effort",
            "unsupported_parameter",
            id="reasoning-effort-on-echo",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "include": ["message.output_text.logprobs"]},
            400,
            "include",
            "unsupported_parameter",
            id="logprobs-on-echo",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "top_logprobs": 3},
            400,
            "top_logprobs",
            "invalid_value",
            id="top-logprobs-without-include",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "max_output_tokens": 0},
            400,
            "max_output_tokens",
            "invalid_value",
            id="no-output-tokens",
        ),
        pytest.param(
            {"model": "echo", "input": [{"role": "bot", "content": "hi"}]},
            400,
            "input[0].role",
            "invalid_value",
            id="unknown-role",
        ),
        pytest.param(
            {"model": "echo", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            400,
            "input[0].call_id",
            "missing_required_parameter",
            id="function-call-without-call-id",
        ),
        pytest.param(
            {
                "model": "echo",
                "input": [
                    {"type": "function_call_output", "call_id": "call_none", "output": "21 C"},
                ],
            },
            400,
            "input",
            "invalid_value",
            id="function-call-output-without-its-call",
        ),
        pytest.param(
            {
                "model": "echo",
                "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}],
            },
            400,
            "input",
            "invalid_value",
            id="nothing-but-a-call-without-its-output",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "conversation": "conv_unknown"},
            404,
            "conversation",
            None,
            id="unknown-conversation",
        ),
        pytest.param(
            {"model": "echo", "input": "hi", "previous_response_id": "resp_x", "conversation": "c"},
            400,
            "conversation",
            "invalid_value",
            id="previous-response-and-conversation",
        ),
    ],
)
def test_a_request_the_server_cannot_serve_is_refused_in_openais_envelope(
    server: LiveServer, body: dict[str, Any], status: int, param: str, code: str | None
) -> None:
    answer = httpx.post(f"{server.base_url}/v1/responses", json=body)

    assert answer.status_code == status
    error = _http_error(answer)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_an_output_answers_a_call_of_the_response_it_continues(stored: openai.OpenAI) -> None:
    call: ResponseInputItemParam = {
        "type": "function_call",
        "call_id": "call_weather",
        "name": "get_weather",
        "arguments": "{}",
    }
    first = stored.responses.create(model="echo", input=[_user("Weather?"), call])
    answered = stored.responses.create(
        model="echo",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_weather", "output": "21 C"}],
    )
    # A call nobody answered does not stop a conversation: the next turn is read.
    left = stored.responses.create(
        model="echo", previous_response_id=first.id, input="Never mind, thanks."
    )

    assert answered.status == "completed"
    assert left.output_text == "Never mind, thanks."
    with pytest.raises(openai.BadRequestError) as caught:
        stored.responses.create(
            model="echo",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_other", "output": "21 C"}],
        )
    assert _error(caught)["message"] == (
        "No tool call found for function call output with call_id call_other."
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order")],
)
def test_input_items_refuse_a_bad_page_request(
    client: openai.OpenAI, server: LiveServer, query: dict[str, Any], param: str
) -> None:
    response = client.responses.create(model="echo", input="hi")

    answer = httpx.get(f"{server.base_url}/v1/responses/{response.id}/input_items", params=query)

    assert answer.status_code == 400
    assert _http_error(answer)["param"] == param


def test_the_sdk_raises_its_own_class_for_each_refusal(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as structured:
        client.responses.create(
            model="echo",
            input="hi",
            text={"format": {"type": "json_schema", "name": "answer", "schema": {}}},
        )
    with pytest.raises(openai.BadRequestError) as tools:
        client.responses.create(
            model="echo",
            input="hi",
            tools=[{"type": "function", "name": "f", "parameters": {}, "strict": False}],
        )

    assert unknown.value.code == "model_not_found"
    assert structured.value.param == "text.format"
    assert tools.value.param == "tools"


def test_a_refused_stream_is_a_status_code_not_an_event(server: LiveServer) -> None:
    answer = httpx.post(
        f"{server.base_url}/v1/responses",
        json={"model": "echo", "input": "hi", "stream": True, "tools": [FUNCTION]},
    )

    assert answer.status_code == 400
    assert _http_error(answer)["param"] == "tools"


# --- Input tokens -------------------------------------------------------------------------


def test_input_tokens_are_counted_and_grow_with_the_input(
    client: openai.OpenAI, server: LiveServer
) -> None:
    short = client.responses.input_tokens.count(model="echo", input="one two three")
    longer = client.responses.input_tokens.count(
        model="echo", input="one two three four five six seven"
    )
    instructed = client.responses.input_tokens.count(
        model="echo", input="one two three", instructions="Count these."
    )

    assert short.object == "response.input_tokens"
    assert 0 < short.input_tokens < longer.input_tokens
    assert instructed.input_tokens > short.input_tokens
    plain = httpx.post(
        f"{server.base_url}/v1/responses/input_tokens",
        json={"model": "echo", "input": [_user("one"), _user("two")]},
    )
    assert plain.status_code == 200
    validate("TokenCountsResource", plain.json())


def test_input_tokens_are_what_the_response_reads(client: openai.OpenAI) -> None:
    first = client.responses.create(model="echo", input="first question")
    counted = client.responses.input_tokens.count(
        model="echo", input="second question", previous_response_id=first.id
    )
    second = client.responses.create(
        model="echo", input="second question", previous_response_id=first.id
    )

    assert second.usage is not None
    assert counted.input_tokens == second.usage.input_tokens


def test_counting_the_input_tokens_of_an_unknown_model_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.input_tokens.count(model="no-such-model", input="hi")

    assert _error(caught)["code"] == "model_not_found"


# --- The async client ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_async_client_creates_streams_and_retrieves(
    async_client: openai.AsyncOpenAI,
) -> None:
    created = await async_client.responses.create(model="echo", input="async works")
    async with async_client.responses.stream(model="echo-slow", input="async streams") as stream:
        kinds = [event.type async for event in stream]
        streamed = await stream.get_final_response()
    retrieved = await async_client.responses.retrieve(streamed.id)
    continued = await async_client.responses.create(
        model="echo", input="and continues", previous_response_id=created.id
    )

    assert created.output_text == "async works"
    assert kinds == [*OPENING, *["response.output_text.delta"] * 2, *CLOSING, "response.completed"]
    assert streamed.output_text == "async streams"
    assert retrieved.output_text == "async streams"
    assert retrieved.status == "completed"
    assert continued.output_text == "and continues"


@pytest.mark.anyio
async def test_the_async_client_runs_and_cancels_background_responses(
    async_client: openai.AsyncOpenAI,
) -> None:
    queued = await async_client.responses.create(
        model="echo-silent", input="never finished", background=True
    )
    cancelled = await async_client.responses.cancel(queued.id)
    with pytest.raises(openai.NotFoundError):
        await async_client.responses.retrieve("resp_unknown")

    assert queued.status in ("queued", "in_progress")
    assert cancelled.status == "cancelled"
    assert (await async_client.responses.retrieve(queued.id)).status == "cancelled"


# --- Rate limits --------------------------------------------------------------------------


def _limits(headers: Mapping[str, str]) -> tuple[str, str, int, int]:
    return (
        headers["x-ratelimit-limit-requests"],
        headers["x-ratelimit-limit-tokens"],
        int(headers["x-ratelimit-remaining-requests"]),
        int(headers["x-ratelimit-remaining-tokens"]),
    )


def test_responses_carry_openai_rate_limit_headers(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=50, rate_limit_tpm=10_000)
    client = sdk(server, "sk-anything")

    answered = client.responses.with_raw_response.create(model="echo", input=QUESTION)
    with client.responses.with_streaming_response.create(
        model="echo", input=QUESTION, stream=True
    ) as streamed:
        stream_headers = streamed.headers
        streamed.read()
    queued = client.responses.with_raw_response.create(
        model="echo", input=QUESTION, background=True
    )
    _finished(client, queued.parse().id)

    for headers in (answered.headers, stream_headers, queued.headers):
        limit_requests, limit_tokens, remaining_requests, remaining_tokens = _limits(headers)
        assert (limit_requests, limit_tokens) == ("50", "10000")
        # Each answer counts itself: fewer than the limit remain.
        assert 0 <= remaining_requests < 50
        assert 0 <= remaining_tokens < 10_000
        assert headers["x-ratelimit-reset-requests"]
        assert headers["x-ratelimit-reset-tokens"]


def test_a_response_beyond_the_request_limit_is_refused_with_429(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=1)
    client = sdk(server, "sk-anything")
    # Both requests must fall in one minute's window.
    if (left := 60 - time.time() % 60) < 3:
        time.sleep(left + 0.05)

    client.responses.create(model="echo", input="one")
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="echo", input="two")

    assert caught.value.status_code == 429
    error = _error(caught)
    assert error["type"] == "requests"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
