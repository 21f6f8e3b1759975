"""State that outlives a server: responses and conversations continued after a restart (or a
crash), from either worker of ``serve --workers 2`` at once, and from another server process
sharing one PostgreSQL database; a background response whose server was killed ends failed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseInputItemParam
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from chatbot_api.app import create_app
from tests.conftest import SdkFactory, make_settings
from tests.databases import POSTGRES_URL
from tests.servers import AnyServer, LiveServer, ServerProcess, clean_env

__all__ = ["BACKENDS", "database_for", "fresh_postgres", "needs_postgres"]

needs_postgres = pytest.mark.skipif(
    POSTGRES_URL is None, reason="CHATBOT_TEST_POSTGRES_URL is not set"
)
BACKENDS = ["sqlite", pytest.param("postgres", marks=needs_postgres)]

#: An echo model that takes five seconds a word: a background response still running.
STALLED_MODELS = """
[models."echo-stalled"]
provider = "echo"
owned_by = "tests"
token_delay = 5
"""


async def _run_admin(statement: str) -> None:
    assert POSTGRES_URL is not None
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL of ``CHATBOT_TEST_POSTGRES_URL``,
    dropped afterwards: no other test's rows, and no other test wiping ours."""
    assert POSTGRES_URL is not None
    name = f"chatbot_state_{uuid.uuid4().hex[:16]}"
    asyncio.run(_run_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def database_for(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'state.db'}"
    else:
        with fresh_postgres() as url:
            yield url


def _env(directory: Path, database_url: str, **extra: str) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return clean_env(
        CHATBOT_DATABASE_URL=database_url,
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATA_DIR=str(directory),
        **extra,
    )


def _user(words: str) -> ResponseInputItemParam:
    return {"role": "user", "content": words}


def _texts(client: openai.OpenAI, conversation_id: str) -> list[tuple[str, str]]:
    """Every item of the conversation, oldest first, as (role, text)."""
    items = client.conversations.items.list(conversation_id, order="asc", limit=100)
    out: list[tuple[str, str]] = []
    for item in items:
        assert item.type == "message", item
        out.append((item.role, "".join(getattr(part, "text", "") for part in item.content)))
    return out


def _input_tokens(response: Response) -> int:
    assert response.usage is not None
    return response.usage.input_tokens


@contextmanager
def _fresh(server: AnyServer) -> Iterator[openai.OpenAI]:
    """A client with a connection of its own, which either worker may accept."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-any", max_retries=0) as client:
        yield client


def _live(directory: Path, database_url: str) -> LiveServer:
    """A server in a thread of this process (quick to start) on ``database_url``."""
    return LiveServer(create_app(make_settings(database_url=database_url, data_dir=directory)))


@pytest.mark.parametrize("stop", ["shutdown", "sigkill"])
def test_a_restarted_server_continues_every_response_and_conversation(
    tmp_path: Path, sdk: SdkFactory, stop: str
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    # A crash needs a process of its own to kill; a clean restart is quicker in a thread.
    first: AnyServer = (
        ServerProcess(_env(tmp_path, database_url), tmp_path / "first.txt")
        if stop == "sigkill"
        else _live(tmp_path, database_url)
    )
    with first:
        client = sdk(first, "sk-any")
        opening = client.responses.create(model="echo", input="one two three")
        conversation = client.conversations.create(items=[_user("remember the word apple")])
        turn = client.responses.create(
            model="echo", input="first turn", conversation=conversation.id
        )
        if isinstance(first, ServerProcess):  # whatever was answered must be on disk already
            assert first.process is not None
            first.process.kill()

    with _live(tmp_path, database_url) as second:
        client = sdk(second, "sk-any")
        assert client.responses.retrieve(opening.id).output_text == "one two three"
        assert client.responses.retrieve(turn.id).output_text == "first turn"

        onwards = client.responses.create(
            model="echo", input="four five", previous_response_id=opening.id
        )
        assert onwards.output_text == "four five"
        assert _input_tokens(onwards) == 3 + 3 + 2  # the first turn, its answer, this input
        further = client.responses.create(
            model="echo", input="six", previous_response_id=onwards.id
        )
        assert _input_tokens(further) == 3 + 3 + 2 + 2 + 1
        # Its own input only, as OpenAI lists a continuation's input items.
        (own,) = client.responses.input_items.list(further.id).data
        assert own.type == "message"
        assert [getattr(part, "text", None) for part in own.content] == ["six"]

        next_turn = client.responses.create(
            model="echo", input="second turn", conversation=conversation.id
        )
        assert next_turn.output_text == "second turn"
        assert _input_tokens(next_turn) == 4 + 2 + 2 + 2
        assert _texts(client, conversation.id) == [
            ("user", "remember the word apple"),
            ("user", "first turn"),
            ("assistant", "first turn"),
            ("user", "second turn"),
            ("assistant", "second turn"),
        ]
        assert client.conversations.retrieve(conversation.id).id == conversation.id


def _workers_by_request(log_dir: Path) -> dict[str, str]:
    """Which worker (by its log file) answered each request id."""
    answered: dict[str, str] = {}
    for log in log_dir.glob("api.*.log"):
        for line in log.read_text().splitlines():
            record: dict[str, Any] = json.loads(line)
            if record.get("path", "").startswith("/v1/") and record.get("request_id"):
                answered[record["request_id"]] = log.name
    return answered


def test_either_worker_continues_what_the_other_just_wrote(tmp_path: Path) -> None:
    # SQLite, the default: two processes share the file (PostgreSQL is shared by two servers
    # below).
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    env = _env(tmp_path, url, CHATBOT_LOG_FILE=str(tmp_path / "api.log"))
    with ServerProcess(env, tmp_path / "output.txt", "--workers", "2") as server:
        with _fresh(server) as client:
            conversation = client.conversations.create()
        chain: list[str] = []  # request ids of the turns, in order
        previous: str | None = None
        turns = 0
        # Six turns at least; more (a bounded number) until two turns in a row were
        # answered by different workers, so that one read what the other had just written.
        while turns < 6 or (turns < 40 and not _crossed(tmp_path, chain)):
            words = f"turn number {turns}"
            with _fresh(server) as client:
                # Every other turn streamed: its end, too, comes after it is stored.
                answer, request_id = _turn(client, words, previous, stream=turns % 2 == 1)
            chain.append(request_id)
            assert answer.status == "completed"
            assert answer.output_text == words
            # Every earlier turn (3 words in, 3 out), then this input.
            assert _input_tokens(answer) == 6 * turns + 3
            with _fresh(server) as client:
                assert client.responses.retrieve(answer.id).output_text == words
            with _fresh(server) as client:
                said = client.responses.create(
                    model="echo", input=words, conversation=conversation.id
                )
            assert _input_tokens(said) == 6 * turns + 3
            previous = answer.id
            turns += 1
        with _fresh(server) as client:
            listed = _texts(client, conversation.id)
            together = client.conversations.create()
        # Turns sent at once to both workers: each lands whole, none is refused.
        inputs = _at_once([server], together.id, 12)
        with _fresh(server) as client:
            _turns_whole(_texts(client, together.id), inputs)
    assert server.returncode == 0, server.output.read_text()
    assert _crossed(tmp_path, chain), "one worker answered every turn"
    assert listed == [
        (role, f"turn number {i}") for i in range(turns) for role in ("user", "assistant")
    ]


def _at_once(servers: list[AnyServer], conversation_id: str, count: int) -> list[str]:
    """``count`` turns of the conversation sent together, spread over ``servers``, each on a
    connection of its own; their inputs."""

    def say(i: int) -> str:
        words = f"together {i}"
        with _fresh(servers[i % len(servers)]) as client:
            answer = client.responses.create(
                model="echo", input=words, conversation=conversation_id
            )
        assert answer.output_text == words
        return words

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(say, range(count)))


def _turns_whole(listed: list[tuple[str, str]], inputs: list[str]) -> None:
    """Each turn's input and its answer side by side, every turn once."""
    users = listed[0::2]
    answers = listed[1::2]
    assert [role for role, _ in users] == ["user"] * len(inputs), listed
    assert answers == [("assistant", words) for _, words in users], listed
    assert sorted(words for _, words in users) == sorted(inputs)


def _turn(
    client: openai.OpenAI, words: str, previous: str | None, *, stream: bool
) -> tuple[Response, str]:
    """The response to ``words`` continuing ``previous``, and the id of its request."""
    if not stream:
        raw = client.responses.with_raw_response.create(
            model="echo", input=words, previous_response_id=previous
        )
        return raw.parse(), raw.headers["x-request-id"]
    streamed = client.responses.with_raw_response.create(
        model="echo", input=words, previous_response_id=previous, stream=True
    )
    final = [event.response for event in streamed.parse() if event.type == "response.completed"]
    assert len(final) == 1
    return final[0], streamed.headers["x-request-id"]


def _crossed(log_dir: Path, chain: list[str]) -> bool:
    """Whether two consecutive turns of ``chain`` were answered by different workers."""
    workers = _workers_by_request(log_dir)
    answered = [workers.get(request_id) for request_id in chain]
    return any(a and b and a != b for a, b in pairwise(answered))


@contextmanager
def _both(*servers: ServerProcess) -> Iterator[None]:
    """Start the servers side by side (each takes seconds to start), stop them all after."""
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=len(servers)) as pool:
        starting = [(server, pool.submit(server.__enter__)) for server in servers]
        failures = []
        for server, started in starting:
            try:
                started.result()
            except Exception as exc:  # a server that did not start stopped itself
                failures.append(exc)
            else:
                stack.push(server)
        if failures:
            raise failures[0]
        yield


@needs_postgres
def test_two_servers_sharing_postgres_continue_each_others_turns(
    tmp_path: Path, sdk: SdkFactory
) -> None:
    with fresh_postgres() as url:
        server_a = ServerProcess(_env(tmp_path / "a", url), tmp_path / "a.txt")
        server_b = ServerProcess(_env(tmp_path / "b", url), tmp_path / "b.txt")
        with _both(server_a, server_b):
            a, b = sdk(server_a, "sk-any"), sdk(server_b, "sk-any")

            first = a.responses.create(model="echo", input="alpha beta")
            second = b.responses.create(model="echo", input="gamma", previous_response_id=first.id)
            third = a.responses.create(model="echo", input="delta", previous_response_id=second.id)

            assert _input_tokens(second) == 2 + 2 + 1
            assert _input_tokens(third) == 2 + 2 + 1 + 1 + 1
            assert b.responses.retrieve(third.id).output_text == "delta"
            assert a.responses.retrieve(second.id).output_text == "gamma"

            conversation = b.conversations.create(items=[_user("opening words")])
            for i, client in enumerate((a, b, a, b)):
                said = client.responses.create(
                    model="echo", input=f"turn {i}", conversation=conversation.id
                )
                assert _input_tokens(said) == 2 + 4 * i + 2
            expected = [("user", "opening words")] + [
                (role, f"turn {i}") for i in range(4) for role in ("user", "assistant")
            ]
            assert _texts(a, conversation.id) == expected
            assert _texts(b, conversation.id) == expected

            # Turns sent at once through both servers: each lands whole, none is refused.
            together = a.conversations.create()
            inputs = _at_once([server_a, server_b], together.id, 12)
            _turns_whole(_texts(b, together.id), inputs)


@needs_postgres
def test_a_killed_servers_background_response_fails_once_its_lease_ends(
    tmp_path: Path, sdk: SdkFactory
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(STALLED_MODELS)
    lease = {"CHATBOT_BACKGROUND_LEASE_SECONDS": "2", "CHATBOT_MODELS_FILE": str(models)}
    with fresh_postgres() as url:
        server_a = ServerProcess(_env(tmp_path / "a", url, **lease), tmp_path / "a.txt")
        server_b = ServerProcess(_env(tmp_path / "b", url, **lease), tmp_path / "b.txt")
        with _both(server_a, server_b):
            a, b = sdk(server_a, "sk-any"), sdk(server_b, "sk-any")
            queued = a.responses.create(
                model="echo-stalled", input="a long answer of many words", background=True
            )
            assert queued.status == "queued"
            # While its server lives and renews the lease, the other server sees it running.
            assert b.responses.retrieve(queued.id).status in ("queued", "in_progress")

            assert server_a.process is not None
            server_a.process.kill()
            server_a.process.wait()

            deadline = time.monotonic() + 30  # bounds a hang only: the lease is two seconds
            seen = b.responses.retrieve(queued.id)
            while seen.status in ("queued", "in_progress") and time.monotonic() < deadline:
                time.sleep(0.25)
                seen = b.responses.retrieve(queued.id)

            assert seen.status == "failed"
            assert seen.error is not None
            assert seen.error.code == "server_error"
            assert "stopped" in seen.error.message
            again = b.responses.retrieve(queued.id)
            assert again.status == "failed"
            assert again.error is not None
            assert again.error.message == seen.error.message
