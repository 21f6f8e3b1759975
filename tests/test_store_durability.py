"""Nothing acknowledged is lost: a database that is away for a moment, a SIGTERM with writes
pending, and rows of another owner that stay invisible."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.servers import ServerProcess, clean_env

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "keep this"}], "store": True}


def _rows(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT id, owner FROM stored_completions").fetchall()


def test_writes_wait_out_a_locked_database(start_server: ServerFactory, tmp_path: Path) -> None:
    database = tmp_path / "locked.db"
    log_file = tmp_path / "api.log"
    server = start_server(
        database_url=f"sqlite+aiosqlite:///{database}",
        database_busy_timeout_ms=50,
        log_file=log_file,
    )
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    ids = []
    for _ in range(10):
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 200  # answers keep coming while the database is away
        ids.append(response.json()["id"])
    time.sleep(0.5)
    assert _rows(database) == []
    blocker.execute("COMMIT")
    blocker.close()

    listed = httpx.get(f"{server.base_url}/v1/chat/completions", params={"limit": 100}).json()
    assert [c["id"] for c in listed["data"]] == ids
    retries = [
        json.loads(line)
        for line in log_file.read_text().splitlines()
        if "writing stored completions failed" in line
    ]
    assert retries, "the failed attempts were not logged"
    assert "locked" in retries[0]["error"]


def test_store_by_default(start_server: ServerFactory) -> None:
    server = start_server(store_by_default=True)

    created = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "kept"}]},
    ).json()
    opted_out = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "not"}], "store": False},
    ).json()

    base = f"{server.base_url}/v1/chat/completions"
    assert httpx.get(f"{base}/{created['id']}").status_code == 200
    assert httpx.get(f"{base}/{opted_out['id']}").status_code == 404


def test_another_owners_rows_are_invisible(start_server: ServerFactory, tmp_path: Path) -> None:
    database = tmp_path / "owners.db"
    server = start_server(database_url=f"sqlite+aiosqlite:///{database}")
    mine = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT).json()["id"]
    httpx.get(f"{server.base_url}/v1/chat/completions")  # waits for the write
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO stored_completions (id, owner, model, created, request_id, "
            "messages_json, response_json, metadata, prompt_tokens, completion_tokens) "
            "VALUES ('chatcmpl-theirs', 'key_other', 'echo', 1, NULL, '[]', '{}', '{}', 0, 0)"
        )

    base = f"{server.base_url}/v1/chat/completions"
    assert [c["id"] for c in httpx.get(base).json()["data"]] == [mine]
    for response in (
        httpx.get(f"{base}/chatcmpl-theirs"),
        httpx.get(f"{base}/chatcmpl-theirs/messages"),
        httpx.post(f"{base}/chatcmpl-theirs", json={"metadata": {"a": "b"}}),
        httpx.delete(f"{base}/chatcmpl-theirs"),
    ):
        assert response.status_code == 404
    assert len(_rows(database)) == 2


def test_sigterm_with_writes_pending_loses_none(tmp_path: Path, data_dir: Path) -> None:
    database = tmp_path / "pending.db"
    env = clean_env(
        CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        CHATBOT_DATABASE_BUSY_TIMEOUT_MS="50",
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_DATA_DIR=str(data_dir),
    )
    subprocess.run(
        [sys.executable, "-m", "chatbot_api", "db", "upgrade"],
        env=env,
        check=True,
        capture_output=True,
    )
    with ServerProcess(env, tmp_path / "output.txt") as server:
        base = server.base_url
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        acknowledged = [
            httpx.post(f"{base}/v1/chat/completions", json=CHAT).json()["id"] for _ in range(25)
        ]
        server.terminate()
        time.sleep(1.0)  # the server is shutting down, its writes still blocked
        assert server.running, "the server exited with writes pending"
        blocker.execute("COMMIT")
        blocker.close()
    assert server.returncode == 0

    assert sorted(row[0] for row in _rows(database)) == sorted(acknowledged)
    assert "flushing stored completions" in server.output.read_text()


def test_a_change_while_the_database_is_locked_is_503(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    database = tmp_path / "busy.db"
    server = start_server(
        database_url=f"sqlite+aiosqlite:///{database}", database_busy_timeout_ms=50
    )
    base = f"{server.base_url}/v1/chat/completions"
    kept = httpx.post(base, json=CHAT).json()["id"]
    httpx.get(base)  # waits for the write
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    response = httpx.delete(f"{base}/{kept}")

    blocker.execute("COMMIT")
    blocker.close()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"
    assert httpx.get(f"{base}/{kept}").status_code == 200  # nothing was lost


def test_a_request_that_fails_gives_its_store_place_back(start_server: ServerFactory) -> None:
    server = start_server(store_queue_size=1)  # a request that kept its place would block all
    url = f"{server.base_url}/v1/chat/completions"

    def body(model: str, text: str = "hi") -> dict[str, object]:
        return {"model": model, "store": True, "messages": [{"role": "user", "content": text}]}

    assert httpx.post(url, json=body("broken-at-start")).status_code == 500
    overloaded = httpx.post(url, json=body("overloaded-mid-stream")).json()
    assert overloaded["error"]["code"] == "server_overloaded"
    with httpx.stream("POST", url, json={**body("broken-mid-stream"), "stream": True}) as answer:
        assert '"error"' in answer.read().decode()
    long = " ".join(["w"] * 100)  # five seconds of echo-slow
    with httpx.stream("POST", url, json={**body("echo-slow", long), "stream": True}) as answer:
        next(answer.iter_lines())  # then leave, mid-stream

    # The one place is free again once the server has seen the client go.
    deadline = time.monotonic() + 10
    while (kept := httpx.post(url, json=body("echo"))).status_code == 503:
        assert kept.json()["error"]["code"] == "database_unavailable"
        assert time.monotonic() < deadline, "a failed request kept its place in the queue"
        time.sleep(0.05)
    assert kept.status_code == 200
    assert httpx.get(f"{url}/{kept.json()['id']}").status_code == 200
