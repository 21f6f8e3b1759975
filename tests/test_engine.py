"""The model engine in a process of its own: shared by workers, and survived when it dies.

An engine can die for reasons no request controls (a C++ abort, the kernel's OOM killer); these
tests kill it with SIGKILL, the one way to die that nothing can clean up after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.protocol import Cancel, Hello, encode, read_frame
from chatbot_api.providers.llama.supervisor import (
    EngineLogging,
    EngineStartError,
    EngineSupervisor,
)
from tests.conftest import GEMMA_NEVER_STOP, ServerFactory
from tests.servers import AnyServer, LiveServer, ServerProcess, clean_env

MODEL = "gemma-3-270m"
#: A stream runs its whole length, so it is still running when the engine is killed.
NEVER_STOP = GEMMA_NEVER_STOP


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def _wait_for(what: str, check: Any, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Stream(threading.Thread):
    """A long streamed completion read in a thread: its events, and when it saw text."""

    def __init__(self, base_url: str, number: int) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.number = number
        self.status: int | None = None
        self.events: list[str] = []
        self.started = threading.Event()

    def run(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Tell me long story number {self.number}."}],
            "stream": True,
            "max_tokens": 400,
            "logit_bias": NEVER_STOP,
        }
        url = f"{self.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as answer:
            self.status = answer.status_code
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line.removeprefix("data: "))
                    if '"content":"' in line and '"content":""' not in line:
                        self.started.set()


def _streams_cut_off_by_a_kill(server: AnyServer, engine_pid: int) -> list[_Stream]:
    streams = [_Stream(server.base_url, n) for n in range(4)]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.started.wait(60), "a stream never produced text"
    os.kill(engine_pid, signal.SIGKILL)
    for stream in streams:
        stream.join(30)
        assert not stream.is_alive(), "a stream hung after its engine died"
    return streams


def _assert_each_ended_with_an_error(streams: list[_Stream]) -> None:
    for stream in streams:
        assert stream.status == 200
        assert stream.events[-1] == "[DONE]"
        error = json.loads(stream.events[-2])["error"]
        assert error["code"] == "engine_unavailable"
        assert error["type"] == "server_error"


def _completes(server: AnyServer) -> bool:
    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=30,
    )
    return answer.status_code == 200


def test_a_killed_engine_fails_its_requests_at_once_and_is_restarted(
    start_server: ServerFactory, data_dir: Path
) -> None:
    server = start_server(bundled_model=True, data_dir=data_dir)
    provider = server.app.state.services.registry.get(MODEL).provider
    first_pid = provider.engine_pid
    assert first_pid is not None

    streams = _streams_cut_off_by_a_kill(server, first_pid)

    _assert_each_ended_with_an_error(streams)
    # While the engine restarts, requests are refused at once, with a time to come back...
    refused = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=5,
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "engine_unavailable"
    assert refused.headers["retry-after"] == "1"
    # ... /ready names the model, and the other models serve as before.
    ready = httpx.get(f"{server.base_url}/ready", timeout=5)
    assert ready.status_code == 503
    assert MODEL in ready.json()["error"]["message"]
    echo = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "still here"}]},
        timeout=5,
    )
    assert echo.json()["choices"][0]["message"]["content"] == "still here"
    # Then the supervisor's new engine takes over.
    _wait_for("the restarted engine to answer", lambda: _completes(server))
    assert provider.engine_pid not in (None, first_pid)
    assert httpx.get(f"{server.base_url}/ready", timeout=5).status_code == 200
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert f'chatbot_engine_restarts{{model="{MODEL}"}} 1.0' in metrics
    assert f'chatbot_engine_up{{model="{MODEL}"}} 1.0' in metrics


def test_a_frozen_engine_is_killed_and_restarted(
    start_server: ServerFactory, data_dir: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(bundled_model=True, data_dir=data_dir, log_file=log_file)
    provider = server.app.state.services.registry.get(MODEL).provider
    frozen_pid = provider.engine_pid
    assert frozen_pid is not None

    os.kill(frozen_pid, signal.SIGSTOP)  # alive, and answering nothing
    try:
        waiting = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
            timeout=60,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen_pid, signal.SIGCONT)

    # The request that waited on it ends with the engine, not at its 600 s deadline ...
    assert waiting.status_code == 503
    assert waiting.json()["error"]["code"] == "engine_unavailable"
    frozen = _wait_for(
        "the supervisor to say why",
        lambda: [r for r in _records(log_file) if "has not answered" in r["message"]],
    )
    assert frozen[0]["pid"] == frozen_pid
    # ... and a new engine serves.
    _wait_for("the restarted engine to answer", lambda: _completes(server))
    assert provider.engine_pid not in (None, frozen_pid)


def test_workers_share_one_engine_that_survives_a_kill(tmp_path: Path, data_dir: Path) -> None:
    log_file = tmp_path / "api.log"
    env = clean_env(
        CHATBOT_DATA_DIR=str(data_dir),
        CHATBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
        CHATBOT_LOG_FILE=str(log_file),
        CHATBOT_BUNDLED_CHAT_MODEL="false",  # the bundled Gemma's engine alone
    )
    with ServerProcess(env, tmp_path / "output.txt", "--workers", "2") as server:
        output = tmp_path / "output.txt"

        def connections() -> list[dict[str, Any]]:
            return [r for r in _records(output) if r["message"].startswith("connected to")]

        _wait_for("both workers to reach the engine", lambda: len(connections()) >= 2)
        found = connections()
        engines = [r for r in _records(output) if r["message"] == "engine ready"]
        # One engine, and both workers talk to it: one copy of the weights.
        assert len(engines) == 1
        engine_pid = engines[0]["pid"]
        assert {r["engine_pid"] for r in found} == {engine_pid}
        worker_pids = {r["worker_pid"] for r in found}
        assert len(worker_pids) == 2
        for pid in worker_pids:
            assert _resident_mib(pid) < 0.5 * _resident_mib(engine_pid)

        streams = _streams_cut_off_by_a_kill(server, engine_pid)

        _assert_each_ended_with_an_error(streams)
        _wait_for("the restarted engine to answer", lambda: _completes(server))
        restarted = [r for r in _records(output) if r["message"] == "engine ready"][-1]
        assert restarted["restarts"] == 1
        assert restarted["pid"] != engine_pid
        cause = [r for r in _records(output) if r.get("cause")]
        assert cause[0]["cause"] == "killed by signal 9 (Killed)"
    assert server.returncode == 0, output.read_text()[-3000:]
    # The engine left with the server.
    assert not Path(f"/proc/{restarted['pid']}").exists()


def _resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_serve_refuses_to_start_when_an_engine_cannot(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    models = tmp_path / "models.toml"
    models.write_text(f'[models.broken]\nprovider = "llama_cpp"\npath = "{broken}"\n')
    env = clean_env(
        CHATBOT_MODELS_FILE=str(models),
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATA_DIR=str(tmp_path),
    )

    done = subprocess.run(
        [sys.executable, "-m", "chatbot_api", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert "the engine of model 'broken' exited with status 1 while starting" in done.stderr


def _contract(scenario: str, data_dir: Path) -> dict[str, Any]:
    """Run one scenario of ``tests/engine_contract.py`` in a process of its own."""
    script = Path(__file__).with_name("engine_contract.py")
    done = subprocess.run(
        [sys.executable, str(script), scenario, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def test_an_engine_that_cannot_hand_over_events_fails_every_sequence_then_stops(
    data_dir: Path,
) -> None:
    report = _contract("delivery fails", data_dir)

    assert report["fatal"] is True
    assert report["events"] == {
        "0": ["failed:503:server_overloaded"],
        "1": ["failed:503:server_overloaded"],
    }


def test_a_batch_llama_cpp_refuses_fails_its_sequence_and_the_engine_goes_on(
    data_dir: Path,
) -> None:
    report = _contract("batch refused", data_dir)

    assert report["events"]["0"] == ["failed:503:server_overloaded"]
    assert report["events"]["1"][-1] == "done:length"
    assert "text" in report["events"]["1"]
    assert report["fatal"] is False


def test_a_sequence_whose_sampling_fails_fails_alone(data_dir: Path) -> None:
    report = _contract("sampling raises", data_dir)

    assert report["events"]["0"] == ["failed:500:None"]
    assert report["events"]["1"][-1] == "done:length"
    assert report["fatal"] is False


def test_a_queued_sequence_whose_client_left_is_never_decoded(data_dir: Path) -> None:
    report = _contract("cancelled in line", data_dir)

    assert "1" not in report["events"]
    assert report["events"]["0"][-1] == "done:length"
    assert report["events"]["2"][-1] == "done:length"


def test_a_closed_engine_refuses_new_requests(data_dir: Path) -> None:
    assert _contract("after close", data_dir) == {"refused": "503:server_overloaded"}


def test_a_peer_speaking_nonsense_on_the_engine_socket_is_dropped_alone(
    llama_server: LiveServer,
) -> None:
    """Only our workers can reach the socket (mode 0600 in a private directory); should one of
    them ever send garbage, that connection is dropped and the engine serves the others."""
    provider = llama_server.app.state.services.registry.get(MODEL).provider
    socket_path = str(provider.engine_socket)
    nonsense = [
        # a Cancel for a request the engine never had: ignored, the connection stays
        encode(Cancel(123456)) + b"\x00\x00\x00\x03\xc1\xc1\xc1",  # then bytes msgpack refuses
        struct.pack(">I", 2**31),  # a frame bigger than the engine accepts
        struct.pack(">I", 100) + b"cut short",  # the peer leaves mid-frame
    ]
    for frames in nonsense:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.settimeout(10)
            peer.connect(socket_path)
            (length,) = struct.unpack(">I", peer.recv(4))
            hello = msgspec.msgpack.decode(peer.recv(length, socket.MSG_WAITALL), type=Hello)
            assert hello.model_id == MODEL
            peer.sendall(frames)
            if not frames.endswith(b"cut short"):
                assert peer.recv(100) == b""  # the engine hung up on it
    assert _completes(llama_server)


def _settings_logs() -> EngineLogging:
    return EngineLogging(level="INFO", format="json", file=None)


@pytest.mark.anyio
async def test_an_engine_that_does_not_start_in_time_is_given_up(
    tmp_path: Path, data_dir: Path
) -> None:
    supervisor = EngineSupervisor(
        "slow",
        prepare_bundled_model(data_dir, show_progress=False),
        LlamaCppConfig(),
        tmp_path / "slow.sock",
        _settings_logs(),
        start_timeout=0.01,
    )

    with pytest.raises(EngineStartError, match=r"did not start within 0\.01 s"):
        await supervisor.start()
    await supervisor.stop()


@pytest.mark.anyio
async def test_a_model_file_broken_while_serving_is_retried_with_backoff(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine dies and its file is broken meanwhile: the supervisor keeps trying, waiting
    longer each time, and is back once the file is; an engine that had lived long enough
    (here two seconds) starts the backoff afresh."""
    original = prepare_bundled_model(data_dir, show_progress=False)
    model = tmp_path / "model.gguf"
    shutil.copyfile(original, model)
    supervisor = EngineSupervisor(
        "fragile",
        model,
        LlamaCppConfig(threads=1),
        tmp_path / "fragile.sock",
        _settings_logs(),
        healthy_seconds=2.0,
    )
    await supervisor.start()
    try:
        await asyncio.sleep(2.5)  # healthy: its death is the first in a row
        os.kill(await _engine_pid(tmp_path / "fragile.sock"), signal.SIGKILL)
        await _until(lambda: supervisor.restarts == 1)
        first = await _engine_pid(tmp_path / "fragile.sock")
        model.write_bytes(b"not a model any more")
        os.kill(first, signal.SIGKILL)  # young: it had lived for less than two seconds
        await _until(lambda: "while starting" in caplog.text)
        shutil.copyfile(original, model)
        await _until(lambda: supervisor.restarts == 3, seconds=60)
        back = await _engine_pid(tmp_path / "fragile.sock")
    finally:
        await supervisor.stop()

    delays = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "restarting" in r.msg]
    assert delays[:3] == ["0 s", "1 s", "2 s"]
    assert back not in (first, None)


async def _engine_pid(socket_path: Path) -> int:
    """Ask the engine itself (its Hello) which process it is."""
    for _ in range(600):
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        frame = await read_frame(reader)
        writer.close()
        assert frame is not None
        return msgspec.msgpack.decode(frame, type=Hello).pid
    raise AssertionError("the engine never answered")


async def _until(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
