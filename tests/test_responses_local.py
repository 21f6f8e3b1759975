"""The Responses API on the bundled local model: structured output under its grammar, token
counts by its own tokenizer, and a context cut to fit with ``truncation: auto``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest

from tests.servers import LiveServer
from tests.spec import validate

MODEL = "gemma-3-270m"


@pytest.fixture
def sdk(llama_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{llama_server.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def test_a_local_model_answers_a_response(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model=MODEL, input="What is the capital of France?", temperature=0
    )

    assert "Paris" in response.output_text
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens > 5
    validate("Response", response.model_dump(mode="json", exclude_unset=True))


def test_text_format_json_schema_is_followed(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Bounded, so that the longest answer the schema allows fits in max_output_tokens.
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }

    response = sdk.responses.create(
        model=MODEL,
        input="Describe a cat as JSON.",
        text={"format": {"type": "json_schema", "name": "cat", "schema": schema, "strict": True}},
        max_output_tokens=64,
        temperature=0,
    )

    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_a_contradictory_schema_is_refused_naming_text_format(sdk: openai.OpenAI) -> None:
    schema = {"type": "integer", "minimum": 5, "maximum": 1}

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(
            model=MODEL,
            input="x",
            text={"format": {"type": "json_schema", "name": "bad", "schema": schema}},
        )

    assert caught.value.param == "text.format"
    assert caught.value.code == "invalid_json_schema"


def test_input_tokens_are_counted_by_the_models_tokenizer(sdk: openai.OpenAI) -> None:
    instructions = "Answer in one word."
    question = "What colour is the sky on a clear day?"

    counted = sdk.responses.input_tokens.count(
        model=MODEL, instructions=instructions, input=question
    )
    response = sdk.responses.create(
        model=MODEL, instructions=instructions, input=question, max_output_tokens=16
    )

    assert response.usage is not None
    assert counted.input_tokens == response.usage.input_tokens


def test_function_tools_on_a_model_without_a_chat_template_are_refused_by_name(
    sdk: openai.OpenAI,
) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {}},
        "strict": False,
    }

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL, input="weather?", tools=[tool])  # type: ignore[list-item]

    assert caught.value.param == "tools"


def test_truncation_auto_drops_the_oldest_turns_to_fit(sdk: openai.OpenAI) -> None:
    # ``tiny-slot`` has a 128-token context: a few long turns no longer fit in it.
    long_text = "The quick brown fox jumps over the lazy dog. " * 6
    previous: str | None = None
    for _ in range(3):
        turn = sdk.responses.create(
            model="tiny-slot",
            input=long_text,
            max_output_tokens=4,
            previous_response_id=previous,
            truncation="auto",
        )
        previous = turn.id

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(
            model="tiny-slot", input="And now?", max_output_tokens=4, previous_response_id=previous
        )
    fitted = sdk.responses.create(
        model="tiny-slot",
        input="And now?",
        max_output_tokens=4,
        previous_response_id=previous,
        truncation="auto",
    )

    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "input"
    assert fitted.status in ("completed", "incomplete")
    assert fitted.usage is not None
    assert fitted.usage.input_tokens + 4 <= 128
    assert fitted.truncation == "auto"
