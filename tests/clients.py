"""Calling a test server as its users do: the master key, API keys made over HTTP, the SDK."""

from __future__ import annotations

import httpx
import openai

from tests.servers import AnyServer

__all__ = ["HELLO", "MASTER", "make_key"]

MASTER = "sk-master-for-tests-0123456789"
HELLO: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def make_key(server: AnyServer, **body: object) -> dict[str, object]:
    """An API key made through the admin endpoint; ``["key"]`` is the secret."""
    response = httpx.post(
        f"{server.base_url}/admin/keys",
        headers={"Authorization": f"Bearer {MASTER}"},
        json={"name": "test", **body},
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created
