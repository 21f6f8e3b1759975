"""Security headers, the body limit, CORS from config, and secrets kept out of the logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.clients import HELLO, MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory
from tests.servers import LiveServer, ServerProcess, clean_env


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/no-such-route"])
def test_every_response_carries_the_security_headers(server: LiveServer, path: str) -> None:
    headers = httpx.get(f"{server.base_url}{path}").headers

    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["cache-control"] == "no-store"


def test_the_interactive_docs_still_load(server: LiveServer) -> None:
    docs = httpx.get(f"{server.base_url}/docs")

    assert docs.status_code == 200
    assert "content-security-policy" not in docs.headers  # it would block the docs' scripts
    assert docs.headers["x-frame-options"] == "DENY"


def test_a_body_over_the_limit_is_413_in_the_envelope(start_server: ServerFactory) -> None:
    server = start_server(max_body_bytes=2048)
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 4096}]}

    declared = httpx.post(f"{server.base_url}/v1/chat/completions", json=big)
    chunked = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=(piece for piece in [json.dumps(big).encode()[:1500]] * 3),
        headers={"Content-Type": "application/json"},
    )

    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert response.json()["error"]["type"] == "invalid_request_error"
    small = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={"model": "echo", "messages": HELLO}
    )
    assert small.status_code == 200


def test_cors_is_off_unless_origins_are_configured(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "https://evil.example"})

    assert "access-control-allow-origin" not in response.headers


def test_configured_origins_may_call_with_a_key(start_server: ServerFactory) -> None:
    server = start_server(cors_origins=["https://app.example"], master_key=MASTER)
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang",
    }

    allowed = httpx.options(f"{server.base_url}/v1/chat/completions", headers=preflight)
    refused = httpx.options(
        f"{server.base_url}/v1/chat/completions",
        headers={**preflight, "Origin": "https://evil.example"},
    )
    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Origin": "https://app.example", "Authorization": f"Bearer {MASTER}"},
        json={"model": "echo", "messages": HELLO},
    )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in refused.headers
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_no_secret_reaches_the_log_file(tmp_path: Path, sdk: SdkFactory) -> None:
    """The server in a process of its own, so that its log file holds its lines alone."""
    log_file = tmp_path / "logs" / "api.log"
    database = f"sqlite+aiosqlite:///{tmp_path / 'secrets.db'}"
    env = clean_env(
        CHATBOT_MASTER_KEY=MASTER,
        CHATBOT_LOG_FILE=str(log_file),
        CHATBOT_LOG_LEVEL="DEBUG",
        CHATBOT_DATABASE_URL=database,
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
    )
    from_cli = subprocess.run(
        [sys.executable, "-m", "chatbot_api", "keys", "create", "--name", "cli"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wrong = "sk-cb-0123456789abTHISISNOTAKEYTHISISNOTAKEYXX"

    with ServerProcess(env, tmp_path / "output.txt") as server:
        made = str(make_key(server, rpm=2)["key"])
        for key in (made, from_cli, MASTER):
            client = sdk(server, key)
            client.chat.completions.create(model="echo", messages=HELLO, store=True)
            with client.chat.completions.create(model="echo", messages=HELLO, stream=True) as s:
                list(s)
        with pytest.raises(openai.RateLimitError):
            sdk(server, made).chat.completions.create(model="echo", messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            sdk(server, wrong).models.list()
        admin = {"Authorization": f"Bearer {MASTER}"}
        assert httpx.get(f"{server.base_url}/admin/keys", headers=admin).status_code == 200
    assert server.returncode == 0

    text = log_file.read_text()
    assert text.count("POST /v1/chat/completions") == 7, "the requests were not logged"
    for secret in (made, from_cli, MASTER, wrong, made[:20], from_cli[:20]):
        assert secret not in text
    assert "bearer " not in text.lower()
    assert "authorization" not in text.lower()
