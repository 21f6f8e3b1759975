"""Requests and tokens per minute: OpenAI's headers, 429s the SDK understands, shared limits.

Limits count in windows aligned to the wall-clock minute. A test that compares two answers
first waits, when the minute is about to turn, for the next one to start, so that both
answers fall in one window.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from chatbot_api.app import create_app
from chatbot_api.security.counters import Admission, Counters, InProcessCounters, RedisCounters
from tests.clients import HELLO, MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory, make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer, free_port

REDIS_URL = os.environ.get("CHATBOT_TEST_REDIS_URL")
RESET = re.compile(r"^(?:(?P<m>\d+)m)?(?P<s>\d+(?:\.\d+)?)s$|^(?P<ms>\d+)ms$")


def _same_minute(seconds_needed: float = 5) -> None:
    """Return once at least ``seconds_needed`` remain in the current minute."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        time.sleep(left + 0.05)


def _seconds(reset: str) -> float:
    parts = RESET.match(reset)
    assert parts is not None, reset
    if parts["ms"]:
        return int(parts["ms"]) / 1000
    return int(parts["m"] or 0) * 60 + float(parts["s"])


def test_completions_carry_openai_rate_limit_headers(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=5, rate_limit_tpm=10_000)
    client = sdk(server, "sk-anything")
    _same_minute()

    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, max_completion_tokens=20
    )

    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    # Reserved up front: the prompt's estimate ("hi": 1 token) plus the requested maximum.
    assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - (1 + 20))
    for kind in ("requests", "tokens"):
        reset = headers[f"x-ratelimit-reset-{kind}"]
        assert 0 < _seconds(reset) <= 60


def test_reserved_tokens_are_settled_against_real_usage(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_tpm=10_000)
    client = sdk(server, "sk-anything")
    _same_minute()

    first = client.chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, max_completion_tokens=500
    )
    used = first.parse().usage
    second = client.chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, max_completion_tokens=500
    )

    assert used is not None
    assert used.total_tokens < 500
    # The first request gave back the 500 - usage it reserved and did not use.
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining == 10_000 - used.total_tokens - (1 + 500)


def test_streamed_completions_carry_the_headers_and_settle_too(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=50, rate_limit_tpm=10_000)
    client = sdk(server, "sk-anything")
    _same_minute()

    with client.chat.completions.with_streaming_response.create(
        model="echo",
        messages=HELLO,
        max_completion_tokens=300,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-ratelimit-remaining-requests"] == "49"
        assert response.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 301)
        usage = next(chunk.usage for chunk in response.parse() if chunk.usage)
    after = client.chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, max_completion_tokens=10
    )

    assert after.headers["x-ratelimit-remaining-tokens"] == str(10_000 - usage.total_tokens - 11)


def test_over_the_request_limit_is_a_429_the_sdk_raises(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=2)
    client = sdk(server, "sk-anything")
    _same_minute()
    for _ in range(2):
        client.chat.completions.create(model="echo", messages=HELLO)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO)

    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    headers = error.response.headers
    retry_after_ms = int(headers["retry-after-ms"])
    assert 0 < retry_after_ms <= 60_000
    assert int(headers["retry-after"]) == -(-retry_after_ms // 1000)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-request-id" in headers


def test_the_sdk_retry_waits_as_retry_after_says_and_then_succeeds(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=1)
    sent: list[float] = []
    http = httpx.Client(event_hooks={"request": [lambda _: sent.append(time.monotonic())]})
    client = sdk(server, "sk-anything", max_retries=1, http_client=http)
    # Near the end of a minute, so that the wait the server asks for is short.
    time.sleep(max(0.0, 60 - time.time() % 60 - 2.5))
    client.chat.completions.create(model="echo", messages=HELLO)

    raw = client.chat.completions.with_raw_response.create(model="echo", messages=HELLO)

    assert raw.retries_taken == 1
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"  # the new minute's one request
    waited = sent[-1] - sent[-2]
    assert waited >= 0.5  # not the SDK's own sub-second backoff: our Retry-After
    http.close()


def test_a_request_larger_than_the_token_limit_says_retrying_will_not_help(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_tpm=1000)
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    client = sdk(server, "sk-anything", max_retries=2, http_client=http)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="echo", messages=HELLO, max_completion_tokens=5000)

    assert caught.value.type == "tokens"
    assert "Request too large" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1  # the SDK did not retry
    # The refused request took nothing: a normal one still fits.
    assert client.chat.completions.create(model="echo", messages=HELLO, max_completion_tokens=10)
    http.close()


@pytest.mark.parametrize(
    "where",
    [
        "process",
        pytest.param(
            "redis",
            marks=pytest.mark.skipif(REDIS_URL is None, reason="CHATBOT_TEST_REDIS_URL is not set"),
        ),
    ],
)
def test_a_request_for_2_to_the_63_tokens_is_refused_not_let_through(
    start_server: ServerFactory, where: str
) -> None:
    # Past 64 bits, Redis's counters would refuse an increment, and a limiter that fails
    # open would let the request through unlimited: admission checks before it adds.
    server = start_server(rate_limit_tpm=1000, redis_url=REDIS_URL if where == "redis" else None)

    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": HELLO, "max_tokens": 2**63 - 1},
        timeout=10,
    )

    assert answer.status_code == 429
    assert "Request too large" in answer.json()["error"]["message"]
    assert answer.headers["x-should-retry"] == "false"


def test_a_keys_own_limit_wins_and_the_master_key_is_not_limited(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(master_key=MASTER, rate_limit_rpm=100)
    limited = sdk(server, str(make_key(server, rpm=1)["key"]))
    other = sdk(server, str(make_key(server)["key"]))
    master = sdk(server, MASTER)
    _same_minute()

    limited.chat.completions.create(model="echo", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model="echo", messages=HELLO)

    # Another key counts on its own, with the server's default.
    raw = other.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    for _ in range(3):
        answer = master.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
        assert "x-ratelimit-limit-requests" not in answer.headers


def test_repeated_failed_authentication_is_throttled_per_address(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(master_key=MASTER, auth_failures_per_minute=3)
    _same_minute()
    wrong = sdk(server, "sk-cb-0123456789abNOTAKEYNOTAKEYNOTAKEYNOTAKEY")
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()

    with pytest.raises(openai.RateLimitError) as caught:
        wrong.models.list()

    assert caught.value.code == "too_many_auth_failures"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_a_valid_key_is_let_in_from_an_address_that_keeps_failing(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(master_key=MASTER, auth_failures_per_minute=3)
    valid = sdk(server, str(make_key(server)["key"]))
    wrong = sdk(server, "sk-cb-0123456789abNOTAKEYNOTAKEYNOTAKEYNOTAKEY")
    _same_minute()
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with pytest.raises(openai.RateLimitError) as throttled:
        wrong.models.list()

    # Somebody else behind the same address (every client here is 127.0.0.1), with a key.
    answer = valid.chat.completions.create(model="echo", messages=HELLO)
    no_key = httpx.get(f"{server.base_url}/v1/models")

    assert throttled.value.code == "too_many_auth_failures"
    assert int(throttled.value.response.headers["retry-after"]) >= 1
    assert answer.choices[0].message.content == "hi"
    assert no_key.status_code == 429  # a request without a key still counts as a failure
    with pytest.raises(openai.RateLimitError):
        wrong.models.list()


def test_failed_authentication_is_never_throttled_when_its_limit_is_off(
    start_server: ServerFactory,
) -> None:
    server = start_server(master_key=MASTER, auth_failures_per_minute=0)
    wrong = {"Authorization": "Bearer sk-wrong"}

    statuses = {
        httpx.get(f"{server.base_url}/v1/models", headers=wrong).status_code for _ in range(25)
    }

    assert statuses == {401}  # 25 failures, past the default limit of 20: never a 429


def _counters(where: str) -> Counters:
    if where == "redis":
        assert REDIS_URL is not None
        return RedisCounters(REDIS_URL, timeout=5.0)
    return InProcessCounters()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "where",
    [
        "process",
        pytest.param(
            "redis",
            marks=pytest.mark.skipif(REDIS_URL is None, reason="CHATBOT_TEST_REDIS_URL is not set"),
        ),
    ],
)
async def test_admission_takes_from_both_counters_or_from_neither(where: str) -> None:
    counters = _counters(where)
    requests, tokens = f"requests-{uuid.uuid4().hex}", f"tokens-{uuid.uuid4().hex}"

    async def admit(token_cost: int, request_limit: int = 10) -> Admission:
        return await counters.admit(
            requests,
            tokens,
            requests=1,
            tokens=token_cost,
            request_limit=request_limit,
            token_limit=100,
            expiry=60,
        )

    try:
        first = await admit(60)
        too_many_tokens = await admit(60)
        fits = await admit(30)
        too_many_requests = await admit(0, request_limit=2)
    finally:
        await counters.aclose()

    assert first == Admission(1, 60, admitted=True)
    assert too_many_tokens == Admission(1, 60, admitted=False)  # nothing taken, nothing shown
    assert fits == Admission(2, 90, admitted=True)
    assert too_many_requests == Admission(2, 90, admitted=False)


@pytest.mark.skipif(REDIS_URL is None, reason="CHATBOT_TEST_REDIS_URL is not set")
def test_two_instances_on_redis_share_one_limit(tmp_path: Path, sdk: SdkFactory) -> None:
    settings = make_settings(
        master_key=MASTER,
        redis_url=REDIS_URL,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    )
    with (
        LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as one,
        LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as two,
    ):
        key = str(make_key(one, rpm=3)["key"])
        _same_minute()
        remaining = []
        for server in (one, two, one):
            raw = sdk(server, key).chat.completions.with_raw_response.create(
                model="echo", messages=HELLO
            )
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])

        with pytest.raises(openai.RateLimitError):
            sdk(two, key).chat.completions.create(model="echo", messages=HELLO)

    assert remaining == ["2", "1", "0"]


@pytest.mark.skipif(REDIS_URL is None, reason="CHATBOT_TEST_REDIS_URL is not set")
def test_an_address_over_its_failure_limit_on_one_instance_is_refused_by_the_other(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        master_key=MASTER,
        redis_url=REDIS_URL,
        auth_failures_per_minute=2,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    )
    # An address of its own on the loopback network, so that no other run's failures count.
    address = ".".join(["127", *(str(random.randint(1, 254)) for _ in range(3))])
    wrong = {"Authorization": "Bearer sk-wrong"}
    with (
        LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as one,
        LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as two,
        httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as client,
    ):
        _same_minute()
        on_one = [client.get(f"{one.base_url}/v1/models", headers=wrong) for _ in range(2)]
        on_two = client.get(f"{two.base_url}/v1/models", headers=wrong)

    assert [r.status_code for r in on_one] == [401, 401]
    # Its first failure from that address, but the third the address made this minute.
    assert on_two.status_code == 429
    assert on_two.json()["error"]["code"] == "too_many_auth_failures"


def test_a_redis_that_does_not_answer_does_not_take_the_api_down(
    start_server: ServerFactory, sdk: SdkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit_rpm=1,
        master_key=MASTER,
        auth_failures_per_minute=1,
    )
    client = sdk(server, str(make_key(server)["key"]))

    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
        assert raw.parse().choices
        assert "x-ratelimit-limit-requests" not in raw.headers
    for _ in range(2):  # failures cannot be counted either: each is a plain 401
        with pytest.raises(openai.AuthenticationError):
            sdk(server, "sk-wrong").models.list()

    assert "rate-limit storage unavailable" in caplog.text


def test_responses_and_conversations_count_against_requests_per_minute(
    start_server: ServerFactory, sdk: SdkFactory
) -> None:
    server = start_server(rate_limit_rpm=4, rate_limit_tpm=10_000)
    client = sdk(server, "sk-anything")
    _same_minute()

    created = client.responses.with_raw_response.create(model="echo", input="hello there")
    response_id = created.parse().id
    read = client.responses.with_raw_response.retrieve(response_id)
    conversation = client.conversations.with_raw_response.create()
    counted = client.responses.input_tokens.with_raw_response.count(model="echo", input="hi")
    with pytest.raises(openai.RateLimitError) as refused:
        client.conversations.retrieve(conversation.parse().id)

    assert int(created.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert [
        raw.headers["x-ratelimit-remaining-requests"]
        for raw in (created, read, conversation, counted)
    ] == ["3", "2", "1", "0"]
    assert refused.value.code == "rate_limit_exceeded"
