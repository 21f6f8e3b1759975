"""How long a chat completion may live: until its client leaves, or its deadline passes.

A client that leaves stops its generation whether it streamed or not; a request still running
``CHATBOT_REQUEST_TIMEOUT_SECONDS`` after it arrived is stopped and told so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GEMMA_NEVER_STOP, ServerFactory

#: ``echo-slow`` (the test models file) says a word every 0.05 s: this takes 15 s.
LONG = " ".join(f"w{n}" for n in range(300))


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def _wait_for_record(path: Path, message: str, seconds: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [r for r in _records(path) if r["message"] == message]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"never logged: {message}")


def test_a_non_streamed_request_past_its_deadline_is_a_504(start_server: ServerFactory) -> None:
    server = start_server(request_timeout_seconds=1)
    started = time.monotonic()

    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo-slow", "messages": [{"role": "user", "content": LONG}]},
        timeout=30,
    )

    assert answer.status_code == 504
    error = answer.json()["error"]
    assert error["code"] == "deadline_exceeded"
    assert error["type"] == "server_error"
    assert "1 seconds" in error["message"]
    assert time.monotonic() - started < 10  # not the 15 s the whole answer would take


def test_a_stream_past_its_deadline_ends_with_an_error_event(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(request_timeout_seconds=1, log_file=log_file)
    events: list[str] = []
    body = {"model": "echo-slow", "stream": True, "messages": [{"role": "user", "content": LONG}]}

    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30
    ) as answer:
        assert answer.status_code == 200
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    # It streamed for its second, then stopped: a few words, not all 300.
    words = [e for e in events[:-2] if json.loads(e)["choices"][0]["delta"].get("content")]
    assert 3 < len(words) < 100
    stopped = _wait_for_record(log_file, "ended at its deadline; generation stopped")
    assert stopped["model"] == "echo-slow"


def test_a_fast_stream_past_its_deadline_stops_its_generation_at_once(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(request_timeout_seconds=1, log_file=log_file)
    # ``echo`` without a delay has its next piece ready at once, every time: the deadline is
    # found between two pieces, not while waiting for one. 200,000 pieces take several seconds.
    words = " ".join(f"w{n}" for n in range(200_000))
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}

    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30
    ) as answer:
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    # The generation behind it stopped then too, not whenever the garbage collector ran.
    stopped = _wait_for_record(log_file, "ended at its deadline; generation stopped", seconds=5)
    assert stopped["model"] == "echo"
    assert stopped["pieces_sent"] < 200_000


@pytest.mark.parametrize("stream", [False, True])
def test_the_deadline_covers_waiting_for_the_first_token(
    start_server: ServerFactory, stream: bool
) -> None:
    # ``echo-silent`` waits five seconds before its first word, as a stalled backend would.
    server = start_server(request_timeout_seconds=1)

    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": "echo-silent",
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=30,
    )

    # Nothing was sent yet, so even a stream gets a status: the client can retry at once.
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "deadline_exceeded"


def test_a_stream_whose_client_leaves_before_its_first_token_is_stopped_there(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(log_file=log_file)
    # `echo-silent` takes 5 s to its first piece: the wait a slot, a long prompt or a grammar
    # can cause. The client gives up after half a second.
    body = {"model": "echo-silent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.5)

    stopped = _wait_for_record(log_file, "client disconnected; generation stopped")
    # Stopped while it waited: the stream never began (a 200 would mean it began for nobody).
    access = _wait_for_record(log_file, "POST /v1/chat/completions 499")
    assert access["request_id"] == stopped["request_id"]


def test_a_client_that_leaves_a_json_answer_stops_its_generation(
    start_server: ServerFactory, data_dir: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(bundled_model=True, data_dir=data_dir, log_file=log_file)
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Write a long essay about the sea."}],
        "max_tokens": 1000,
        # Nothing that ends an answer: the model would run all 1,000 tokens.
        "logit_bias": GEMMA_NEVER_STOP,
    }

    # The client gives up after a second and closes its connection.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=1)

    engine_log = tmp_path / "api.engine.gemma-3-270m.log"
    cancelled = _wait_for_record(engine_log, "sequence cancelled")
    assert cancelled["completion_tokens"] < 500
    # The access log tells an operator the client left (nginx's 499).
    access = _wait_for_record(log_file, "POST /v1/chat/completions 499")
    assert access["model"] == "gemma-3-270m"
    # The slot is free again: the next request is served at once.
    again = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        },
        timeout=30,
    )
    assert again.status_code == 200
