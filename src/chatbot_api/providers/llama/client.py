"""An API worker's connection to a model's engine process.

One connection per worker and model carries every request of that worker: each ``Generate``
gets an id, and the engine's answers are handed to the request waiting on that id. When the
connection drops (the engine died), every request in flight ends at once with 503, new ones
are refused with 503 and ``Retry-After`` until the engine answers again, and the client keeps
trying to reconnect in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncGenerator
from pathlib import Path

import msgspec

from chatbot_api import metrics
from chatbot_api.errors import ChatbotAPIError, EngineUnavailableError
from chatbot_api.providers.llama.protocol import (
    Cancel,
    EngineMessage,
    Failed,
    Finished,
    Generate,
    Hello,
    Stats,
    Text,
    WireError,
    encode,
    read_frame,
)

__all__ = ["EngineClient", "error_from_wire"]

logger = logging.getLogger(__name__)

#: How often a client whose engine is gone tries to reach it again.
_RECONNECT_SECONDS = 0.1


class _Gone:
    """Put in every waiting request's queue when the connection drops."""


_GONE = _Gone()


def error_from_wire(wire: WireError) -> ChatbotAPIError:
    """The engine's error, with its status, type and code, ready for the client."""
    error = ChatbotAPIError(wire.message, param=wire.param, code=wire.code, headers=wire.headers)
    error.status_code = wire.status
    error.error_type = wire.type
    return error


class EngineClient:
    def __init__(self, model_id: str, socket: Path) -> None:
        self.model_id = model_id
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Queue[Text | Finished | Failed | _Gone]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        #: What the engine said about itself on this connection; None while unreachable.
        self.hello: Hello | None = None
        self.problem: str | None = "its engine is starting"

    async def start(self, wait_seconds: float) -> None:
        """Connect in the background, waiting up to ``wait_seconds`` for the first answer."""
        self._task = asyncio.create_task(self._run(), name=f"engine-client:{self.model_id}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait_seconds)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def generate(self, request: Generate) -> AsyncGenerator[Text | Finished, None]:
        """The engine's answers to ``request`` (its ``id`` is set here), ``Finished`` last.

        Call it only while ``hello`` is set (the engine answers). Raises the engine's error
        for a refused or failed request, and :class:`EngineUnavailableError` when the engine
        goes while it runs. Closing the iteration early cancels the request in the engine.
        """
        writer = self._writer
        # Set and cleared with ``hello``, which the caller has just found there.
        assert writer is not None
        request_id = next(self._ids)
        queue: asyncio.Queue[Text | Finished | Failed | _Gone] = asyncio.Queue()
        self._waiting[request_id] = queue
        finished = False
        try:
            writer.write(encode(msgspec.structs.replace(request, id=request_id)))
            while True:
                answer = await queue.get()
                if isinstance(answer, Text):
                    yield answer
                elif isinstance(answer, Finished):
                    finished = True
                    yield answer
                    return
                elif isinstance(answer, Failed):
                    finished = True
                    raise error_from_wire(answer.error)
                else:
                    finished = True
                    raise EngineUnavailableError(self.model_id, self.problem)
        finally:
            self._waiting.pop(request_id, None)
            if not finished and self._writer is writer and not writer.is_closing():
                writer.write(encode(Cancel(request_id)))

    async def _run(self) -> None:
        """Connect, serve the connection until it drops, and start over (until cancelled)."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._socket))
            except OSError:
                await asyncio.sleep(_RECONNECT_SECONDS)
                continue
            try:
                # A connection that breaks (the engine died mid-frame) ends like one closed.
                with contextlib.suppress(ConnectionError, ValueError, msgspec.DecodeError):
                    await self._serve(reader, writer)
            finally:
                self._lost(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = msgspec.msgpack.Decoder(EngineMessage)
        while (frame := await read_frame(reader)) is not None:
            message = decoder.decode(frame)
            if isinstance(message, Hello):
                self._greeted(message, writer)
            elif isinstance(message, Stats):
                metrics.SLOTS_IN_USE.labels(self.model_id).set(message.slots_in_use)
                metrics.QUEUE_DEPTH.labels(self.model_id).set(message.queue_depth)
            else:
                queue = self._waiting.get(message.id)
                if queue is not None:
                    queue.put_nowait(message)

    def _greeted(self, hello: Hello, writer: asyncio.StreamWriter) -> None:
        logger.info(
            "connected to the engine of %s",
            self.model_id,
            extra={
                "model": self.model_id,
                "engine_pid": hello.pid,
                "worker_pid": os.getpid(),
                "restarts": hello.restarts,
            },
        )
        self.hello = hello
        self._writer = writer
        self.problem = None
        metrics.ENGINE_UP.labels(self.model_id).set(1)
        metrics.ENGINE_RESTARTS.labels(self.model_id).set(hello.restarts)
        self._connected.set()

    def _lost(self, writer: asyncio.StreamWriter) -> None:
        self._writer = None
        self.hello = None
        writer.close()
        if self._closing:
            return
        self.problem = "its engine stopped and is being restarted"
        metrics.ENGINE_UP.labels(self.model_id).set(0)
        logger.error(
            "lost the engine of %s; failing the %d requests in flight on it",
            self.model_id,
            len(self._waiting),
            extra={"model": self.model_id},
        )
        for queue in self._waiting.values():
            queue.put_nowait(_GONE)
