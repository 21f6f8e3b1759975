"""POST /v1/chat/completions without streaming, through the sync and async SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.conftest import SdkFactory, ServerFactory
from tests.servers import LiveServer
from tests.spec import validate

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there, how are you?"}]


def test_echo_replies_with_the_last_user_message(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
    )

    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    assert completion.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.message.content == "second question"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    # Echo counts words: 2 + 2 + 2 + 2 prompt words, 2 generated.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 2)
    assert completion.usage.total_tokens == 10


def test_response_matches_the_spec(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": HELLO, "n": 2, "max_tokens": 2},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    validate("CreateChatCompletionResponse", response.json())


def test_text_parts_are_joined(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}],
            }
        ],
    )

    assert completion.choices[0].message.content == "one two"


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, max_tokens=2)

    assert completion.choices[0].message.content == "Hello there,"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo", messages=HELLO, max_tokens=1, max_completion_tokens=3
    )

    assert completion.choices[0].message.content == "Hello there, how"


def test_stop_sequence_ends_the_reply_and_is_not_returned(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, stop=["how", "never"])

    assert completion.choices[0].message.content == "Hello there, "
    assert completion.choices[0].finish_reason == "stop"


def test_stop_sequence_split_across_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, stop="e, h")

    assert completion.choices[0].message.content == "Hello ther"


def test_a_reply_ending_like_the_start_of_a_stop_sequence_keeps_its_end(
    client: openai.OpenAI,
) -> None:
    # "you?" could have been the start of "you? Fine.": held back, then given back at the end.
    completion = client.chat.completions.create(model="echo", messages=HELLO, stop=["you? Fine."])

    assert completion.choices[0].message.content == "Hello there, how are you?"
    assert completion.choices[0].finish_reason == "stop"


def test_n_gives_independent_choices_and_sums_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, n=3)

    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert {choice.message.content for choice in completion.choices} == {
        "Hello there, how are you?"
    }
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 15


def test_every_honoured_parameter_is_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=HELLO,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="user-1",
        metadata={"topic": "greeting"},
        response_format={"type": "text"},
        tool_choice="none",
        stream=False,
    )

    assert completion.choices[0].message.content == "Hello there, how are you?"


def test_unknown_fields_are_ignored(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": HELLO, "a_future_field": {"x": 1}},
    )

    assert response.status_code == 200


def test_model_ids_with_slashes_resolve(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/v1/models/org/none")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.anyio
async def test_async_client(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "async works"}]
    )

    assert completion.choices[0].message.content == "async works"


@pytest.fixture
def reader(start_server: ServerFactory, tmp_path: Path) -> LiveServer:
    """A backend of an embedding application that reads images and takes tools, but cannot be
    told which tool to call (``tests/providers.py``)."""
    models = tmp_path / "models.toml"
    models.write_text('[models.reader]\nprovider = "reader"\nsupports = ["image_url", "tools"]\n')
    return start_server(models_file=models)


def test_a_backend_that_reads_images_gets_them_and_the_text_around_them(
    reader: LiveServer, sdk: SdkFactory
) -> None:
    completion = sdk(reader, "unused").chat.completions.create(
        model="reader",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "text", "text": "this picture?"},
                ],
            }
        ],
    )

    assert completion.choices[0].message.content == "read 'what is in this picture?' and 1 image(s)"


def test_a_parameter_a_backend_cannot_honour_is_refused_even_beside_one_it_can(
    reader: LiveServer, sdk: SdkFactory
) -> None:
    client = sdk(reader, "unused")
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather?"}]

    served = client.chat.completions.create(model="reader", messages=messages, tools=tools)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="reader", messages=messages, tools=tools, tool_choice="required"
        )

    assert served.choices[0].message.content == "read 'Weather?' and 0 image(s)"
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == "tool_choice"
