"""API keys and the master key, through the official SDK and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from chatbot_api.cli import main
from tests.clients import HELLO, MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory
from tests.databases import BACKENDS, database_url_for
from tests.servers import LiveServer, ServerProcess, clean_env


@pytest.fixture
def secured(start_server: ServerFactory) -> LiveServer:
    return start_server(master_key=MASTER)


def test_no_key_is_401_with_a_challenge(secured: LiveServer) -> None:
    response = httpx.get(f"{secured.base_url}/v1/models")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_key_is_401_and_not_echoed(secured: LiveServer, sdk: SdkFactory) -> None:
    wrong = "sk-cb-0123456789abWRONGWRONGWRONGWRONGWRONGWRONG"
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(secured, wrong).chat.completions.create(model="echo", messages=HELLO)

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert wrong not in caught.value.response.text


def test_health_stays_public(secured: LiveServer) -> None:
    assert httpx.get(f"{secured.base_url}/health").status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_made_key_works_and_revoking_it_stops_it_at_once(
    backend: str, start_server: ServerFactory, sdk: SdkFactory, tmp_path: Path
) -> None:
    # SQLite keeps verified keys in each process and learns of a revocation from the marker
    # file beside the database; PostgreSQL is asked on every request.
    secured = start_server(master_key=MASTER, database_url=database_url_for(backend, tmp_path))
    made = make_key(secured)
    key = str(made["key"])
    client = sdk(secured, key)

    assert client.chat.completions.create(model="echo", messages=HELLO).choices
    listed = httpx.get(
        f"{secured.base_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}
    ).json()
    assert key not in str(listed)
    assert made["id"] in [k["id"] for k in listed["data"]]

    httpx.delete(
        f"{secured.base_url}/admin/keys/{made['id']}",
        headers={"Authorization": f"Bearer {MASTER}"},
    ).raise_for_status()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="echo", messages=HELLO)


def test_an_expired_key_is_refused(secured: LiveServer, sdk: SdkFactory) -> None:
    key = str(make_key(secured, expires_in="1s")["key"])
    client = sdk(secured, key)
    client.models.list()

    time.sleep(2.1)

    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_lifetime_that_is_not_a_duration_is_400_naming_it(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.base_url}/admin/keys",
        headers={"Authorization": f"Bearer {MASTER}"},
        json={"name": "ci", "expires_in": "next week"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "expires_in"
    assert "not a duration: 'next week'" in error["message"]
    listed = httpx.get(
        f"{secured.base_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}
    ).json()
    assert listed["data"] == []  # no key was made


def test_a_guessed_key_is_401_whether_or_not_its_prefix_exists(
    secured: LiveServer, sdk: SdkFactory
) -> None:
    made = make_key(secured)
    key = str(made["key"])
    # The prefix is not secret (listings show it): only the whole key's hash lets one in.
    known_prefix = key[: len("sk-cb-") + 12] + "x" * 40
    unknown_prefix = "sk-cb-" + "0" * 12 + "x" * 40
    assert str(made["prefix"]) == known_prefix[: len(str(made["prefix"]))]

    for guess in (known_prefix, unknown_prefix):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(secured, guess).models.list()
        assert caught.value.code == "invalid_api_key"
        assert "Incorrect API key provided" in caught.value.message
    assert [m.id for m in sdk(secured, key).models.list()]  # the real one still works


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "sk-cb-no-scheme"])
def test_a_key_not_sent_as_a_bearer_token_counts_as_no_key(
    secured: LiveServer, authorization: str
) -> None:
    response = httpx.get(f"{secured.base_url}/v1/models", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert "You didn't provide an API key" in response.json()["error"]["message"]
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_disabled_authentication_serves_everyone_even_once_keys_exist(
    start_server: ServerFactory,
) -> None:
    server = start_server(auth="disabled", master_key=MASTER)
    make_key(server)

    anonymous = httpx.get(f"{server.base_url}/v1/models")
    wrong = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    admin = httpx.get(f"{server.base_url}/admin/keys")

    assert anonymous.status_code == 200
    assert wrong.status_code == 200
    # Open on purpose, still: only the master key manages keys.
    assert admin.status_code == 403
    assert admin.json()["error"]["code"] == "permission_denied"


def test_a_key_sees_only_its_models(secured: LiveServer, sdk: SdkFactory) -> None:
    client = sdk(secured, str(make_key(secured, models=["echo"])["key"]))

    assert [m.id for m in client.models.list()] == ["echo"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("echo-slow")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="echo-slow", messages=HELLO)


def test_admin_routes_need_the_master_key(secured: LiveServer, sdk: SdkFactory) -> None:
    key = str(make_key(secured)["key"])

    response = httpx.get(
        f"{secured.base_url}/admin/keys", headers={"Authorization": f"Bearer {key}"}
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    with pytest.raises(openai.PermissionDeniedError):
        sdk(secured, key).get("/../admin/keys", cast_to=object)


def test_stored_completions_belong_to_their_key(secured: LiveServer, sdk: SdkFactory) -> None:
    alice = sdk(secured, str(make_key(secured)["key"]))
    bob = sdk(secured, str(make_key(secured)["key"]))
    kept = alice.chat.completions.create(model="echo", messages=HELLO, store=True)

    assert alice.chat.completions.retrieve(kept.id).id == kept.id
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.retrieve(kept.id)
    assert [c.id for c in bob.chat.completions.list()] == []


def test_the_first_key_closes_an_open_server(start_server: ServerFactory, tmp_path: Path) -> None:
    database = tmp_path / "open.db"
    server = start_server(database_url=f"sqlite+aiosqlite:///{database}")
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200

    created = subprocess.run(
        [sys.executable, "-m", "chatbot_api", "keys", "create", "--name", "first"],
        env=clean_env(CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{database}"),
        capture_output=True,
        text=True,
        check=True,
    )

    key = created.stdout.strip()
    assert key.startswith("sk-cb-")
    assert created.stdout == key + "\n"  # the key alone: KEY=$(chatbot-api keys create ...)
    assert "shown once" in created.stderr
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.base_url}/v1/models").status_code == 200:
        assert time.monotonic() < deadline, "the open server did not start asking for keys"
        time.sleep(0.1)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{server.base_url}/v1/models", headers=headers).status_code == 200


def test_cli_lists_and_revokes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    assert (
        main(
            [
                "keys",
                "create",
                "--name",
                "ops",
                "--models",
                "echo",
                "--rpm",
                "5",
                "--expires-in",
                "30d",
            ]
        )
        == 0
    )
    key = capsys.readouterr().out.strip()

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing
    assert key not in listing
    key_id = next(word for word in listing.split() if word.startswith("key_"))
    assert main(["keys", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == key_id
    assert (listed["name"], listed["models"], listed["rpm"]) == ("ops", ["echo"], 5)
    assert listed["expires_at"] > listed["created"]
    assert listed["revoked_at"] is None
    assert key.startswith(listed["prefix"])
    assert key != listed["prefix"]
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked_at"] is not None
    assert main(["keys", "revoke", "key_missing"]) == 1
    assert main(["keys", "create", "--name", "x", "--expires-in", "soon"]) == 2


def test_serve_refuses_an_open_api_on_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    monkeypatch.setenv("CHATBOT_BUNDLED_MODEL", "false")
    monkeypatch.setenv("CHATBOT_BUNDLED_CHAT_MODEL", "false")

    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2

    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


def test_serve_on_the_network_starts_once_a_key_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'network.db'}"
    monkeypatch.setenv("CHATBOT_DATABASE_URL", database)
    assert main(["keys", "create", "--name", "first"]) == 0
    key = capsys.readouterr().out.strip()
    env = clean_env(
        CHATBOT_DATABASE_URL=database,
        CHATBOT_DATA_DIR=str(tmp_path),
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
    )

    with ServerProcess(env, tmp_path / "output.txt", "--host", "0.0.0.0") as server:
        without = httpx.get(f"{server.base_url}/v1/models")
        with_key = httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )

    assert server.returncode == 0, server.output.read_text()
    assert without.status_code == 401  # not open: the key turned authentication on
    assert with_key.status_code == 200
