"""Tool calls on a local model: ``smollm2-135m`` with ``tools``, through the openai SDK's chat
completions and Responses, LangChain and the Agents SDK.

A 135M model chooses poorly, so what it chooses under ``auto`` is not asserted; the mechanics
are: a forced call is always a known function with arguments that validate, ids and indexes
hold across a stream, and results go back into the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import llama_cpp
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool
from agents import set_tracing_disabled as set_agents_tracing_disabled
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from chatbot_api.app import create_app
from chatbot_api.providers.base import TextDelta, ToolCallDelta
from chatbot_api.providers.llama.bundled import bundled_chat_model_path
from chatbot_api.providers.llama.prompt import TemplatePrompter
from chatbot_api.providers.llama.tools import (
    ToolCallReader,
    ToolPlan,
    plan_tools,
    prompt_messages,
    template_tools,
)
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.services.requests import build_generation_request
from tests.conftest import make_settings
from tests.servers import LiveServer

MODEL = "smollm2-135m"

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
BOOKING: Any = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a table at a restaurant.",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "maxLength": 40},
                "guests": {"type": "integer", "minimum": 1, "maximum": 12},
                "times": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "minItems": 1,
                    "maxItems": 3,
                },
                "window_seat": {"type": "boolean"},
            },
            "required": ["restaurant", "guests", "times"],
            "additionalProperties": False,
        },
    },
}
TOOLS: Any = [WEATHER, BOOKING]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


#: A chat template that renders tools itself, in the Hermes syntax (as Qwen's and Hermes'
#: do), written for these tests: ChatML, the tools in the system turn, calls in
#: ``<tool_call>`` blocks, results in ``<tool_response>`` blocks of a user turn.
HERMES_TEMPLATE = """\
{%- set system = messages[0].content if messages[0].role == 'system' else '' -%}
{%- if tools -%}
<|im_start|>system
{% if system %}{{ system }}

{% endif %}# Tools

You may call one or more functions. Their signatures are within <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each call, write a JSON object with the function's name and arguments in <tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif system -%}
<|im_start|>system
{{ system }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- elif message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' and message.tool_calls -%}
<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""
#: The same model with that template in place of its own.
HERMES = "smollm2-hermes"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("tools")
    (folder / "hermes.jinja").write_text(HERMES_TEMPLATE)
    (folder / "models.toml").write_text(
        f'[models.{HERMES}]\nprovider = "llama_cpp"\npath = "{bundled_chat_model_path()}"\n'
        f'chat_template_file = "{folder / "hermes.jinja"}"\nparallel = 2\n'
    )
    settings = make_settings(
        bundled_chat_model=True,
        bundled_model=True,
        data_dir=data_dir,
        models_file=folder / "models.toml",
    )
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def _valid_calls(calls: list[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Each call's function and parsed arguments, once checked against the function's schema."""
    assert calls, "no tool call"
    checked = []
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        checked.append((call.function.name, arguments))
    assert len({call.id for call in calls}) == len(calls)
    return checked


@pytest.mark.parametrize(
    ("model", "seed"),
    # SmolLM2's ChatML is given the tools by our instruction; the Hermes template by itself.
    [*((MODEL, seed) for seed in range(12)), *((HERMES, seed) for seed in range(4))],
)
def test_a_required_call_is_a_known_function_with_valid_arguments(
    client: openai.OpenAI, model: str, seed: int
) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=seed,
        temperature=1.0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(_valid_calls(choice.message.tool_calls)) == 1


@pytest.mark.parametrize("seed", range(12))
def test_a_named_function_is_the_one_called(client: openai.OpenAI, seed: int) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "book_table"}},
        seed=seed,
        temperature=1.0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [(name, arguments)] = _valid_calls(choice.message.tool_calls)
    assert name == "book_table"
    assert 1 <= arguments["guests"] <= 12


#: SmolLM2's ends of generation (``<|endoftext|>``, ``<|im_end|>``, ``<reponame>``): banned,
#: a reply under ``required`` cannot end after a call, and the grammar leaves only another.
SMOLLM2_NEVER_STOP = {"0": -100, "2": -100, "4": -100}


def _streamed_calls(stream: Any) -> tuple[dict[int, dict[str, Any]], str | None, int]:
    """The calls of a streamed reply by index, its finish reason, and how many deltas came."""
    calls: dict[int, dict[str, Any]] = {}
    pieces = 0
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert not choice.delta.content
        for delta in choice.delta.tool_calls or ():
            pieces += 1
            if delta.index not in calls:
                # The first delta of a call names it: its id, its type and its function.
                assert delta.id is not None
                assert delta.id.startswith("call_")
                assert delta.type == "function"
                assert delta.function is not None
                assert delta.function.name in SCHEMAS
                name = delta.function.name
                calls[delta.index] = {"id": delta.id, "name": name, "arguments": ""}
            else:
                assert delta.id is None  # later pieces continue the call their index names
            if delta.function is not None and delta.function.arguments:
                calls[delta.index]["arguments"] += delta.function.arguments
    return calls, finish, pieces


def test_parallel_calls_each_get_an_index_and_an_id(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        seed=0,
        logit_bias=SMOLLM2_NEVER_STOP,
        max_tokens=120,
        stream=True,
    )
    calls, finish, _ = _streamed_calls(stream)
    assert finish == "length"
    assert len(calls) >= 2
    assert sorted(calls) == list(range(len(calls)))
    assert len({call["id"] for call in calls.values()}) == len(calls)
    # Every call but the last is whole; the last may be cut by max_tokens.
    for call in list(calls.values())[:-1]:
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_a_streamed_call_arrives_in_deltas_with_a_stable_index_and_id(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=3, stream=True
    )
    calls, finish, pieces = _streamed_calls(stream)
    assert finish in ("tool_calls", "length")
    assert sorted(calls) == list(range(len(calls)))
    assert pieces > 2 * len(calls)  # the arguments came in pieces, not at the end
    complete = calls if finish == "tool_calls" else dict(list(calls.items())[:-1])
    assert complete
    for call in complete.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_a_round_trip_puts_the_result_in_the_prompt(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=1,
    )
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    [call] = calls
    result = "It is sunny in Paris today, 24 degrees, with a light wind from the west."

    def asked(content: str, max_tokens: int) -> Any:
        history = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": content},
        ]
        return client.chat.completions.create(
            model=MODEL, messages=history, tools=[WEATHER], temperature=0, max_tokens=max_tokens
        )

    final, short = asked(result, 60), asked("Sunny.", 1)

    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "tool_calls", "length")
    assert choice.message.content or choice.message.tool_calls
    assert final.usage is not None
    assert short.usage is not None
    grew = final.usage.prompt_tokens - short.usage.prompt_tokens
    assert grew >= len(result.split()) - 1  # the result's words were read


def test_under_auto_the_reply_is_an_answer_or_valid_calls(client: openai.OpenAI) -> None:
    for seed in range(4):
        reply = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, seed=seed, max_tokens=80
        )
        choice = reply.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length")
            if choice.finish_reason == "tool_calls":
                _valid_calls(choice.message.tool_calls)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert choice.message.content
            assert not choice.message.content.startswith("<tool_call>")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=40, seed=0
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content


def test_responses_make_function_calls_and_take_their_output(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", **WEATHER["function"]}]
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,  # the round trip is the point here, not parallel calls
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls
    assert first.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS["get_weather"])

    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": c.call_id, "output": "Sunny, 24 C."}
            for c in calls
        ],
        tools=tools,
        tool_choice="none",
        max_output_tokens=40,
    )
    without_output = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice="none",
        max_output_tokens=16,
        store=False,
    )
    assert second.output_text
    assert second.usage is not None
    assert without_output.usage is not None
    # The call and its output were read: "Sunny, 24 C." and the call's JSON at least.
    assert second.usage.input_tokens > without_output.usage.input_tokens + 10


def test_langchain_bind_tools_gets_a_forced_call(server: LiveServer) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    options: dict[str, Any] = {
        "base_url": f"{server.base_url}/v1",
        "api_key": "sk-anything",
        "model": MODEL,
        "max_retries": 0,
        "seed": 5,
    }
    chat = ChatOpenAI(**options).bind_tools([get_weather], tool_choice="get_weather")

    answer = chat.invoke("What is the weather in Paris?")

    assert isinstance(answer, AIMessage)
    [call] = answer.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)
    assert get_weather.invoke(call["args"]) == "sunny"


@pytest.mark.anyio
async def test_an_agent_runs_its_function_tool_on_the_local_model(server: LiveServer) -> None:
    set_agents_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"Sunny in {city}."

    async with openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        agent = Agent(
            name="weather",
            instructions="You answer questions about the weather.",
            model=OpenAIResponsesModel(model=MODEL, openai_client=sdk),
            tools=[get_weather],
            model_settings=ModelSettings(
                tool_choice="required", parallel_tool_calls=False, temperature=0.5
            ),
            tool_use_behavior="stop_on_first_tool",
        )
        result = await Runner.run(agent, "What is the weather in Paris?")

    assert len(asked) == 1
    assert result.final_output == f"Sunny in {asked[0]}."


# ---- what a hostile or careless client can send ----


def _tool(name: str = "f", parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


REFUSED = [
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [_tool('a"]} %json {')]}, "tools[0].function.name"),
    ({"tools": [_tool("a"), _tool("a")]}, "tools[1].function.name"),
    ({"tools": [_tool("a", [1])]}, "tools[0].function.parameters"),
    ({"tools": [_tool("a", {"type": "string"})]}, "tools[0].function.parameters"),
    ({"tools": [_tool("a", {"type": "object", "$ref": "#/nope"})]}, "tools[0].function.parameters"),
    ({"tools": [_tool("a"), _tool("b", {"not": {}})]}, "tools[1].function.parameters"),
    (
        {"tools": [_tool("a", {"type": "object", "x-guidance": {"lenient": 5}})]},
        "tools[0].function.parameters",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "a", "description": 5}}]},
        "tools[0].function.description",
    ),
    ({"tools": [_tool(f"t{i}") for i in range(129)]}, "tools"),
    ({"tools": [_tool("a")], "tool_choice": "maybe"}, "tool_choice"),
    ({"tools": [_tool("a")], "tool_choice": {"type": "function", "function": {}}}, "tool_choice"),
    (
        {"tools": [_tool("a")], "tool_choice": {"type": "function", "function": {"name": "b"}}},
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"model": "gemma-3-270m", "tools": [_tool("a")]}, "tools"),
    ({"tools": [_tool("a", {"type": "object", "properties": {"d": _deep(60)}})]}, None),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED)
def test_a_bad_tool_request_is_a_400_naming_what_is_wrong(
    server: LiveServer, extra: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **extra}
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert "%json" not in error["message"]  # our grammar stays ours


def test_a_call_sent_back_with_arguments_that_are_not_json_is_read_as_sent(
    client: openai.OpenAI,
) -> None:
    history: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "[" * 500},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny."},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert reply.choices[0].message.content is not None


def test_a_streamed_response_streams_its_function_call(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", **WEATHER["function"]}]
    events = list(
        client.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            stream=True,
        )
    )
    kinds = [event.type for event in events]
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call"
    assert added.item.name == "get_weather"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert len(deltas) > 1
    assert "".join(deltas) == done.arguments
    jsonschema.validate(json.loads(done.arguments), SCHEMAS["get_weather"])
    assert kinds[-1] == "response.completed"


# ---- the reader of calls, fed the grammar's output in every possible split ----

PLAN = ToolPlan(functions=(), choice="auto", parallel=True)
CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "n": [1, {}]}}\n'
    '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'
)


def _read(text: str, cuts: list[int]) -> list[Any]:
    reader = ToolCallReader(PLAN)
    events: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        events.extend(reader.feed(text[start:end]))
    events.extend(reader.end())
    return events


def _joined(events: list[Any]) -> tuple[str, list[tuple[str, str]]]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, list[str]] = {}
    for event in (e for e in events if isinstance(e, ToolCallDelta)):
        call = event.call
        if "id" in call:
            calls[call["index"]] = [call["function"]["name"], ""]
        calls[call["index"]][1] += call["function"]["arguments"]
    return text, [(name, arguments) for name, arguments in calls.values()]


@pytest.mark.parametrize(
    "text",
    [CALLS, "<tool", "<b>bold</b> answer", "An answer with <tool_call> inside.", ""],
)
def test_the_reader_gives_the_same_calls_however_the_text_is_cut(text: str) -> None:
    whole = _joined(_read(text, []))
    for cut in range(len(text) + 1):
        assert _joined(_read(text, [cut])) == whole
    assert _joined(_read(text, list(range(1, len(text))))) == whole
    if text.startswith("<tool_call>"):
        assert whole == (
            "",
            [("get_weather", '{"city": "Pa\\"ris}", "n": [1, {}]}'), ("add", "{}")],
        )
    else:
        assert whole == (text, [])


# ---- a template with its own tool syntax, and one without ----

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HISTORY: Any = [
    {"role": "system", "content": "Be brief."},
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C."},
]
TWO_RESULTS: Any = [
    *HISTORY[:2],
    {
        "role": "assistant",
        "content": "Both cities.",
        "tool_calls": [
            {
                "id": f"call_{city}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
            }
            for city in ("Paris", "Lyon")
        ],
    },
    {"role": "tool", "tool_call_id": "call_Paris", "content": "Sunny."},
    {"role": "tool", "tool_call_id": "call_Lyon", "content": "Rain."},
]
WRITTEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _rendered(template: str, messages: Any = HISTORY) -> tuple[bool, str]:
    request = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": messages, "tools": TOOLS}
    )
    generation = build_generation_request(request)
    plan = plan_tools(request)
    prompter = TemplatePrompter(template, bos_token="", eos_token="<|im_end|>")
    if prompter.renders_tools:
        return True, prompter(generation.messages, template_tools(plan)).text
    return False, prompter(prompt_messages(generation.messages, plan)).text


def test_a_template_with_the_hermes_syntax_renders_tools_calls_and_results_itself() -> None:
    native, text = _rendered(HERMES_TEMPLATE)
    assert native
    assert "# Tools" in text  # the template's own words, not our instruction
    assert "You can call functions" not in text
    assert '"name": "book_table"' in text
    assert WRITTEN_CALL in text
    assert "<tool_response>\nSunny, 24 C.\n</tool_response>" in text


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    native, text = _rendered(CHATML)
    assert not native
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions")
    assert '"name": "book_table"' in system
    assert WRITTEN_CALL in text  # the earlier call, as the model would write it
    assert "<|im_start|>user\n<tool_response>\nSunny, 24 C.\n</tool_response>" in text


def test_a_round_trip_on_a_template_with_tools(client: openai.OpenAI) -> None:
    final = client.chat.completions.create(
        model=HERMES, messages=HISTORY, tools=TOOLS, tool_choice="none", max_tokens=30
    )
    longer_result: Any = {
        **HISTORY[-1],
        "content": "Sunny, 24 C, a light wind from the west all day.",
    }
    longer = client.chat.completions.create(
        model=HERMES,
        messages=[*HISTORY[:-1], longer_result],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=1,
    )
    assert final.choices[0].message.content
    assert final.usage is not None
    assert longer.usage is not None
    assert longer.usage.prompt_tokens > final.usage.prompt_tokens + 5  # the result was read


def test_stop_strings_do_not_cut_a_forced_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        stop=["}", '"', "\n"],
        seed=2,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    _valid_calls(choice.message.tool_calls)


def test_a_schema_error_names_its_tool_and_keeps_its_reason(server: LiveServer) -> None:
    bad = {"type": "object", "properties": {"code": {"type": "string", "pattern": "(["}}}
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER, _tool("lookup", bad)],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    }
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "tools[1].function.parameters"
    assert "unclosed character class" in error["message"]
    assert "fn_0" not in error["message"]


def test_a_tools_error_in_responses_names_the_field_as_responses_has_it(
    server: LiveServer,
) -> None:
    body = {
        "model": MODEL,
        "input": "Weather?",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}],
    }
    answer = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "tools[0].parameters"


def test_a_schemas_own_separators_cannot_break_the_calls(client: openai.OpenAI) -> None:
    parameters = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
        "x-guidance": {"item_separator": "}", "key_separator": '"', "whitespace_flexible": True},
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[{"type": "function", "function": {"name": "f", "parameters": parameters}}],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=1,
        max_tokens=120,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    calls: list[Any] = reply.choices[0].message.tool_calls or []
    [call] = calls
    assert call.function.name == "f"
    assert set(json.loads(call.function.arguments)) == {"a", "b"}


def test_results_of_several_calls_make_one_user_turn_without_tool_syntax() -> None:
    native, text = _rendered(CHATML, TWO_RESULTS)
    assert not native
    assert "Both cities.\n<tool_call>\n" in text
    assert (
        "<|im_start|>user\n<tool_response>\nSunny.\n</tool_response>\n"
        "<tool_response>\nRain.\n</tool_response><|im_end|>"
    ) in text


def test_arguments_that_are_not_a_json_object_reach_a_hermes_template_as_sent() -> None:
    history = json.loads(json.dumps(HISTORY))
    history[2]["tool_calls"][0]["function"]["arguments"] = "[" * 5000
    native, text = _rendered(HERMES_TEMPLATE, history)
    assert native
    assert '"arguments": "' + "[" * 5000 + '"}' in text  # a string, as the client sent it


def test_a_template_that_refuses_tools_gets_the_generic_instruction() -> None:
    refusing = "{% if tools %}{{ raise_exception('no tools here') }}{% endif %}" + CHATML
    native, text = _rendered(refusing)
    assert not native
    assert "You can call functions" in text


def test_under_auto_an_answer_follows_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 80}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    formats: list[Any] = [
        {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
        {"type": "json_object"},
    ]
    for response_format in formats:
        answers = []
        for seed in range(4, 16):
            reply = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hello in JSON."}],
                tools=TOOLS,
                response_format=response_format,
                seed=seed,
                max_tokens=200,
            )
            choice = reply.choices[0]
            if choice.message.tool_calls:
                continue  # its choice; the calls' shape is tested above
            if choice.finish_reason == "length":
                continue  # a long object cut by max_tokens: nothing whole to check
            assert choice.finish_reason == "stop"
            answers.append(json.loads(choice.message.content or ""))
            if len(answers) == 2:
                break
        assert answers, "no seed gave a whole answer to check"
        for answer in answers:
            if response_format["type"] == "json_schema":
                jsonschema.validate(answer, schema)
            else:
                assert isinstance(answer, dict)


def test_a_reply_that_ends_while_it_could_still_be_a_call_is_text(
    client: openai.OpenAI,
) -> None:
    # "<" is where a call would begin: biased to it, one token long, the reply is just that.
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(bundled_chat_model_path()).encode(), params)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        tokens = (llama_cpp.llama_token * 8)()
        count = llama_cpp.llama_tokenize(vocab, b"<", 1, tokens, 8, False, False)
    finally:
        llama_cpp.llama_model_free(model)
    assert count == 1
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        logit_bias={str(tokens[0]): 100},
        max_tokens=1,
    )
    choice = reply.choices[0]
    assert choice.message.content == "<"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "length"


def test_tools_whose_schemas_pass_a_mebibyte_together_are_refused(server: LiveServer) -> None:
    big = {"type": "object", "properties": {"x": {"enum": ["v" * 1000] * 100}}}
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [_tool(f"t{i}", big) for i in range(12)],
    }
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "tools"
    assert "larger than" in error["message"]
