"""What a hostile or broken upstream, and an odd models file, cannot do to the gateway: make it
quote our key, hang past its timeout, answer 500, lose a stored stream's usage, or leak a
deployment's place in flight."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.fleet import Behaviour, Replica, fleet
from tests.test_gateway import HEADER, ask, counted, deployments, front, metric

KEY = "sk-fleet-secret-0123456789"


@pytest.fixture
def replicas() -> Iterator[dict[str, Replica]]:
    with fleet("a", "b") as running:
        yield running


def test_an_upstream_that_quotes_our_key_has_it_cut_from_its_message(
    start_server: ServerFactory,
    tmp_path: Path,
    replicas: dict[str, Replica],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_KEY", KEY)  # read when the server starts
    replicas["a"].behaviour = "quote-key"
    server = front(
        start_server, tmp_path, HEADER + deployments(replicas["a"], api_key_env="FLEET_KEY")
    )

    answer = ask(server)

    assert answer.status_code == 400
    assert KEY not in answer.text
    error = answer.json()["error"]
    assert "you sent Bearer [redacted]" in error["message"]
    assert error["param"] == "[redacted]"
    assert error["code"] == "Bearer [redacted]"


def test_an_upstream_that_only_pings_is_cut_at_its_timeout_and_another_serves(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "only-pings"
    toml = f'{HEADER}routing = "weighted"\n' + deployments(replicas["a"], weight=1000, timeout=1)
    toml += deployments(replicas["b"], weight=0.001)
    server = front(start_server, tmp_path, toml)
    failed = counted(server, "chatbot_upstream_failures_total", deployment="a", kind="timeout")

    started = time.monotonic()
    answer = ask(server, stream=True)

    assert answer.status_code == 200
    assert answer.headers["x-chatbot-deployment"] == "b"
    assert time.monotonic() - started < 5
    assert failed() == 1


def test_a_retry_after_of_ages_is_capped_not_a_500(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "rate-limited"
    replicas["a"].retry_after = "1e306"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))

    first, second = ask(server), ask(server)

    assert first.status_code == second.status_code == 429
    assert int(first.headers["retry-after"]) == 3600
    assert 3500 < int(second.headers["retry-after"]) <= 3600
    assert replicas["a"].hits == 1


def test_an_answer_that_is_not_utf8_is_a_502_and_counted(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "bad-utf8"
    server = front(
        start_server, tmp_path, f"{HEADER}max_retries = 0\n" + deployments(replicas["a"])
    )
    failed = counted(server, "chatbot_upstream_failures_total", deployment="a", kind="bad_answer")

    answer = ask(server)

    assert answer.status_code == 502
    assert "did not answer with a chat completion" in answer.json()["error"]["message"]
    assert failed() == 1


def test_a_stored_stream_of_odd_tool_calls_is_stored_not_an_internal_error(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "odd-tools"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))

    answer = ask(server, stream=True, store=True)

    assert answer.status_code == 200
    assert "server_error" not in answer.text
    assert answer.text.rstrip().endswith("data: [DONE]")


def test_a_stored_stream_keeps_its_usage_though_the_client_did_not_ask_for_it(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))

    answer = ask(server, stream=True, store=True)
    first = next(line for line in answer.text.splitlines() if line.startswith("data: {"))
    completion_id = httpx.Response(200, content=first[6:]).json()["id"]
    stored = httpx.get(f"{server.base_url}/v1/chat/completions/{completion_id}")

    assert '"usage"' not in answer.text.replace('"usage":null', "")  # not sent: not asked for
    assert stored.status_code == 200
    assert stored.json()["usage"]["total_tokens"] == 8
    assert stored.json()["choices"][0]["message"]["content"].strip() == "a: hello fleet"


def test_a_model_id_in_any_script_names_its_deployment_in_a_header_it_can_carry(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    toml = f'[models."模型"]\nprovider = "openai"\nbase_url = "{replicas["a"].base_url}"\n'
    toml += "max_concurrency = 1\n"
    server = front(start_server, tmp_path, toml)

    answers = [ask(server, "模型"), ask(server, "模型", stream=True), ask(server, "模型")]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert answers[0].headers["x-chatbot-deployment"] == "%E6%A8%A1%E5%9E%8B/1"
    assert answers[1].text.rstrip().endswith("data: [DONE]")
    assert metric(server, "chatbot_upstream_in_flight", model="模型") == 0


@pytest.mark.parametrize(
    ("behaviour", "stream", "status", "message"),
    [
        ("error-first", True, 502, "did not answer with a chat completion"),
        ("json-array", False, 502, "did not answer with a chat completion"),
        ("bare-400", False, 400, "The upstream answered 400: it refused the request."),
    ],
)
def test_an_answer_that_is_no_completion_is_refused_before_any_byte(
    start_server: ServerFactory,
    tmp_path: Path,
    replicas: dict[str, Replica],
    behaviour: Behaviour,
    stream: bool,
    status: int,
    message: str,
) -> None:
    replicas["a"].behaviour = behaviour
    toml = f"{HEADER}max_retries = 0\n" + deployments(replicas["a"])
    server = front(start_server, tmp_path, toml)

    answer = ask(server, stream=stream)

    assert answer.status_code == status
    assert message in answer.json()["error"]["message"]


def test_an_error_object_part_way_through_a_stream_ends_it_with_an_error_event(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "error-mid-stream"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))
    failed = counted(server, "chatbot_upstream_failures_total", deployment="a", kind="dropped")

    answer = ask(server, stream=True)
    data = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]

    assert answer.status_code == 200
    assert "half" in data[0]
    assert json.loads(data[-2])["error"]["code"] == "upstream_error"
    assert data[-1] == "[DONE]"
    assert failed() == 1


def test_a_stored_stream_keeps_tool_calls_apart_that_share_an_index(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "reused-index"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))

    answer = ask(server, stream=True, store=True)
    first = next(line for line in answer.text.splitlines() if line.startswith("data: {"))
    stored = httpx.get(f"{server.base_url}/v1/chat/completions/{json.loads(first[6:])['id']}")

    calls = stored.json()["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_a", "f", "{}"),
        ("call_b", "g", "{}"),
    ]
