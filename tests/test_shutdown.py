"""SIGTERM with streams in flight: the short one finishes, the long one ends with an error
event within the grace period, what was stored is flushed, and the process exits 0."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.servers import ServerProcess, clean_env


def _words(count: int) -> str:
    return " ".join(f"w{n}" for n in range(count))


def _stream(base_url: str, words: int, events: list[str], started: threading.Event) -> None:
    body = {
        "model": "slow",
        "stream": True,
        "store": True,
        "messages": [{"role": "user", "content": _words(words)}],
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()


def test_sigterm_lets_streams_finish_within_the_grace_period(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.slow]\nprovider = "echo"\ntoken_delay = 0.1\n')
    database = tmp_path / "shutdown.db"
    env = clean_env(
        CHATBOT_MODELS_FILE=str(models),
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        CHATBOT_SHUTDOWN_GRACE_SECONDS="2",
    )
    short: list[str] = []
    long: list[str] = []
    with ServerProcess(env, tmp_path / "output.txt") as server:
        threads = []
        for words, events in ((8, short), (300, long)):
            started = threading.Event()
            thread = threading.Thread(
                target=_stream, args=(server.base_url, words, events, started)
            )
            thread.start()
            assert started.wait(10)
            threads.append(thread)
        terminated = time.monotonic()
        server.terminate()
        for thread in threads:
            thread.join(30)
    took = time.monotonic() - terminated

    assert server.returncode == 0, server.output.read_text()
    # The short stream (under a second) ran to its end.
    assert short[-1] == "[DONE]"
    assert json.loads(short[-2])["choices"][0]["finish_reason"] == "stop"
    # The long one (30 s) was ended after the 2 s grace period, with an error event.
    assert long[-1] == "[DONE]"
    assert json.loads(long[-2])["error"]["code"] == "server_shutting_down"
    assert len(long) > 20  # it kept streaming during the grace period
    assert took < 15
    # The log says the server ended it, not that its client left.
    logged = [
        json.loads(line)["message"]
        for line in server.output.read_text().splitlines()
        if line.startswith("{")
    ]
    assert "ended at shutdown; generation stopped" in logged
    assert "client disconnected; generation stopped" not in logged
    # The finished stream was stored and flushed before the process exited.
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT count(*) FROM stored_completions").fetchone()
    assert rows == (1,)
