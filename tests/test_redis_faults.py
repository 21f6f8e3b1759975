"""Redis failing under the rate limiter, through the suite's own TCP fault proxy
(``tests/faultproxy.py``): refused, dropped, hanging, or reset under a request. Requests are
answered meanwhile, unlimited and logged, and limited again once Redis is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from tests.clients import HELLO, MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory
from tests.faultproxy import FaultProxy
from tests.test_faults import DEADLINE, _away
from tests.test_rate_limits import REDIS_URL

needs_redis = pytest.mark.skipif(REDIS_URL is None, reason="CHATBOT_TEST_REDIS_URL is not set")


def _through(proxy: FaultProxy) -> str:
    """The Redis URL that reaches the tests' Redis through ``proxy``."""
    assert REDIS_URL is not None
    return f"redis://{proxy.host}:{proxy.port}/{make_url(REDIS_URL).database or '0'}"


@pytest.fixture
def redis() -> Iterator[FaultProxy]:
    if REDIS_URL is None:
        pytest.skip("CHATBOT_TEST_REDIS_URL is not set")
    url = make_url(REDIS_URL)
    with FaultProxy(url.host or "127.0.0.1", url.port or 6379) as proxy:
        yield proxy


@needs_redis
@pytest.mark.parametrize("fault", ["refused", "dropped", "delayed"])
def test_requests_are_answered_while_redis_fails_and_limited_again_after(
    fault: str,
    redis: FaultProxy,
    start_server: ServerFactory,
    sdk: SdkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(
        redis_url=_through(redis),
        rate_limit_rpm=100,
        master_key=MASTER,
    )
    client = sdk(server, str(make_key(server)["key"]), timeout=DEADLINE)
    _until_limited(client)

    if fault == "refused":
        _away(redis)
    elif fault == "dropped":
        redis.drop()
    else:
        redis.delay(2.0)  # four times CHATBOT_REDIS_TIMEOUT_SECONDS
    during = [
        client.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
        for _ in range(3)
    ]
    redis.pass_through()

    for answer in during:
        assert answer.parse().choices[0].message.content == "hi"
        assert "x-ratelimit-limit-requests" not in answer.headers  # let through, unlimited
    assert "rate-limit storage unavailable; letting the request through" in caplog.text
    _until_limited(client)  # limits come back with Redis


def _until_limited(client: openai.OpenAI) -> None:
    """Return once a completion is counted in Redis again (its answer has the headers)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        answer = client.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
        if answer.headers.get("x-ratelimit-limit-requests") == "100":
            return
        assert time.monotonic() < deadline, "the requests were never counted in Redis"
        time.sleep(0.1)


@needs_redis
def test_a_request_whose_redis_connection_is_reset_under_it_is_let_through(
    redis: FaultProxy,
    start_server: ServerFactory,
    sdk: SdkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(
        redis_url=_through(redis),
        redis_timeout_seconds=DEADLINE,  # the reset, not the timeout, ends the wait
        rate_limit_rpm=100,
        master_key=MASTER,
    )
    client = sdk(server, str(make_key(server)["key"]), timeout=DEADLINE)
    _until_limited(client)

    redis.delay(1.0)  # the next admission waits on Redis...
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.chat.completions.with_raw_response.create, model="echo", messages=HELLO
        )
        time.sleep(0.3)
        redis.reset()  # ...when its connection is reset (RST) under it
        answer = pending.result(DEADLINE)
    redis.pass_through()

    assert answer.parse().choices[0].message.content == "hi"
    assert "x-ratelimit-limit-requests" not in answer.headers  # let through, unlimited
    # The client library let the reset through as itself, not as one of its own errors.
    assert "Redis client failed: ConnectionResetError" in caplog.text
    _until_limited(client)


@needs_redis
def test_a_stream_that_ends_while_redis_is_away_still_ends_well(
    redis: FaultProxy,
    start_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(redis_url=_through(redis), rate_limit_tpm=100_000, master_key=MASTER)
    key = str(make_key(server)["key"])
    words = " ".join(f"w{n}" for n in range(20))  # a second of echo-slow
    body = {
        "model": "echo-slow",
        "stream": True,
        "max_tokens": 100,  # reserved up front; most of it is handed back at the end
        "messages": [{"role": "user", "content": words}],
    }

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=DEADLINE,
    ) as answer:
        admitted = answer.headers.get("x-ratelimit-limit-tokens")
        lines = answer.iter_lines()
        next(lines)  # the role chunk: admitted through Redis, now generating
        _away(redis)  # Redis is gone when the unused tokens are to be handed back
        data = [line[6:] for line in [*lines] if line.startswith("data: ")]
    redis.pass_through()

    assert admitted == "100000"
    assert data[-1] == "[DONE]"
    assert not any('"error"' in item for item in data)
    assert "rate-limit storage unavailable" in caplog.text
