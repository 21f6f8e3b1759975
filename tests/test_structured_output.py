"""Structured output on the bundled model: real schemas are followed, bad ones are a 400.

Every schema here once hung or killed local inference for everyone (llama.cpp refused the
grammar we generated, or aborted the process). Now each request either gets JSON that
validates against its schema, or a 400 that names ``response_format``; and the model serves
the next plain request either way.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.servers import LiveServer

MODEL = "gemma-3-270m"

#: OpenAI's own example from its structured-outputs guide: a recursive linked list.
LINKED_LIST = {
    "type": "object",
    "properties": {"linked_list": {"$ref": "#/$defs/linked_list_node"}},
    "$defs": {
        "linked_list_node": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "next": {"anyOf": [{"$ref": "#/$defs/linked_list_node"}, {"type": "null"}]},
            },
            "additionalProperties": False,
            "required": ["next", "value"],
        }
    },
    "additionalProperties": False,
    "required": ["linked_list"],
}

FOLLOWED: list[tuple[str, dict[str, Any]]] = [
    ("a linked list with underscores in its names", LINKED_LIST),
    (
        "a pattern",
        {
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^\\d{5}$"}},
            "required": ["zip"],
        },
    ),
    ("a const with a double quote", {"const": 'say "cheese"'}),
    (
        "a property name with a double quote",
        {
            "type": "object",
            "properties": {'the "best" pick': {"type": "boolean"}},
            "required": ['the "best" pick'],
            "additionalProperties": False,
        },
    ),
    ("a long maxLength", {"type": "string", "maxLength": 2000}),
    ("a large maxItems", {"type": "array", "items": {"type": "integer"}, "maxItems": 5000}),
    ("an enum of 20,000 strings", {"enum": [f"choice-{n:05d}" for n in range(20_000)]}),
]

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("an empty enum", {"enum": []}, "Unsatisfiable"),
    ("a pattern with a reversed range", {"type": "string", "pattern": "^[z-a]$"}, "range"),
    ("a pattern that matches nothing", {"type": "string", "pattern": "[^\\s\\S]"}, "empty"),
    ("minimum above maximum", {"type": "integer", "minimum": 5, "maximum": 1}, "greater than"),
    ("minItems above maxItems", {"type": "array", "minItems": 3, "maxItems": 1}, "greater"),
    ("a reference to nothing", {"$ref": "#/$defs/nowhere"}, "does not exist"),
    ("a keyword it cannot hold output to", {"type": "array", "uniqueItems": True}, "uniqueItems"),
    ("an unknown type", {"type": "potato"}, "potato"),
]


#: Only a string can end this recursion (and jsonschema itself cannot validate against it).
LEFT_RECURSIVE = {
    "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "string"}]}},
    "$ref": "#/$defs/a",
}


def _ask(server: LiveServer, schema: dict[str, Any], **extra: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "max_tokens": 48,
        "seed": 7,
        **extra,
    }
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def _still_serves(server: LiveServer) -> None:
    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
        },
        timeout=60,
    )
    assert answer.status_code == 200
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("name", "schema"), FOLLOWED, ids=[name for name, _ in FOLLOWED])
def test_real_schemas_are_followed(
    llama_server: LiveServer, name: str, schema: dict[str, Any]
) -> None:
    answer = _ask(llama_server, schema)

    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    else:
        # Cut off by max_tokens: what there is still follows the grammar's path.
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"]
    _still_serves(llama_server)


@pytest.mark.parametrize(
    ("name", "schema", "reason"), REFUSED, ids=[name for name, _, _ in REFUSED]
)
def test_schemas_that_cannot_be_followed_are_a_400(
    llama_server: LiveServer, name: str, schema: dict[str, Any], reason: str
) -> None:
    for stream in (False, True):
        answer = _ask(llama_server, schema, stream=stream)

        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "response_format"
        assert error["code"] == "invalid_json_schema"
        assert reason in error["message"]
    _still_serves(llama_server)


def test_a_left_recursive_schema_is_followed(llama_server: LiveServer) -> None:
    # The schema allows a string of any length, which a sampled reply may not close within
    # its limit (prefix reuse can change a seeded sample, see the README): a reply cut short
    # is a string's valid beginning, and one of a few seeds closes it.
    finished = []
    for seed in range(7, 13):
        [choice] = _ask(llama_server, LEFT_RECURSIVE, seed=seed, max_tokens=256).json()["choices"]
        content = choice["message"]["content"]
        if choice["finish_reason"] != "stop":
            assert content.startswith('"')
            continue
        finished.append(json.loads(content))
        break
    assert finished
    assert all(isinstance(value, str) for value in finished)


def test_a_small_model_answers_in_the_schema(llama_server: LiveServer) -> None:
    schema = {
        "type": "object",
        # Bounded, so that the longest answer the schema allows fits in max_tokens.
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }

    answer = _ask(llama_server, schema, max_tokens=60)

    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_json_object_mode_gives_an_object(llama_server: LiveServer) -> None:
    with openai.OpenAI(base_url=f"{llama_server.base_url}/v1", api_key="x", max_retries=0) as sdk:
        completion = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a dog as JSON."}],
            response_format={"type": "json_object"},
            max_tokens=40,
            seed=3,
        )

    content = completion.choices[0].message.content or ""
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.startswith("{")


def test_a_streamed_answer_in_a_schema_is_the_same_answer(llama_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    whole = _ask(llama_server, schema, temperature=0).json()["choices"][0]["message"]["content"]

    pieces = []
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    url = f"{llama_server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    pieces.append(choices[0]["delta"]["content"])

    assert "".join(pieces) == whole
    assert json.loads(whole) in ({"ok": True}, {"ok": False})


def test_a_huge_enum_does_not_hold_up_a_plain_request_beside_it(llama_server: LiveServer) -> None:
    schema = {"enum": [f"value-{n:05d}-" + "x" * 8 for n in range(20_000)]}
    results: dict[str, httpx.Response] = {}

    def structured() -> None:
        results["enum"] = _ask(llama_server, schema, max_tokens=8)

    thread = threading.Thread(target=structured)
    thread.start()
    _still_serves(llama_server)
    thread.join(120)

    assert results["enum"].status_code == 200
    content = results["enum"].json()["choices"][0]["message"]["content"]
    assert content.startswith('"value-')


def test_a_schema_over_its_compile_budget_is_a_400(llama_server: LiveServer) -> None:
    # `hasty-grammar` allows a millisecond to compile; thousands of properties take longer.
    schema = {
        "type": "object",
        "properties": {f"field_{n}": {"type": "string"} for n in range(3000)},
        "required": [f"field_{n}" for n in range(3000)],
    }

    answer = _ask(llama_server, schema, model="hasty-grammar")

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "response_format"
    assert "took longer than 0.001 s to compile" in answer.json()["error"]["message"]


def test_a_schema_refused_for_its_time_is_served_once_its_compile_has_ended(
    llama_server: LiveServer,
) -> None:
    # Over `hasty-grammar`'s millisecond, far inside llguidance's own limits: refused at
    # first, the compile runs on, and the schema is served from then on; a refusal that stayed
    # in the cache would refuse it for good.
    names = [f"late_{time.monotonic_ns()}_{n}" for n in range(300)]
    schema = {"type": "object", "properties": {name: {"type": "integer"} for name in names}}

    answers = [_ask(llama_server, schema, model="hasty-grammar")]
    deadline = time.monotonic() + 60
    while answers[-1].status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answers.append(_ask(llama_server, schema, model="hasty-grammar"))

    refusals = [a.json()["error"]["message"] for a in answers if a.status_code == 400]
    assert refusals, "the schema compiled within a millisecond: the test proves nothing"
    assert all("took longer than" in message for message in refusals)
    assert answers[-1].status_code == 200, answers[-1].text
    assert answers[-1].json()["choices"][0]["message"]["content"].startswith("{")


class ZipCode(BaseModel):
    """What LangChain users write; ``with_structured_output`` sends it as a JSON schema."""

    city: str = Field(max_length=40)
    zip: str = Field(pattern=r"^\d{5}$")


def test_langchain_structured_output_with_a_pattern(llama_server: LiveServer) -> None:
    # LangChain's documented keyword names are aliases its typing does not show.
    options: dict[str, Any] = {
        "base_url": f"{llama_server.base_url}/v1",
        "api_key": "unused",
        "model": MODEL,
        "max_retries": 0,
        "temperature": 0,
        "max_completion_tokens": 60,
    }
    model = ChatOpenAI(**options).with_structured_output(ZipCode, method="json_schema")

    answer = model.invoke("Which city has the zip code 90210?")

    assert isinstance(answer, ZipCode)
    assert len(answer.zip) == 5
    assert answer.zip.isdigit()


def _jsonschemabench_sample() -> list[tuple[str, dict[str, Any]]]:
    lines = (Path(__file__).parent / "jsonschemabench" / "sample.jsonl").read_text()
    rows = [json.loads(line) for line in lines.splitlines()]
    return [(f"{row['category']}/{row['file']}", row["schema"]) for row in rows]


def _outcome(server: LiveServer, schema: dict[str, Any]) -> str:
    """``refused`` (a 400 naming response_format), ``followed``, ``cut off``, or what went
    wrong."""
    answer = _ask(server, schema, max_tokens=48, temperature=0)
    if answer.status_code == 400 and answer.json()["error"]["param"] == "response_format":
        return "refused"
    if answer.status_code != 200:
        return f"status {answer.status_code}: {answer.text[:200]}"
    choice = answer.json()["choices"][0]
    if choice["finish_reason"] != "stop":
        return "cut off"
    value = json.loads(choice["message"]["content"])
    validator = jsonschema.validators.validator_for(schema)
    errors = list(validator(schema, format_checker=validator.FORMAT_CHECKER).iter_errors(value))
    return f"invalid: {errors[0].message[:200]}" if errors else "followed"


def test_real_world_schemas_compile_or_are_refused_never_crash(llama_server: LiveServer) -> None:
    """Thirty JSONSchemaBench schemas at once: each is followed or refused, none crashes."""
    sample = _jsonschemabench_sample()
    with ThreadPoolExecutor(8) as pool:
        outcomes = dict(
            zip(
                (name for name, _ in sample),
                pool.map(lambda item: _outcome(llama_server, item[1]), sample),
                strict=True,
            )
        )

    wrong = {name: o for name, o in outcomes.items() if o not in ("refused", "followed", "cut off")}
    assert not wrong
    # Most real schemas are followed, not refused.
    assert list(outcomes.values()).count("refused") <= len(sample) // 3


def test_no_schema_killed_the_engine(llama_server: LiveServer) -> None:
    metrics = httpx.get(f"{llama_server.base_url}/metrics", timeout=5).text

    assert f'chatbot_engine_restarts{{model="{MODEL}"}} 0.0' in metrics
    assert f'chatbot_engine_up{{model="{MODEL}"}} 1.0' in metrics


#: 500 optional properties: compiled at once, but following it takes llguidance past its
#: limit on one parser row at the first token.
TOO_WIDE_TO_FOLLOW = {
    "type": "object",
    "properties": {f"p{n}": {"type": "string"} for n in range(500)},
}


def test_a_schema_that_outgrows_its_limits_while_followed_is_a_400(
    llama_server: LiveServer,
) -> None:
    answer = _ask(llama_server, TOO_WIDE_TO_FOLLOW, temperature=0)

    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "response_format"
    assert error["code"] == "invalid_json_schema"
    assert "items" in error["message"]
    _still_serves(llama_server)


def test_a_stream_whose_schema_outgrows_its_limits_ends_with_an_error_event(
    llama_server: LiveServer,
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "wide", "schema": TOO_WIDE_TO_FOLLOW},
        },
        "stream": True,
        "max_tokens": 24,
        "temperature": 0,  # as the JSON answer above: its first token opens a property
    }
    url = f"{llama_server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as answer:
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    # The first token was sampled (and sent) before the grammar failed on it.
    assert answer.status_code == 200
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "invalid_json_schema"


def test_more_schemas_than_the_grammar_cache_holds(llama_server: LiveServer) -> None:
    # `tiny-slot` keeps two compiled schemas; four take turns, twice over.
    schemas = [
        {
            "type": "object",
            "properties": {name: {"type": "boolean"}},
            "required": [name],
            "additionalProperties": False,
        }
        for name in ("red", "green", "blue", "grey")
    ]
    for schema in schemas * 2:
        answer = _ask(llama_server, schema, model="tiny-slot", max_tokens=12, temperature=0)

        assert answer.status_code == 200, answer.text
        content = answer.json()["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), schema)


def test_schemas_beyond_the_compile_queue_get_a_503(llama_server: LiveServer) -> None:
    """`hasty-grammar` compiles one schema at a time and gives each a millisecond: a schema
    refused for its time keeps compiling until llguidance's limits end it, and meanwhile the
    next schema finds no compiler free."""

    def slow_schema(tag: str) -> dict[str, Any]:
        names = [f"{tag}_{n}" for n in range(4000)]
        return {
            "type": "object",
            "properties": {name: {"type": "string"} for name in names},
            "required": names,
        }

    deadline = time.monotonic() + 60
    while True:  # until the compiler is free of earlier tests' schemas
        first = _ask(llama_server, slow_schema(f"a{time.monotonic_ns()}"), model="hasty-grammar")
        if first.status_code == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    second = _ask(llama_server, slow_schema("b"), model="hasty-grammar")

    assert first.status_code == 400
    assert "took longer than" in first.json()["error"]["message"]
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "server_overloaded"
    assert second.headers["retry-after"] == "1"
