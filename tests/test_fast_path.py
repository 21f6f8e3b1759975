"""The hot path (``api.fast.FastRoutes``) answers exactly as FastAPI's own route does.

A request with ``Content-Type: application/json`` (or none) is served by the hot path when it
reads and validates; one with ``application/json; charset=utf-8`` always goes through FastAPI.
The same body sent both ways must get the same status, envelope and headers, whatever it
holds and whoever sends it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette

from chatbot_api.api.fast import FastRoutes
from chatbot_api.app import create_app
from tests.conftest import make_settings
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer

MASTER = "sk-fast-path-master-0123456789"
#: Headers that differ from one answer to the next whatever the path.
_VARYING = {"x-request-id", "date", "content-length", "x-ratelimit-remaining-requests"}
_VARYING |= {"x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests"}
_VARYING |= {"x-ratelimit-reset-tokens"}

BODIES = [
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}',
    b'{"model": "echo", "messages": [{"role": "bot", "content": "hi"}]}',
    b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "echo", "messages": []}',
    b'{"messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
    b'{"model": "echo", "model": "echo", "messages": []}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n": 1e400}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": 3}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]',
    b"[]",
    b"null",
    b"",
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Authentication on; failed keys are not throttled, so that every answer here is the
    route's own and not the throttle's."""
    scratch = tmp_path_factory.mktemp("fast")
    settings = make_settings(
        master_key=MASTER,
        auth_failures_per_minute=0,
        data_dir=scratch,
        database_url=f"sqlite+aiosqlite:///{scratch / 'fast.db'}",
    )
    with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as server:
        yield server


def _both_ways(server: LiveServer, body: bytes, key: str | None) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return [
        httpx.post(
            f"{server.base_url}/v1/chat/completions",
            content=body,
            headers={**headers, "Content-Type": content_type},
        )
        for content_type in ("application/json", "application/json; charset=utf-8")
    ]


def _comparable(answer: httpx.Response) -> tuple[int, object, dict[str, str]]:
    body = answer.json()
    if "error" not in body:  # a completion: its id and time are its own
        body = {**body, "id": None, "created": None}
    headers = {k: v for k, v in answer.headers.items() if k not in _VARYING}
    return answer.status_code, body, headers


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("key", [MASTER, "sk-wrong", None])
def test_the_same_body_gets_the_same_answer_both_ways(
    secured: LiveServer, body: bytes, key: str | None
) -> None:
    fast, fastapi = _both_ways(secured, body, key)

    assert _comparable(fast) == _comparable(fastapi)
    assert fast.status_code != 500


def test_the_checks_come_in_fastapis_order(secured: LiveServer) -> None:
    """Malformed JSON is a 400 before any key is looked at; a body that parses but does not
    validate is a 401 without a key, before its problems are looked at."""
    malformed, _ = _both_ways(secured, b'{"model": ', "sk-wrong")
    invalid, _ = _both_ways(secured, b'{"model": "echo", "messages": []}', "sk-wrong")

    assert malformed.status_code == 400
    assert invalid.status_code == 401


def test_an_endpoint_of_another_shape_is_refused_when_the_app_is_built() -> None:
    """FastRoutes calls its endpoints with exactly the four arguments FastAPI would pass."""

    async def endpoint(body: object, request: object) -> None:
        return None

    with pytest.raises(TypeError, match="must take"):
        FastRoutes(Starlette(), routes={"/v1/odd": endpoint})  # type: ignore[dict-item]
