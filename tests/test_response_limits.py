"""What the stored state of the Responses API lets a caller make the server do: a turn reads
a bounded context, a deleted turn leaves the history cleanly, and what cannot be offered is
refused by name."""

from __future__ import annotations

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
