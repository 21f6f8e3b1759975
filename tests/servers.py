"""A real uvicorn server on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn
from starlette.applications import Starlette

__all__ = ["AnyServer", "LiveServer", "ServerProcess", "clean_env", "free_port"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def logged_messages(text: str) -> list[str]:
    """The ``message`` of every JSON log line in ``text`` (other lines are skipped)."""
    messages = []
    for line in text.splitlines():
        if line.startswith("{"):
            messages.append(json.loads(line).get("message", ""))
    return messages


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CHATBOT_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    env.update(extra)
    return env


class LiveServer:
    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()


class ServerProcess:
    """``chatbot-api serve`` in a process of its own, as an operator runs it.

    Its combined output goes to ``output``; leaving the block sends SIGTERM and waits, and
    ``returncode`` tells how it ended.
    """

    def __init__(self, env: dict[str, str], output: Path, *args: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.output = output
        self._command = [
            sys.executable,
            "-m",
            "chatbot_api",
            "serve",
            "--port",
            str(self.port),
            *args,
        ]
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> ServerProcess:
        with self.output.open("w") as sink:
            self.process = subprocess.Popen(
                self._command, env=self._env, stdout=sink, stderr=subprocess.STDOUT
            )
        # Generous: engines and workers start slowly on a busy machine; this only stops a hang.
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"{self.base_url}/health")
                return self
            except httpx.TransportError:
                if self.running and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
            self.stop()
            raise RuntimeError(f"the server did not start:\n{self.output.read_text()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.terminate()
        try:
            self.returncode = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        return self.returncode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


#: Either kind of test server: both answer at ``base_url``.
AnyServer = LiveServer | ServerProcess
