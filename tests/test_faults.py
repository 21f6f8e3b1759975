"""The database failing, through the suite's own TCP fault proxy (``tests/faultproxy.py``):
PostgreSQL away while completions are stored, read or keys checked, a record PostgreSQL
refuses, a commit whose answer is lost. Plus what a NUL character does. Redis failing under
the rate limiter is ``test_redis_faults.py``."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from chatbot_api.app import create_app
from chatbot_api.store.writer import UNSTORED_FILE_NAME
from tests.clients import MASTER, make_key
from tests.conftest import SdkFactory, ServerFactory, make_settings
from tests.databases import BACKENDS, POSTGRES_URL, database_url_for
from tests.faultproxy import FaultProxy
from tests.servers import LiveServer

needs_postgres = pytest.mark.skipif(POSTGRES_URL is None, reason="CHATBOT_TEST_POSTGRES_URL unset")

#: Far longer than any of these waits takes; only there so that a bug fails instead of hanging.
DEADLINE = 20.0


def _ask(base: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=DEADLINE)


def _stream(base: str, text: str, **extra: Any) -> tuple[int, list[str]]:
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": text}]}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json={**body, **extra}, timeout=DEADLINE
    ) as answer:
        if answer.status_code != 200:
            answer.read()
            return answer.status_code, [answer.text]
        return 200, [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]


def _listed_ids(base: str) -> list[str]:
    """Every stored completion's id, once the writer has caught up (503 until it has)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        listed = httpx.get(f"{base}/v1/chat/completions", params={"limit": 100}, timeout=DEADLINE)
        if listed.status_code == 200:
            return [c["id"] for c in listed.json()["data"]]
        assert listed.status_code == 503, listed.text
        assert time.monotonic() < deadline, "the stored completions never became readable"


def _metric(base: str, sample: str) -> float:
    """A sample's value in ``GET /metrics`` (its name and labels as written there)."""
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[FaultProxy, str]]:
    """An empty PostgreSQL behind a fault proxy, and the URL that reaches it through it."""
    if POSTGRES_URL is None:
        pytest.skip("CHATBOT_TEST_POSTGRES_URL is not set")
    url = make_url(database_url_for("postgres", tmp_path))
    with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host=proxy.host, port=proxy.port)
        yield proxy, through.render_as_string(hide_password=False)


def _away(proxy: FaultProxy) -> None:
    """The dependency is gone: no new connections, and the open ones cut."""
    proxy.refuse()
    proxy.drop()


@needs_postgres
def test_completions_answered_while_postgres_is_away_are_all_stored(
    postgres: tuple[FaultProxy, str],
    start_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url = postgres
    server = start_server(
        database_url=url, data_dir=tmp_path, store_queue_size=6, store_flush_seconds=1
    )
    base = server.base_url
    answered = [_ask(base, "before", store=True).json()["id"]]
    assert _listed_ids(base) == answered

    _away(proxy)
    for number in range(4):
        reply = _ask(base, f"while away {number}", store=True)
        assert reply.status_code == 200, reply.text
        answered.append(reply.json()["id"])
    status, data = _stream(base, "streamed while away", store=True)
    assert status == 200
    assert data[-1] == "[DONE]"
    answered.append(json.loads(data[0])["id"])
    # Five waiting, one place left: taken by this one; the next finds no room.
    answered.append(_ask(base, "the last place", store=True).json()["id"])
    full = _ask(base, "no room", store=True)
    full_stream, _ = _stream(base, "no room either", store=True)
    unstored = _ask(base, "not stored", store=False)

    assert full.status_code == 503
    assert full.json()["error"]["code"] == "database_unavailable"
    assert full.json()["error"]["param"] == "store"
    assert int(full.headers["retry-after"]) >= 1
    assert full_stream == 503  # refused before the stream started, not mid-way
    assert unstored.status_code == 200  # completions that keep nothing are not held back

    proxy.pass_through()
    assert _listed_ids(base) == answered
    assert "writing stored completions failed; retrying" in caplog.text
    assert _ask(base, "after", store=True).status_code == 200  # room again


@needs_postgres
def test_a_record_postgres_refuses_is_set_aside_and_the_rest_of_its_batch_written(
    postgres: tuple[FaultProxy, str],
    start_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A model id longer than the column PostgreSQL keeps it in (256 characters): SQLite
    # would store it, PostgreSQL refuses every record of that model.
    long_id = "m" * 300
    models = tmp_path / "models.toml"
    models.write_text(f'[models."{long_id}"]\nprovider = "echo"\n')
    proxy, url = postgres
    server = start_server(database_url=url, data_dir=tmp_path, models_file=models)
    base = server.base_url
    rejected = 'chatbot_store_records_rejected_total{reason="refused"}'
    rejected_before = _metric(base, rejected)

    _away(proxy)  # the writer holds the first; the others wait and form a batch together
    first = _ask(base, "first", store=True).json()["id"]
    refused = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": long_id, "store": True, "messages": [{"role": "user", "content": "x"}]},
    ).json()["id"]
    last = _ask(base, "last", store=True).json()["id"]
    proxy.pass_through()

    assert _listed_ids(base) == [first, last]
    assert httpx.get(f"{base}/v1/chat/completions/{refused}").status_code == 404
    lines = (tmp_path / UNSTORED_FILE_NAME).read_text().splitlines()
    assert len(lines) == 1
    kept = json.loads(lines[0])
    assert kept["reason"] == "refused"
    assert "too long" in kept["error"]
    assert kept["record"]["id"] == refused
    assert kept["record"]["model"] == long_id
    assert json.loads(kept["record"]["messages_json"]) == [{"role": "user", "content": "x"}]
    assert _metric(base, rejected) == rejected_before + 1
    assert refused in caplog.text


def test_records_the_database_has_not_taken_at_shutdown_go_to_the_recovery_file(
    tmp_path: Path,
) -> None:
    database = tmp_path / "locked.db"
    settings = make_settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        database_busy_timeout_ms=50,
        store_flush_seconds=0.5,
        data_dir=tmp_path,
    )
    with LiveServer(create_app(settings)) as server:
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        answered = [_ask(server.base_url, f"kept {n}", store=True).json()["id"] for n in range(3)]
    blocker.execute("ROLLBACK")
    blocker.close()

    kept = [json.loads(line) for line in (tmp_path / UNSTORED_FILE_NAME).read_text().splitlines()]
    assert [entry["record"]["id"] for entry in kept] == answered
    assert {entry["reason"] for entry in kept} == {"shutdown"}
    assert json.loads(kept[0]["record"]["response_json"])["choices"][0]["message"] == {
        "role": "assistant",
        "content": "kept 0",
        "refusal": None,
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_nul_is_never_silently_dropped_or_blamed_on_the_database(
    backend: str, start_server: ServerFactory, tmp_path: Path
) -> None:
    # PostgreSQL's text cannot hold NUL and its JSON operators cannot extract one; SQLite
    # keeps it. Either way a client must learn what happened: 400 naming the field, or kept.
    server = start_server(database_url=database_url_for(backend, tmp_path))
    base = server.base_url
    kept = _ask(base, "kept", store=True, metadata={"tag": "ok"}).json()["id"]
    completions = f"{base}/v1/chat/completions"

    refusals = [
        ("messages[0].content", _ask(base, "a\u0000b", store=True)),
        ("metadata.tag", _ask(base, "hi", store=True, metadata={"tag": "a\u0000b"})),
        ("metadata.tag", httpx.post(f"{completions}/{kept}", json={"metadata": {"tag": "\u0000"}})),
    ]
    by_id = httpx.get(f"{completions}/x%00")
    updated = httpx.post(f"{completions}/x%00", json={"metadata": {"tag": "new"}})
    deleted = httpx.delete(f"{completions}/x%00")
    filtered = httpx.get(completions, params={"metadata[tag]": "a\u0000"})
    after = httpx.get(completions, params={"after": "x\u0000"})

    for param, refused in refusals:
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param
    # Lookups with NUL (a path, a query string) match nothing, on either database.
    assert by_id.status_code == 404
    assert updated.status_code == 404
    assert deleted.status_code == 404
    assert filtered.status_code == 200
    assert filtered.json()["data"] == []
    assert after.status_code == 200
    assert after.json()["data"] == []
    listed = httpx.get(completions, params={"metadata[tag]": "ok"}).json()
    assert [c["id"] for c in listed["data"]] == [kept]


@needs_postgres
def test_while_postgres_is_away_reads_are_503_and_the_server_is_not_ready(
    postgres: tuple[FaultProxy, str], start_server: ServerFactory
) -> None:
    proxy, url = postgres
    server = start_server(database_url=url)
    base = server.base_url
    kept = _ask(base, "kept", store=True).json()["id"]
    assert _listed_ids(base) == [kept]

    _away(proxy)
    read = httpx.get(f"{base}/v1/chat/completions/{kept}", timeout=DEADLINE)
    ready = httpx.get(f"{base}/ready", timeout=DEADLINE)
    alive = httpx.get(f"{base}/health")
    proxy.pass_through()

    assert read.status_code == 503
    assert read.json()["error"]["code"] == "database_unavailable"
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "the database does not answer" in ready.json()["error"]["message"]
    assert alive.status_code == 200  # alive, only not ready
    assert httpx.get(f"{base}/v1/chat/completions/{kept}").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200


@needs_postgres
def test_an_open_server_stays_open_while_postgres_is_away(
    postgres: tuple[FaultProxy, str],
    start_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url = postgres
    server = start_server(database_url=url)  # no master key, no API key: open
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200

    _away(proxy)
    time.sleep(1.1)  # an open server looks for new keys once a second: now it cannot
    models = httpx.get(f"{server.base_url}/v1/models", timeout=DEADLINE)
    proxy.pass_through()

    # No key can be made while the database is away, so nobody is locked out for it.
    assert models.status_code == 200
    assert "could not check whether API keys exist" in caplog.text


@needs_postgres
def test_a_write_whose_commit_answer_is_lost_is_stored_once(
    postgres: tuple[FaultProxy, str],
    start_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url = postgres
    server = start_server(database_url=url, data_dir=tmp_path)
    base = server.base_url

    # The writer's next COMMIT reaches PostgreSQL, and the connection is lost before its
    # answer comes back: the writer cannot know the rows were written, and tries again.
    proxy.cut_when_sent(b"COMMIT")
    kept = _ask(base, "kept", store=True).json()["id"]

    assert _listed_ids(base) == [kept]
    assert "writing stored completions failed; retrying" in caplog.text
    # The second attempt met the row as a duplicate, found it stored, and set nothing aside.
    assert not (tmp_path / UNSTORED_FILE_NAME).exists()


@needs_postgres
def test_a_refused_record_whose_lookup_fails_is_looked_up_again(
    postgres: tuple[FaultProxy, str],
    start_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    long_id = "m" * 300  # longer than PostgreSQL's column: every record of it is refused
    models = tmp_path / "models.toml"
    models.write_text(f'[models."{long_id}"]\nprovider = "echo"\n')
    proxy, url = postgres
    server = start_server(database_url=url, data_dir=tmp_path, models_file=models)
    base = server.base_url

    # A refused record is looked up by id before it is set aside (an earlier attempt may have
    # stored it); that lookup loses its connection once.
    proxy.cut_when_sent(b"WHERE stored_completions.id = $1")
    refused = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": long_id, "store": True, "messages": [{"role": "user", "content": "x"}]},
    ).json()["id"]

    assert _listed_ids(base) == []
    assert "writing stored completions failed; retrying" in caplog.text
    lines = (tmp_path / UNSTORED_FILE_NAME).read_text().splitlines()
    assert [json.loads(line)["record"]["id"] for line in lines] == [refused]  # once


@needs_postgres
def test_keys_cannot_be_checked_while_postgres_is_away_is_503(
    postgres: tuple[FaultProxy, str], start_server: ServerFactory, sdk: SdkFactory
) -> None:
    proxy, url = postgres
    server = start_server(database_url=url, master_key=MASTER)
    key = str(make_key(server)["key"])

    _away(proxy)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(server, key).models.list()
    master = sdk(server, MASTER).models.list()  # needs no lookup
    proxy.pass_through()

    assert caught.value.status_code == 503
    assert caught.value.code == "database_unavailable"
    assert caught.value.response.headers["retry-after"] == "1"
    assert [m.id for m in master]
    assert sdk(server, key).models.list()
