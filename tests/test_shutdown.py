"""SIGTERM with streams in flight: the short one finishes, the long one ends with an error
event within the grace period, what was stored is flushed, and the process exits 0; a stream
whose client stopped reading is cut by the backstop, and its generation stopped."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

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
        CHATBOT_BUNDLED_CHAT_MODEL="false",
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


def _generation_stopped(output: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in output.read_text().splitlines() if line[:1] == "{"]
    return [r for r in records if r["message"].endswith("generation stopped")]


def test_sigterm_cuts_a_client_that_stopped_reading_and_stops_its_generation(
    tmp_path: Path,
) -> None:
    env = clean_env(
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'stalled.db'}",
        CHATBOT_SHUTDOWN_GRACE_SECONDS="0",
        CHATBOT_MAX_BODY_BYTES=str(16 * 1024 * 1024),
        CHATBOT_RATE_LIMIT_TPM="0",
    )
    # 8 MB of answer in 200 pieces: the server fills every buffer between it and the client
    # (some 4 MB) at once, then waits to send the next piece, and cannot end the stream itself.
    words = " ".join(f"{n:03d}" + "x" * 40_000 for n in range(200))
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}
    with ServerProcess(env, tmp_path / "output.txt") as server:
        url = f"{server.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=30) as stalled:
            assert stalled.status_code == 200
            time.sleep(1)  # not reading
            server.terminate()
            # sse-starlette's backstop cuts it two seconds after the grace period (none).
            deadline = time.monotonic() + 10
            while not (stopped := _generation_stopped(server.output)):
                assert time.monotonic() < deadline, "the stalled stream was never stopped"
                time.sleep(0.1)
        # The client leaves too, and the server's shutdown ends.

    assert server.returncode == 0, server.output.read_text()
    assert len(stopped) == 1
    assert stopped[0]["model"] == "echo"
    assert stopped[0]["pieces_sent"] < 200
    output = server.output.read_text()
    assert "stopping a stream that was still running" not in output  # not our own cut
    assert "Error closing body iterator" not in output
