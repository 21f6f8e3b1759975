"""Starting, watching and restarting the engine process of one local model.

The supervisor runs in the process that owns the engines: ``chatbot-api serve``'s main process
(one engine per model, shared by every API worker), or an app's own lifespan when it was
started some other way. It keeps the engine's standard input open; closing it is how the
engine is told to stop, and how it learns that its supervisor died. When the engine exits on
its own (a C++ abort, the kernel's OOM killer, a failed decode loop), the supervisor logs the
cause and starts a new one after a backoff that grows while the engine keeps dying. An engine
that stops answering without exiting (frozen by a signal, or its event loop stuck) is found by
a probe every few seconds, which connects to its socket as a worker does and waits for its
greeting: one that does not come in time gets the engine killed, and restarted as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.protocol import EngineSpec, read_frame

__all__ = [
    "EngineLogging",
    "EngineStartError",
    "EngineSupervisor",
    "describe_exit",
    "engine_socket",
]

logger = logging.getLogger(__name__)

#: Seconds to wait before each restart, by how many times in a row the engine died young.
_BACKOFF = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: How long a stopped engine may take to exit before it is killed.
_STOP_SECONDS = 10.0
#: How often a running engine is probed, and how long it has to greet the probe.
_PROBE_SECONDS = 5.0
_ANSWER_SECONDS = 10.0


class EngineStartError(RuntimeError):
    """The engine process exited before it was ready; the message says how."""


@dataclass(frozen=True, slots=True)
class EngineLogging:
    """How the engine process logs: as the server does, to a file of its own if any."""

    level: str
    format: str
    file: Path | None


def engine_socket(directory: Path, model_id: str) -> Path:
    """Where the engine of ``model_id`` listens: short and safe whatever the model's id."""
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return directory / f"engine-{digest}.sock"


def engine_log_file(log_file: Path | None, model_id: str) -> Path | None:
    """The engine's own log file beside the server's: ``api.engine.<model>.log``."""
    if log_file is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
    return log_file.with_name(f"{log_file.stem}.engine.{safe}{log_file.suffix}")


def describe_exit(returncode: int) -> str:
    """``killed by signal 9 (Killed)``, ``exited with status 70``: how a process ended (70:
    its decode loop failed, which it logged)."""
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal.strsignal(-returncode)})"
    return f"exited with status {returncode}"


class EngineSupervisor:
    def __init__(
        self,
        model_id: str,
        path: Path,
        config: LlamaCppConfig,
        socket: Path,
        logs: EngineLogging,
        *,
        start_timeout: float = 600.0,
        healthy_seconds: float = 60.0,
    ) -> None:
        self.model_id = model_id
        self.socket = socket
        self.restarts = 0
        self._path = path
        self._config = config
        self._logs = logs
        self._start_timeout = start_timeout
        self._healthy_seconds = healthy_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the engine and wait until it serves; :class:`EngineStartError` if it cannot."""
        await self._spawn()
        self._watcher = asyncio.create_task(
            self._watch(), name=f"engine-supervisor:{self.model_id}"
        )

    async def stop(self) -> None:
        """Stop the engine: close its standard input, wait, kill it if it does not go."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _STOP_SECONDS)
        except TimeoutError:  # pragma: no cover - an engine stops in milliseconds when told
            logger.warning("the engine of %s did not stop in time; killing it", self.model_id)
            process.kill()
            await process.wait()

    async def _spawn(self) -> None:
        spec = EngineSpec(
            model_id=self.model_id,
            path=str(self._path),
            config=self._config.model_dump_json(),
            socket=str(self.socket),
            restarts=self.restarts,
            log_level=self._logs.level,
            log_format=self._logs.format,
            log_file=str(self._logs.file) if self._logs.file else None,
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatbot_api.providers.llama.server",
            msgspec.json.encode(spec).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        try:
            ready = await asyncio.wait_for(_announced_ready(process), self._start_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise EngineStartError(
                f"the engine of model '{self.model_id}' did not start within "
                f"{self._start_timeout:g} s"
            ) from None
        if not ready:
            returncode = await process.wait()
            raise EngineStartError(
                f"the engine of model '{self.model_id}' {describe_exit(returncode)} while "
                "starting; its log lines above say why"
            )

    async def _watch(self) -> None:
        """Wait for the engine to exit, log why, start another; until :meth:`stop` cancels."""
        died_young = 0
        while True:
            process = self._process
            assert process is not None
            started = time.monotonic()
            returncode = await self._wait_or_kill_if_frozen(process)
            if time.monotonic() - started >= self._healthy_seconds:
                died_young = 0
            delay = _BACKOFF[min(died_young, len(_BACKOFF) - 1)]
            died_young += 1
            self.restarts += 1
            logger.error(
                "the engine of model %s died (%s); restarting it in %g s",
                self.model_id,
                describe_exit(returncode),
                delay,
                extra={
                    "model": self.model_id,
                    "cause": describe_exit(returncode),
                    "restarts": self.restarts,
                },
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except EngineStartError as error:
                logger.error("%s", error, extra={"model": self.model_id})
                # The next round waits on the dead process at once and backs off further.

    async def _wait_or_kill_if_frozen(self, process: asyncio.subprocess.Process) -> int:
        """Wait for the engine to exit, probing it meanwhile; one that stops answering is
        killed (its requests then fail at once, as when it dies)."""
        exited = asyncio.ensure_future(process.wait())
        try:
            while not (await asyncio.wait({exited}, timeout=_PROBE_SECONDS))[0]:
                if not await self._answers():
                    logger.error(
                        "the engine of model %s has not answered for %g s; killing it",
                        self.model_id,
                        _ANSWER_SECONDS,
                        extra={"model": self.model_id, "pid": process.pid},
                    )
                    process.kill()
                    break
            return await exited
        finally:
            exited.cancel()

    async def _answers(self) -> bool:
        """Whether the engine greets a new connection in time. A refused or missing socket is
        an engine on its way out, which its exit will tell."""
        try:
            async with asyncio.timeout(_ANSWER_SECONDS):
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
                try:
                    await read_frame(reader)
                finally:
                    writer.close()
        except TimeoutError:
            return False
        except OSError:
            pass
        return True


async def _announced_ready(process: asyncio.subprocess.Process) -> bool:
    """Whether the engine wrote ``ready`` on standard output before closing it."""
    assert process.stdout is not None
    try:
        await process.stdout.readuntil(b"ready\n")
    except asyncio.IncompleteReadError:
        return False
    return True
