"""Nothing acknowledged is lost: a database that is away for a moment, that fails or refuses
a record, a SIGTERM with writes pending, and rows of another owner that stay invisible."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chatbot_api.app import create_app
from chatbot_api.store.writer import UNSTORED_FILE_NAME
from tests.conftest import ServerFactory, make_settings
from tests.servers import LiveServer, ServerProcess, clean_env

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


def test_a_read_waits_for_the_writes_before_it_and_is_503_when_they_cannot_land(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    database = tmp_path / "locked.db"
    server = start_server(
        database_url=f"sqlite+aiosqlite:///{database}", database_busy_timeout_ms=50
    )
    base = f"{server.base_url}/v1/chat/completions"
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    kept = httpx.post(base, json=CHAT).json()["id"]
    waited = httpx.get(base, timeout=30)  # for the write before it, five seconds, in vain
    blocker.execute("COMMIT")
    blocker.close()

    assert waited.status_code == 503  # not a list that leaves out what was just stored
    assert waited.json()["error"]["code"] == "database_unavailable"
    assert waited.headers["retry-after"] == "1"
    assert [c["id"] for c in httpx.get(base).json()["data"]] == [kept]


def test_a_record_sqlite_refuses_is_set_aside_and_the_rest_written_in_order(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    database = tmp_path / "refusing.db"
    server = start_server(
        database_url=f"sqlite+aiosqlite:///{database}",
        database_busy_timeout_ms=50,
        data_dir=tmp_path,
        store_batch_size=2,
    )
    base = f"{server.base_url}/v1/chat/completions"
    blocker = sqlite3.connect(database, isolation_level=None)
    # SQLite has no column too short for a value, as PostgreSQL has: a trigger refuses instead.
    blocker.execute(
        "CREATE TRIGGER refuse_slow BEFORE INSERT ON stored_completions "
        "WHEN NEW.model = 'echo-slow' BEGIN SELECT RAISE(ABORT, 'not kept here'); END"
    )
    blocker.execute("BEGIN IMMEDIATE")  # the records wait, and are written in batches after

    def store(model: str, text: str) -> str:
        body = {"model": model, "store": True, "messages": [{"role": "user", "content": text}]}
        return str(httpx.post(base, json=body).json()["id"])

    first = store("echo", "first")
    refused = store("echo-slow", "refused")
    rest = [store("echo", f"then {n}") for n in range(3)]
    blocker.execute("COMMIT")
    blocker.close()

    assert [c["id"] for c in httpx.get(base).json()["data"]] == [first, *rest]
    assert httpx.get(f"{base}/{refused}").status_code == 404
    [entry] = [
        json.loads(line) for line in (tmp_path / UNSTORED_FILE_NAME).read_text().splitlines()
    ]
    assert (entry["reason"], entry["error"]) == ("refused", "not kept here")
    assert entry["record"]["id"] == refused


def test_an_insert_sqlite_fails_outright_is_held_for_a_retry_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "failing.db"
    settings = make_settings(
        database_url=f"sqlite+aiosqlite:///{database}", store_flush_seconds=0.5, data_dir=tmp_path
    )
    with LiveServer(create_app(settings)) as server:
        # A trigger left behind by a careless change, writing to a table that is gone: SQLite
        # fails the insert itself with an OperationalError, as it does on an I/O error.
        with sqlite3.connect(database) as admin:
            admin.execute(
                "CREATE TRIGGER audit BEFORE INSERT ON stored_completions "
                "BEGIN INSERT INTO audit_log VALUES (NEW.id); END"
            )
        base = f"{server.base_url}/v1/chat/completions"
        answered = [httpx.post(base, json=CHAT).json()["id"] for _ in range(2)]
        deadline = time.monotonic() + 10
        while not any(
            getattr(record, "error", None) == "no such table: main.audit_log"
            for record in caplog.records
        ):
            assert time.monotonic() < deadline, "the failed insert was not logged"
            time.sleep(0.05)

    # Retried until the shutdown, then kept in the recovery file; never set aside as refused.
    kept = [json.loads(line) for line in (tmp_path / UNSTORED_FILE_NAME).read_text().splitlines()]
    assert [entry["record"]["id"] for entry in kept] == answered
    assert {entry["reason"] for entry in kept} == {"shutdown"}


def test_records_that_reach_neither_the_database_nor_the_recovery_file_are_logged_whole(
    tmp_path: Path,
) -> None:
    database = tmp_path / "locked.db"
    log_file = tmp_path / "api.log"
    (tmp_path / UNSTORED_FILE_NAME).mkdir()  # the recovery file cannot be written either
    settings = make_settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        database_busy_timeout_ms=50,
        store_flush_seconds=0.5,
        data_dir=tmp_path,
        log_file=log_file,
    )
    with LiveServer(create_app(settings)) as server:
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        base = f"{server.base_url}/v1/chat/completions"
        answered = [httpx.post(base, json=CHAT).json()["id"] for _ in range(2)]
    blocker.execute("ROLLBACK")
    blocker.close()

    # The log is the last durable place left: each line carries its record whole.
    lost = [
        json.loads(line)
        for line in log_file.read_text().splitlines()
        if "could not be written to the database or the recovery file" in line
    ]
    assert [line["entry"]["record"]["id"] for line in lost] == answered
    assert {line["entry"]["reason"] for line in lost} == {"shutdown"}
    response = json.loads(lost[0]["entry"]["record"]["response_json"])
    assert response["choices"][0]["message"]["content"] == "keep this"


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
        CHATBOT_BUNDLED_CHAT_MODEL="false",
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
