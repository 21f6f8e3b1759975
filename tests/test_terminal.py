"""What a person sees at the terminal: logs for people at a terminal, JSON elsewhere, one
start-up line that says where everything is, and no library chatter."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import ServerProcess, clean_env, free_port


def _read_until(fd: int, needle: str, timeout: float = 60.0) -> str:
    """What the terminal showed, up to and including ``needle`` (or all of it at the deadline)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            break
        seen += chunk
    # Rich colours the words and underlines the links: the text is what a person reads.
    return re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))


def test_at_a_terminal_the_log_is_for_people(tmp_path: Path) -> None:
    port = free_port()
    leader, follower = pty.openpty()
    env = clean_env(
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATA_DIR=str(tmp_path),
        COLUMNS="240",  # one log line per line, so that the test can read it whole
        TERM="xterm-256color",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    try:
        shown = _read_until(leader, "Application startup complete")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        os.close(leader)

    base = f"http://127.0.0.1:{port}"
    assert f"serving echo · api {base}/v1 · docs {base}/docs · playground {base}/" in shown
    # Not JSON lines, and none of the set-up chatter of the libraries underneath.
    assert not any(line.lstrip().startswith("{") for line in shown.splitlines()), shown
    assert "alembic" not in shown.lower()
    assert "Context impl" not in shown


def test_piped_the_log_is_json_without_colour_codes_and_chatter_waits_for_debug(
    tmp_path: Path,
) -> None:
    env = clean_env(
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATA_DIR=str(tmp_path / "data"),
        CHATBOT_MASTER_KEY="sk-terminal-test-master-key",  # needed to listen on every address
    )
    with ServerProcess(env, tmp_path / "info.txt", "--host", "0.0.0.0") as server:
        port = server.port
    with ServerProcess({**env, "CHATBOT_LOG_LEVEL": "DEBUG"}, tmp_path / "debug.txt"):
        pass

    info = (tmp_path / "info.txt").read_text()
    assert "\x1b" not in info  # no escape codes anywhere
    records = [json.loads(line) for line in info.splitlines() if line.strip()]  # all JSON
    assert any(r["message"].startswith("Started server process") for r in records)
    assert all("color_message" not in r for r in records)  # uvicorn's coloured copy dropped
    assert not [r for r in records if r["logger"].startswith("alembic")]
    # Listening on every address, the line names this machine's own.
    base = f"http://localhost:{port}"
    assert f"serving echo · api {base}/v1 · docs {base}/docs · playground {base}/" in [
        r["message"] for r in records
    ]
    # At DEBUG the chatter is there, as DEBUG.
    debug = [json.loads(line) for line in (tmp_path / "debug.txt").read_text().splitlines()]
    alembic = [r for r in debug if r["logger"].startswith("alembic")]
    assert alembic
    assert {r["level"] for r in alembic} == {"DEBUG"}
