"""Every failure reaches the client in OpenAI's envelope, and the SDK raises its matching class."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.servers import LiveServer
from tests.spec import validate

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _post(server: LiveServer, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", **kwargs)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": HELLO}, "model", "missing_required_parameter"),
        ({"model": "echo"}, "messages", "missing_required_parameter"),
        ({"model": "echo", "messages": []}, "messages", "invalid_value"),
        (
            {"model": "echo", "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "echo", "messages": [{"role": "user"}]},
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "invalid_value",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "missing_required_parameter",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
            "invalid_value",
        ),
        (
            {"model": "echo", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
            "missing_required_parameter",
        ),
        ({"model": "echo", "messages": HELLO, "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "echo", "messages": HELLO, "top_p": -1}, "top_p", "invalid_value"),
        ({"model": "echo", "messages": HELLO, "n": 0}, "n", "invalid_value"),
        ({"model": "echo", "messages": HELLO, "max_tokens": 0}, "max_tokens", "invalid_value"),
        (
            {"model": "echo", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]},
            "stop",
            "invalid_value",
        ),
        ({"model": "echo", "messages": HELLO, "stop": 7}, "stop", "invalid_value"),
        ({"model": "echo", "messages": HELLO, "stream": "yes"}, "stream", "invalid_value"),
        ({"model": "echo", "messages": HELLO, "n": "2"}, "n", "invalid_value"),
        (
            {"model": "echo", "messages": HELLO, "stream_options": {"include_usage": "x"}},
            "stream_options.include_usage",
            "invalid_value",
        ),
    ],
)
def test_invalid_fields_are_400_naming_the_param(
    server: LiveServer, body: dict[str, Any], param: str, code: str
) -> None:
    response = _post(server, json=body)

    assert response.status_code == 400
    error = _error(response)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert param in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
    ],
)
def test_parameters_a_provider_cannot_honour_are_refused(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO, **extra)

    assert caught.value.param == param
    assert caught.value.code == "unsupported_parameter"
    assert param in caught.value.message


def test_tool_choice_without_tools_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO, tool_choice="auto")

    assert caught.value.param == "tool_choice"


def _calls(*ids: str) -> dict[str, Any]:
    """An assistant message that called ``get_weather`` once per id."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        for i in ids
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "Sunny."}


ASKED = {"role": "user", "content": "Weather in Paris and Lyon?"}


@pytest.mark.parametrize(
    ("messages", "param", "says"),
    [
        # A result nobody asked for: first, or after a turn that made no call.
        ([_result("call_1")], "messages[0].role", "must be a response to a preceding"),
        (
            [ASKED, {"role": "assistant", "content": "Let me see."}, _result("call_1")],
            "messages[2].role",
            "must be a response to a preceding",
        ),
        # A result for a call the assistant message before it did not make.
        (
            [ASKED, _calls("call_1"), _result("call_2")],
            "messages[2].tool_call_id",
            "'call_2' not found in 'tool_calls'",
        ),
        # An answered call's result again after the conversation went on.
        (
            [ASKED, _calls("call_1"), _result("call_1"), ASKED, _result("call_1")],
            "messages[4].role",
            "must be a response to a preceding",
        ),
        # A call answered twice.
        (
            [ASKED, _calls("call_1", "call_2"), _result("call_1"), _result("call_1")],
            "messages[3].tool_call_id",
            "Duplicate value for 'tool_call_id' of 'call_1' in messages[2] and messages[3]",
        ),
        # Calls left without results: before another message, or at the end.
        (
            [ASKED, _calls("call_1", "call_2"), _result("call_2"), ASKED],
            "messages[1].role",
            "did not have response messages: call_1",
        ),
        (
            [ASKED, _calls("call_1", "call_2")],
            "messages[1].role",
            "did not have response messages: call_1, call_2",
        ),
    ],
)
def test_tool_results_must_answer_the_calls_before_them(
    server: LiveServer, messages: list[dict[str, Any]], param: str, says: str
) -> None:
    response = _post(server, json={"model": "echo", "messages": messages})

    assert response.status_code == 400
    error = _error(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"]


def test_thousands_of_unanswered_calls_are_listed_by_the_first_twenty(server: LiveServer) -> None:
    ids = [f"call_{n}" for n in range(5000)]
    response = _post(server, json={"model": "echo", "messages": [ASKED, _calls(*ids)]})

    assert response.status_code == 400
    message = _error(response)["message"]
    assert message.endswith("call_18, call_19 and 4980 more")
    assert len(message) < 500


def test_results_of_parallel_calls_come_in_any_order(client: openai.OpenAI) -> None:
    messages: Any = [
        ASKED,
        _calls("call_1", "call_2"),
        _result("call_2"),
        _result("call_1"),
        {"role": "assistant", "content": "Sunny in both."},
        ASKED,
        _calls("call_3"),
        _result("call_3"),
    ]
    answer = client.chat.completions.create(model="echo", messages=messages)

    assert answer.choices[0].finish_reason == "stop"


def test_top_logprobs_needs_logprobs(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO, top_logprobs=2)

    assert caught.value.param == "top_logprobs"


def test_image_parts_are_refused_by_a_text_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="echo",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    ],
                }
            ],
        )

    assert caught.value.param == "messages[0].content[1]"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_stream_for_an_unknown_model_fails_before_streaming(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO, stream=True)


def test_sdk_raises_bad_request_for_a_bad_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO, temperature=9)

    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"model": "echo",', {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b'{"model": "echo"}', {"content-type": "text/plain"}),
    ],
)
def test_malformed_bodies_are_400(
    server: LiveServer, content: bytes, headers: dict[str, str]
) -> None:
    response = _post(server, content=content, headers=headers)

    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid_json"
    assert error["param"] is None


def test_json_without_a_content_type_is_read(server: LiveServer) -> None:
    response = _post(
        server, content=b'{"model": "echo", "messages": [{"role": "user", "content": "plain"}]}'
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "plain"


def test_unknown_route_is_404(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/v1/nothing-here")

    assert response.status_code == 404
    assert _error(response)["code"] == "unknown_url"


def test_wrong_method_is_405(server: LiveServer) -> None:
    response = httpx.delete(f"{server.base_url}/v1/models")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert _error(response)["code"] == "method_not_allowed"


def test_unexpected_failure_is_500_with_the_request_id_and_no_trace(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="broken-at-start", messages=HELLO)

    error = caught.value
    request_id = error.response.headers["x-request-id"]
    assert error.status_code == 500
    assert request_id in error.message
    assert "secret internal detail" not in error.response.text
    assert "Traceback" not in error.response.text
    validate("ErrorResponse", error.response.json())
