"""``GET /metrics``: what a Prometheus scrape sees, in one process and summed over workers."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import HELLO, MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory
from tests.databases import POSTGRES_URL, database_url_for
from tests.servers import AnyServer, LiveServer, ServerProcess, clean_env, logged_messages

REDIS_URL = os.environ.get("CHATBOT_TEST_REDIS_URL")


def _samples(
    server: AnyServer, **headers: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{server.base_url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_completion_shows_in_the_metrics(server: LiveServer, sdk: SdkFactory) -> None:
    client = sdk(server, "sk-anything")
    before = _samples(server)

    client.chat.completions.create(model="echo", messages=HELLO)
    with client.chat.completions.create(model="echo", messages=HELLO, stream=True) as stream:
        list(stream)
    after = _samples(server)

    route = {"route": "/v1/chat/completions", "method": "POST", "model": "echo", "status": "200"}
    assert (
        _value(after, "chatbot_requests_total", **route)
        - _value(before, "chatbot_requests_total", **route)
        == 2
    )
    ttft = "chatbot_time_to_first_token_seconds_count"
    assert _value(after, ttft, model="echo") - _value(before, ttft, model="echo") == 2
    tokens = "chatbot_generated_tokens_total"
    assert _value(after, tokens, model="echo") - _value(before, tokens, model="echo") == 2
    assert _value(after, "chatbot_active_streams") == 0


def test_metrics_can_require_a_key(start_server: ServerFactory) -> None:
    server = start_server(master_key=MASTER, metrics_require_key=True, rate_limit_rpm=1)

    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    samples = _samples(server, Authorization=f"Bearer {MASTER}")
    assert ("chatbot_store_write_failures_total", frozenset()) in samples


@pytest.mark.skipif(
    POSTGRES_URL is None or REDIS_URL is None,
    reason="CHATBOT_TEST_POSTGRES_URL and CHATBOT_TEST_REDIS_URL are needed",
)
def test_two_workers_share_limits_data_and_metrics(tmp_path: Path, sdk: SdkFactory) -> None:
    env = clean_env(
        CHATBOT_MASTER_KEY=MASTER,
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATABASE_URL=database_url_for("postgres", tmp_path),
        CHATBOT_REDIS_URL=str(REDIS_URL),
    )
    with ServerProcess(env, tmp_path / "output.txt", "--workers", "2") as server:
        key = str(make_key(server, rpm=6)["key"])
        remaining = set()
        ids = []
        for _ in range(6):
            # A new connection each time, so that both workers take requests.
            with httpx.Client() as http:
                client = sdk(server, key, http_client=http)
                raw = client.chat.completions.with_raw_response.create(
                    model="echo", messages=HELLO, store=True
                )
                ids.append(raw.parse().id)
                remaining.add(raw.headers["x-ratelimit-remaining-requests"])
        with pytest.raises(openai.RateLimitError):
            sdk(server, key).chat.completions.create(model="echo", messages=HELLO)
        stored = {c.id for c in sdk(server, key).chat.completions.list(limit=100)}
        samples = _samples(server)

    assert server.returncode == 0, server.output.read_text()
    assert remaining == {"5", "4", "3", "2", "1", "0"}  # one count, whichever worker answered
    assert stored == set(ids)
    route = {"route": "/v1/chat/completions", "method": "POST", "model": "echo"}
    assert _value(samples, "chatbot_requests_total", **route, status="200") == 6
    assert _value(samples, "chatbot_requests_total", **route, status="429") == 1
    assert _value(samples, "chatbot_rate_limited_total", limit="requests") == 1
    output = server.output.read_text()
    started = [m for m in logged_messages(output) if m.startswith("serving echo")]
    assert len(started) == 2  # two workers did start
