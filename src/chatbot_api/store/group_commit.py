"""Group commit: writes that arrive while a transaction is being written wait for it, then
go together in the next one, and each caller returns once its own write is committed.

A busy server then writes one transaction per batch instead of one per request, and its
writers never queue on the database's lock (SQLite makes a waiting writer sleep). Nothing is
delayed on purpose: a lone write starts at once. A batch the database refuses is written
again one write at a time, so that each caller gets its own write's outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Writes a batch in one transaction, committed when it returns.
WriteBatch = Callable[[Sequence[T]], Awaitable[None]]


class GroupCommit(Generic[T]):
    def __init__(self, write: WriteBatch[T], *, max_batch: int = 256) -> None:
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Write ``item`` in the next transaction; return once it is committed, or raise
        what writing it raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="group-commit")
        # A caller that leaves (its client gone) cancels only its wait: the write is done.
        await done

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
        finally:
            self._draining = None

    async def _commit(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for entry in batch:  # each alone: only the one at fault fails
                await self._commit([entry])
            return
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return  # its caller left
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
