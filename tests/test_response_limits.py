"""What the stored state of the Responses API lets a caller make the server do: a turn reads
a bounded context, a deleted turn leaves the history cleanly, and what cannot be offered is
refused by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import SdkFactory, ServerFactory

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 20


def test_a_context_larger_than_a_turn_may_read_is_refused_or_truncated(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(max_context_chars=6000), "sk-anything")
    previous = None
    for _ in range(3):
        previous = client.responses.create(
            model="echo", input=WORDS, previous_response_id=previous
        ).id

    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="echo", input="last", previous_response_id=previous)
    fitted = client.responses.create(
        model="echo", input="last", previous_response_id=previous, truncation="auto"
    )

    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "previous_response_id"
    assert fitted.output_text == "last"
    assert fitted.usage is not None
    # A turn's two items hold about 2,700 characters: the last two turns fit, the first not.
    assert fitted.usage.input_tokens == 2 * (200 + 200) + 1


def test_results_whose_calls_truncation_left_out_are_still_taken(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(max_context_chars=6000), "sk-anything")
    long_call: Any = {
        "type": "function_call",
        "call_id": "call_long",
        "name": "note",
        "arguments": '{"text": "' + "x" * 7000 + '"}',
    }
    short_call: Any = {**long_call, "call_id": "call_short", "arguments": "{}"}
    first = client.responses.create(
        model="echo", input=[{"role": "user", "content": "Note it."}, long_call, short_call]
    )
    results: Any = [
        {"type": "function_call_output", "call_id": "call_long", "output": "noted"},
        {"type": "function_call_output", "call_id": "call_short", "output": "noted"},
        {"role": "user", "content": "Thanks."},
    ]

    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="echo", input=results, previous_response_id=first.id)
    fitted = client.responses.create(
        model="echo", input=results, previous_response_id=first.id, truncation="auto"
    )

    assert refused.value.code == "context_length_exceeded"
    assert fitted.status == "completed"
    assert fitted.output_text == "Thanks."


def test_a_conversation_larger_than_a_turn_may_read_is_refused(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(max_context_chars=6000), "sk-anything")
    conversation = client.conversations.create(
        items=[{"role": "user", "content": WORDS} for _ in range(5)]
    )

    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="echo", input="next", conversation=conversation.id)
    counted = client.responses.input_tokens.count(
        model="echo", input="next", conversation=conversation.id, truncation="auto"
    )

    assert refused.value.param == "conversation"
    # Each item holds about 1,300 characters: the newest four fit.
    assert counted.input_tokens == 4 * 200 + 1


def test_deleting_a_turn_in_the_middle_takes_only_that_turn_out_of_the_history(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(), "sk-anything")
    first = client.responses.create(model="echo", input="one")
    second = client.responses.create(model="echo", input="two two", previous_response_id=first.id)
    third = client.responses.create(
        model="echo", input="three three three", previous_response_id=second.id
    )
    before = client.responses.input_tokens.count(
        model="echo", input="x", previous_response_id=third.id
    )

    client.responses.delete(second.id)
    after = client.responses.input_tokens.count(
        model="echo", input="x", previous_response_id=third.id
    )

    # one + one (the first turn), three + three (the third), x: the second's four are gone.
    assert before.input_tokens == 1 + 1 + 2 + 2 + 3 + 3 + 1
    assert after.input_tokens == before.input_tokens - 4


def test_replaying_a_responses_events_is_refused_by_name(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server()
    created = sdk(server, "sk-anything").responses.create(model="echo", input="hello")

    answer = httpx.get(f"{server.base_url}/v1/responses/{created.id}?stream=true")

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "stream"
    assert answer.json()["error"]["code"] == "unsupported_parameter"


def test_a_malformed_conversation_is_named_as_the_client_wrote_it(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(), "sk-anything")

    with pytest.raises(openai.BadRequestError) as empty:
        client.responses.create(model="echo", input="x", conversation={})  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.responses.create(model="echo", input="x", conversation="c" * 1000)

    assert empty.value.param == "conversation.id"
    assert too_long.value.param == "conversation"


@pytest.mark.parametrize("reference", [{"type": None, "id": "msg_nope"}, {"id": "msg_nope"}])
def test_an_item_reference_without_its_type_is_looked_up_when_counting(
    start_server: ServerFactory, reference: dict[str, object]
) -> None:
    server = start_server()

    answer = httpx.post(
        f"{server.base_url}/v1/responses/input_tokens",
        json={"model": "echo", "input": [reference]},
    )

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input[0].id"


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "not reached in 30 s"
        time.sleep(0.05)


def test_a_background_response_cut_by_a_shutdown_reads_failed_after_the_restart(
    start_server: ServerFactory, sdk: SdkFactory, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'background.db'}"
    first = start_server(database_url=database)
    client = sdk(first, "sk-anything")
    started = client.responses.create(model="echo-silent", input="one two", background=True)
    _until(lambda: client.responses.retrieve(started.id).status == "in_progress")

    first.__exit__(None, None, None)  # a graceful shutdown, as on SIGTERM
    after = sdk(start_server(database_url=database), "sk-anything").responses.retrieve(started.id)

    assert after.status == "failed"
    assert after.error is not None
    assert "shut down" in after.error.message


def test_a_cancel_taken_by_another_server_stops_the_one_generating(
    start_server: ServerFactory, sdk: SdkFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    generating = sdk(start_server(database_url=database, background_lease_seconds=2), "k")
    other = sdk(start_server(database_url=database, background_lease_seconds=2), "k")
    started = generating.responses.create(model="echo-silent", input="a b c", background=True)
    _until(lambda: other.responses.retrieve(started.id).status == "in_progress")

    cancelled = other.responses.cancel(started.id)
    _until(lambda: "background response stopped" in caplog.text)

    assert cancelled.status == "cancelled"
    assert generating.responses.retrieve(started.id).status == "cancelled"


_IMAGE = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"}
_FILE = {"type": "input_file", "file_id": "file_1"}
_AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
_TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "see"}, part]}]},
            "input",
            "unsupported_parameter",
        )
        for part in (_IMAGE, _FILE, _AUDIO)
    ]
    + [
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "invalid_value"),
        ({"input": "x", "tools": [_TOOL], "tool_choice": "sometimes"}, "tool_choice", None),
        (
            {"input": "x", "tools": [_TOOL], "tool_choice": {"type": "function", "name": "f"}},
            "tools",
            "unsupported_parameter",
        ),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format", None),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", None),
    ],
    ids=[
        "image",
        "file",
        "audio",
        "nameless tool",
        "tool choice",
        "function choice",
        "schema without name",
        "unknown format",
    ],
)
def test_what_echo_cannot_read_is_refused_naming_it(
    start_server: ServerFactory, body: dict[str, object], param: str, code: str | None
) -> None:
    server = start_server()

    answer = httpx.post(f"{server.base_url}/v1/responses", json={"model": "echo", **body})

    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_earlier_answers_refusals_and_reasoning_are_kept_as_input(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    client = sdk(start_server(), "sk-anything")
    items: list[dict[str, object]] = [
        {"type": "reasoning", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "refusal", "refusal": "I cannot."},
                {"type": "output_text", "text": "Yes."},
            ],
        },
        {"role": "user", "content": "say this"},
    ]

    response = client.responses.create(model="echo", input=items)  # type: ignore[arg-type]
    listed = client.responses.input_items.list(response.id, order="asc").data

    assert response.output_text == "say this"
    assert [item.type for item in listed] == ["reasoning", "message", "message"]
    assert listed[0].id.startswith("rs_")
