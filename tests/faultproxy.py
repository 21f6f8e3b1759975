"""A TCP proxy of the test suite's own, put between the server and a dependency (PostgreSQL,
Redis, an upstream model service) to make that dependency fail the ways networks do.

It listens on a free loopback port and runs its own asyncio loop in a background thread, so
a test (synchronous, or on another loop) switches it at run time; each switch has taken
effect when the call returns:

    pass_through()  forward bytes both ways (the start state; also listens again after refuse)
    delay(s)        wait ``s`` seconds before forwarding each chunk, either way
    drop()          close every open connection now, and each new one as soon as it arrives
    refuse()        stop listening: new connections are refused, open ones carry on
    cut_after(n)    on each new connection, forward ``n`` bytes from the dependency, then close
    reset()         abort every open connection with a TCP reset (RST), as a host that crashed
                    or a firewall that forgot the connection does; new ones are served as before
    cut_when_sent(marker)
                    once: when a client sends a chunk holding ``marker``, forward it, then close
                    that connection before the dependency answers (the command was taken, its
                    answer lost)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["FaultProxy"]

_T = TypeVar("_T")
_CHUNK = 65536
_SWITCH_SECONDS = 10.0

Mode = Literal["pass", "delay", "drop", "cut"]


class _Link:
    """One client connection and the proxy's connection to the dependency for it."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.dependency: asyncio.StreamWriter | None = None

    def close(self) -> None:
        for writer in (self.client, self.dependency):
            if writer is not None and not writer.is_closing():
                writer.close()


class FaultProxy:
    """``with FaultProxy(host, port) as proxy:`` connect to ``proxy.port`` instead."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.host = "127.0.0.1"
        with socket.socket() as probe:
            probe.bind((self.host, 0))
            self.port: int = probe.getsockname()[1]
        self._mode: Mode = "pass"
        self._delay = 0.0
        self._cut_after = 0
        self._cut_marker: bytes | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # --- switches (called from the test's thread) ---

    def pass_through(self) -> None:
        self._switch(self._set("pass", listen=True))

    def delay(self, seconds: float) -> None:
        self._switch(self._set("delay", delay=seconds))

    def drop(self) -> None:
        self._switch(self._set("drop"))

    def refuse(self) -> None:
        self._switch(self._stop_listening())

    def cut_after(self, forwarded_bytes: int) -> None:
        self._switch(self._set("cut", cut_after=forwarded_bytes))

    def reset(self) -> None:
        self._switch(self._reset_all())

    def cut_when_sent(self, marker: bytes) -> None:
        self._switch(self._set_marker(marker))

    # --- the proxy itself (on its own loop) ---

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._switch(self._listen())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._switch(self._shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_SWITCH_SECONDS)
        self._loop.close()

    def _switch(self, change: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(change, self._loop).result(_SWITCH_SECONDS)

    async def _set(
        self, mode: Mode, *, listen: bool = False, delay: float = 0.0, cut_after: int = 0
    ) -> None:
        self._mode, self._delay, self._cut_after = mode, delay, cut_after
        if mode == "drop":
            self._close_all()
        if listen:
            await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        listener = socket.socket()
        # The port of a listener closed a moment ago (refuse) may linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        self._server = await asyncio.start_server(self._serve, sock=listener)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            # close() alone: on Python 3.12+ wait_closed() would wait for open connections.
            self._server.close()
            self._server = None

    async def _shut(self) -> None:
        await self._stop_listening()
        self._close_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close_all(self) -> None:
        for link in list(self._links):
            link.close()

    async def _reset_all(self) -> None:
        for link in list(self._links):
            if not link.client.is_closing():
                # Linger on, for no time at all: closing sends RST instead of FIN.
                linger = struct.pack("ii", 1, 0)
                link.client.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, linger
                )
                link.client.transport.abort()
            link.close()

    async def _set_marker(self, marker: bytes) -> None:
        self._cut_marker = marker

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        if self._mode == "drop":
            link.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._links.add(link)
        try:
            try:
                dependency_reader, link.dependency = await asyncio.open_connection(*self._target)
            except OSError:
                return
            budget = self._cut_after if self._mode == "cut" else None
            await asyncio.gather(
                self._pump(reader, link.dependency, link, None, watch=True),
                self._pump(dependency_reader, writer, link, budget),
            )
        finally:
            link.close()
            self._links.discard(link)
            self._tasks.discard(task)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: _Link,
        budget: int | None,
        *,
        watch: bool = False,
    ) -> None:
        """Copy ``source`` to ``sink`` until either side closes, or ``budget`` bytes went;
        ``watch``: the client's side, where ``cut_when_sent``'s marker is looked for."""
        try:
            while True:
                chunk = await source.read(_CHUNK)
                if not chunk:
                    break
                if self._mode == "delay":
                    await asyncio.sleep(self._delay)
                if sink.is_closing():
                    break
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                sink.write(chunk)
                await sink.drain()
                if budget == 0:
                    break
                if watch and self._cut_marker is not None and self._cut_marker in chunk:
                    self._cut_marker = None
                    break  # the dependency has the command; its answer will find no one
        except (ConnectionError, OSError):
            pass
        # Either direction ending ends the link: these protocols do not half-close.
        link.close()
