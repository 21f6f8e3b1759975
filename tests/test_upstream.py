"""The ``openai`` provider against real HTTP upstreams: a second chatbot-api serving ``echo``,
a fault-injecting upstream of the suite's own (``tests/upstreams.py``), and the healthy one
behind the suite's TCP fault proxy (refused, slow, cut part-way)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatbot_api.app import create_app
from tests.clients import HELLO
from tests.conftest import SdkFactory, ServerFactory, make_settings
from tests.faultproxy import FaultProxy
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer, free_port
from tests.upstreams import SECRET_UPSTREAM_KEY, fault_upstream

FAULTS = (
    "bad-request",
    "unauthorized",
    "rate-limited",
    "fail-500",
    "stall",
    "tools",
    "drop-mid-stream",
    "missing",
    "rate-limited-ms",
    "rate-limited-date",
    "rate-limited-inf",
    "rate-limited-nan",
    "web-page",
    "streams-regardless",
    "no-usage",
    "empty-stream",
)


@pytest.fixture(scope="module")
def upstream(models_file: Path) -> Iterator[LiveServer]:
    """Our own server, serving echo (and the slow echo-slow): the healthy upstream."""
    app = create_app(make_settings(models_file=models_file), provider_kinds=TEST_PROVIDER_KINDS)
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def faulty() -> Iterator[LiveServer]:
    with LiveServer(fault_upstream()) as live:
        yield live


@pytest.fixture(scope="module")
def front(
    upstream: LiveServer,
    faulty: LiveServer,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """Our server in front of both upstreams (one for the module: none of its tests changes it)."""
    entries = [
        f'[models.proxied]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
        'upstream_model = "echo"\n',
        f'[models."proxied-slow"]\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
        'upstream_model = "echo-slow"\n',
    ]
    for fault in FAULTS:
        entries.append(
            f'[models."{fault}"]\nprovider = "openai"\nbase_url = "{faulty.base_url}/v1"\n'
            'api_key_env = "TEST_UPSTREAM_KEY"\nmax_retries = 0\ntimeout = 1.0\n'
        )
    config = tmp_path_factory.mktemp("front")
    models = config / "upstreams.toml"
    models.write_text("\n".join(entries))
    settings = make_settings(
        models_file=models,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{config / 'front.db'}",
    )
    with pytest.MonkeyPatch.context() as patch:  # read when the providers are built
        patch.setenv("TEST_UPSTREAM_KEY", SECRET_UPSTREAM_KEY)
        app = create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)
        with LiveServer(app) as live:
            yield live


def test_a_completion_passes_through(front: LiveServer, sdk: SdkFactory) -> None:
    reply = sdk(front, "sk-anything").chat.completions.create(
        model="proxied", messages=[{"role": "user", "content": "hello upstream"}], store=True
    )

    assert reply.model == "proxied"
    assert reply.choices[0].message.content == "hello upstream"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 2
    assert sdk(front, "sk-anything").chat.completions.retrieve(reply.id).id == reply.id


def test_a_stream_keeps_our_framing(front: LiveServer) -> None:
    body = {
        "model": "proxied",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 2,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    roles = [
        c["choices"][0]["index"]
        for c in chunks
        if c["choices"] and "role" in c["choices"][0]["delta"]
    ]
    assert sorted(roles) == [0, 1]  # the role once per choice, from us
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "one two three", 1: "one two three"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def _call(call_id: str) -> Any:
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{}"}


def _output(call_id: str) -> Any:
    return {"type": "function_call_output", "call_id": call_id, "output": "Sunny."}


def _user(text: str) -> Any:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    "items",
    [
        # Calls with hidden reasoning between them, answered in reverse order.
        [
            _user("Paris and Lyon?"),
            _call("call_a"),
            {"type": "reasoning", "id": "rs_1", "summary": []},
            _call("call_b"),
            _output("call_b"),
            _output("call_a"),
            _user("Thanks."),
        ],
        # A call nobody answered.
        [_user("Paris?"), _call("call_a"), _user("Never mind.")],
        # A result given after another message.
        [_user("Paris?"), _call("call_a"), _user("Well?"), _output("call_a"), _user("Thanks.")],
    ],
    ids=["reasoning-between-calls", "unanswered-call", "result-after-a-message"],
)
def test_response_items_reach_an_upstream_as_openai_takes_tool_results(
    front: LiveServer, sdk: SdkFactory, items: list[Any]
) -> None:
    """The upstream, our own server, holds chat messages to OpenAI's rule for tool results,
    as OpenAI does: the items must become messages it takes."""
    answer = sdk(front, "sk-anything").responses.create(model="proxied", input=items)

    assert answer.status == "completed"
    assert answer.output_text == items[-1]["content"]


def test_streamed_tool_calls_keep_their_index_and_id(front: LiveServer, sdk: SdkFactory) -> None:
    client = sdk(front, "sk-anything")
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]

    pieces = []
    with client.chat.completions.create(
        model="tools", messages=HELLO, tools=tools, stream=True
    ) as s:
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.tool_calls:
                pieces.extend(chunk.choices[0].delta.tool_calls)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    whole = client.chat.completions.create(model="tools", messages=HELLO, tools=tools)

    assert pieces[0].index == 0
    assert pieces[0].id == "call_up_1"
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == '{"city": "Paris"}'
    assert finish == "tool_calls"
    call = whole.choices[0].message.tool_calls
    assert call is not None
    assert call[0].id == "call_up_1"
    assert call[0].function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert whole.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("model", "error", "status", "code"),
    [
        ("bad-request", openai.BadRequestError, 400, "upstream_code"),
        ("unauthorized", openai.InternalServerError, 502, "upstream_error"),
        ("fail-500", openai.InternalServerError, 502, "upstream_error"),
        ("missing", openai.InternalServerError, 502, "upstream_error"),
        ("rate-limited", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("stall", openai.InternalServerError, 504, "upstream_timeout"),
    ],
)
def test_upstream_faults_become_our_errors(
    front: LiveServer,
    sdk: SdkFactory,
    model: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str,
) -> None:
    with pytest.raises(error) as caught:
        sdk(front, "sk-anything").chat.completions.create(model=model, messages=HELLO)

    assert caught.value.status_code == status
    assert caught.value.code == code
    assert SECRET_UPSTREAM_KEY not in caught.value.response.text
    if model == "bad-request":
        assert "'temperature' is out of range" in caught.value.message
    if model == "rate-limited":
        assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("bad-request", openai.BadRequestError, 400),
        ("unauthorized", openai.InternalServerError, 502),
        ("rate-limited", openai.RateLimitError, 429),
    ],
)
def test_an_upstream_that_refuses_a_stream_gives_a_status_not_an_event(
    front: LiveServer,
    sdk: SdkFactory,
    model: str,
    error: type[openai.APIStatusError],
    status: int,
) -> None:
    with pytest.raises(error) as caught:
        sdk(front, "sk-anything").chat.completions.create(model=model, messages=HELLO, stream=True)

    assert caught.value.status_code == status
    assert SECRET_UPSTREAM_KEY not in caught.value.response.text


@pytest.mark.parametrize(
    ("model", "seconds", "milliseconds"),
    [
        ("rate-limited-ms", "3", "2500"),  # retry-after-ms wins over Retry-After: 9
        ("rate-limited-nan", "4", "4000"),  # retry-after-ms: nan; Retry-After: 4 then
        ("rate-limited-inf", "1", "1000"),
        ("rate-limited-date", "1", "1000"),  # a date is not read
    ],
)
def test_the_upstream_wait_is_passed_on_when_it_is_a_number(
    front: LiveServer, sdk: SdkFactory, model: str, seconds: str, milliseconds: str
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(front, "sk-anything").chat.completions.create(model=model, messages=HELLO)

    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == seconds
    assert caught.value.response.headers["retry-after-ms"] == milliseconds


@pytest.mark.parametrize(
    ("model", "stream"),
    [
        ("web-page", False),
        ("web-page", True),
        ("streams-regardless", False),  # an event stream where a JSON answer was asked for
        ("empty-stream", True),  # [DONE] and nothing before it
    ],
)
def test_an_upstream_answer_that_is_no_completion_is_a_502(
    front: LiveServer,
    sdk: SdkFactory,
    caplog: pytest.LogCaptureFixture,
    model: str,
    stream: bool,
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(front, "sk-anything").chat.completions.create(
            model=model, messages=HELLO, stream=stream
        )

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert "the upstream did not answer with a chat completion" in caplog.text


def test_an_upstream_answer_without_usage_passes_through(
    front: LiveServer, sdk: SdkFactory
) -> None:
    reply = sdk(front, "sk-anything").chat.completions.create(model="no-usage", messages=HELLO)

    assert reply.choices[0].message.content == "no usage here"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is None  # the upstream counted nothing, and we do not guess


def test_a_drop_mid_stream_is_an_error_event_then_the_end(front: LiveServer) -> None:
    body = {"model": "drop-mid-stream", "stream": True, "messages": HELLO}
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert answer.status_code == 200
    assert "half an ans" in "".join(data)
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "upstream_error"


def test_a_client_that_leaves_stops_the_upstream(
    front: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    words = " ".join(f"w{n}" for n in range(200))  # 10 s of echo-slow
    body = {
        "model": "proxied-slow",
        "stream": True,
        "messages": [{"role": "user", "content": words}],
    }
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body) as answer:
        for _ in zip(range(3), answer.iter_lines(), strict=False):
            pass
    left = time.monotonic()

    # Both ends log it: ours when the client left, the upstream's when we closed its stream.
    while caplog.text.count("client disconnected; generation stopped") < 2:
        assert time.monotonic() - left < 3, "the upstream kept generating"
        time.sleep(0.05)


@pytest.fixture
def proxy(upstream: LiveServer) -> Iterator[FaultProxy]:
    """The healthy upstream, behind a fault proxy."""
    with FaultProxy("127.0.0.1", upstream.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def behind_proxy(start_server: ServerFactory, proxy: FaultProxy, tmp_path: Path) -> LiveServer:
    """Our server, its ``proxied`` model reaching the upstream through the fault proxy."""
    models = tmp_path / "proxied.toml"
    models.write_text(
        f'[models.proxied]\nprovider = "openai"\nbase_url = "http://{proxy.host}:{proxy.port}/v1"\n'
        'upstream_model = "echo"\nmax_retries = 0\ntimeout = 1.0\n'
    )
    return start_server(models_file=models)


#: An echo answer of some 400 pieces: long enough to be cut part-way.
LONG: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": " ".join(f"word{n}" for n in range(400))}
]


def test_an_upstream_that_refuses_connections_is_a_502(
    behind_proxy: LiveServer, proxy: FaultProxy, sdk: SdkFactory
) -> None:
    client = sdk(behind_proxy, "sk-anything")
    assert client.chat.completions.create(model="proxied", messages=HELLO).choices
    proxy.refuse()
    proxy.drop()

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="proxied", messages=HELLO)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert "could not be reached" in caught.value.message


def test_an_upstream_slower_than_its_timeout_is_a_504(
    behind_proxy: LiveServer, proxy: FaultProxy, sdk: SdkFactory
) -> None:
    proxy.delay(5.0)  # the model's timeout is 1 s

    with pytest.raises(openai.InternalServerError) as caught:
        sdk(behind_proxy, "sk-anything", timeout=20).chat.completions.create(
            model="proxied", messages=HELLO
        )

    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_an_upstream_cut_mid_stream_is_an_error_event_then_the_end(
    behind_proxy: LiveServer, proxy: FaultProxy
) -> None:
    proxy.cut_after(4000)  # the headers and a dozen chunks, of some 80 kB
    body = {"model": "proxied", "stream": True, "messages": LONG}
    with httpx.stream(
        "POST", f"{behind_proxy.base_url}/v1/chat/completions", json=body, timeout=20
    ) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert answer.status_code == 200
    text = "".join(data)
    assert "word0" in text
    assert "word399" not in text  # cut short
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "upstream_error"


def test_an_upstream_cut_mid_answer_is_a_502(
    behind_proxy: LiveServer, proxy: FaultProxy, sdk: SdkFactory
) -> None:
    proxy.cut_after(1000)  # the headers and the start of a 6 kB answer

    with pytest.raises(openai.InternalServerError) as caught:
        sdk(behind_proxy, "sk-anything").chat.completions.create(model="proxied", messages=LONG)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"


def test_a_server_with_an_unreachable_upstream_stays_ready(
    start_server: ServerFactory, sdk: SdkFactory, tmp_path: Path
) -> None:
    """Readiness is this server's own: an upstream outage answers 502 to the requests for
    its model, and does not take the server out of its load balancer."""
    models = tmp_path / "gone.toml"
    models.write_text(
        f'[models.gone]\nprovider = "openai"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
        "max_retries = 0\n"
    )
    server = start_server(models_file=models)

    ready = httpx.get(f"{server.base_url}/ready")
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(server, "sk-anything").chat.completions.create(model="gone", messages=HELLO)

    assert ready.status_code == 200
    assert caught.value.status_code == 502


@pytest.mark.anyio
async def test_an_unset_upstream_key_variable_stops_the_start_naming_it(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_UPSTREAM_KEY_UNSET", raising=False)
    models = tmp_path / "keyless.toml"
    models.write_text(
        '[models.keyless]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "TEST_UPSTREAM_KEY_UNSET"\n'
    )
    settings = make_settings(
        models_file=models,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keyless.db'}",
    )
    app = create_app(settings)

    message = (
        "model 'keyless': the environment variable TEST_UPSTREAM_KEY_UNSET (api_key_env) is not set"
    )

    # What uvicorn runs at start, and prints the error of before it exits.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        async with app.router.lifespan_context(app):
            pass
