"""The one background writer of stored completions.

A request with ``store: true`` reserves a place in a bounded queue before it generates (none
left: 503 at once), and fills it with its record once answered; the writer drains the queue
in batches, one transaction each. A database that cannot be reached is retried with capped
backoff while completions keep being served, up to the queue's size. A record the database
refuses (a value it cannot keep, a constraint) is found by splitting its batch, set aside in
a JSON-lines recovery file, logged and counted, so that the others are written. At shutdown
the queue is flushed; what the database still has not taken goes to the recovery file too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from chatbot_api import metrics
from chatbot_api.db.engine import Database
from chatbot_api.db.tables import StoredCompletion
from chatbot_api.errors import DatabaseUnavailableError

__all__ = ["UNSTORED_FILE_NAME", "CompletionRecord", "QueuePlace", "StoreWriter"]

logger = logging.getLogger(__name__)

#: The recovery file's name, in the data directory.
UNSTORED_FILE_NAME = "unstored-completions.jsonl"

# PostgreSQL error classes that say the database could not do the work now, whatever the rows:
# connection exception, transaction rollback (serialization, deadlock), insufficient
# resources (disk full, too many connections), operator intervention (shutdown), system error.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})

SetAsideReason = Literal["refused", "shutdown"]


@dataclass(frozen=True, slots=True)
class CompletionRecord:
    id: str
    owner: str
    model: str
    created: int
    request_id: str | None
    messages_json: str
    response_json: str
    metadata_: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int


_COLUMNS = (
    "id",
    "owner",
    "model",
    "created",
    "request_id",
    "messages_json",
    "response_json",
    "metadata",
    "prompt_tokens",
    "completion_tokens",
)
# SQLAlchemy writes the statement (qmark placeholders) once; the driver runs it per batch.
_SQLITE_INSERT = str(
    insert(StoredCompletion)
    .values({name: bindparam(name) for name in _COLUMNS})
    .compile(dialect=sqlite.dialect())
)


def _values(record: CompletionRecord) -> tuple[Any, ...]:
    """One row for the driver, in ``_COLUMNS`` order, metadata as the JSON text SQLite keeps."""
    return (
        record.id,
        record.owner,
        record.model,
        record.created,
        record.request_id,
        record.messages_json,
        record.response_json,
        json.dumps(record.metadata_, separators=(",", ":")),
        record.prompt_tokens,
        record.completion_tokens,
    )


def _row(record: CompletionRecord) -> dict[str, Any]:
    """Column names as the table has them (``metadata`` is ``metadata_`` in Python)."""
    return {
        "id": record.id,
        "owner": record.owner,
        "model": record.model,
        "created": record.created,
        "request_id": record.request_id,
        "messages_json": record.messages_json,
        "response_json": record.response_json,
        "metadata": record.metadata_,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }


def _is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or could not finish now, rather
    than that it refused these rows; only the first kind is worth retrying as it is."""
    if isinstance(exc, OSError | DisconnectionError | PoolTimeoutError):
        return True  # refused, reset, timed out; no connection from the pool in time
    if isinstance(exc, sqlite3.OperationalError | sqlite3.InterfaceError):
        return True  # from the driver itself (see _insert): locked, disk full, I/O
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return True  # a dropped connection; SQLite's "database is locked" or "disk is full"
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(state, str) and state[:2] in _TRANSIENT_SQLSTATE_CLASSES


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


class QueuePlace:
    """A place in the writer's queue, held by a request from before it generates until its
    record is queued, so that a completion answered with ``store: true`` always has room.

    :meth:`release` gives it back when the request fails first. A place dropped without
    either (a stream whose generator was never started) is given back when it is collected.
    """

    __slots__ = ("__weakref__", "_give_back")

    def __init__(self, writer: StoreWriter) -> None:
        self._give_back = weakref.finalize(self, writer._give_back_place)
        self._give_back.atexit = False

    def release(self) -> None:
        """Give the place back (a no-op once used or released)."""
        self._give_back()

    def use(self) -> None:
        """Mark the place as filled by a record (the chat service fills a place at most once,
        and only before it would release it)."""
        detached = self._give_back.detach()
        assert detached is not None, "a queue place was used after it was released"


class StoreWriter:
    def __init__(
        self,
        database: Database,
        *,
        queue_size: int,
        batch_size: int,
        unstored_file: Path,
        gather_seconds: float = 0.02,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        self._database = database
        self._capacity = queue_size
        self._queue: deque[CompletionRecord] = deque()
        self._arrived = asyncio.Event()
        self._held = 0
        self._batch_size = batch_size
        self._unstored_file = unstored_file
        self._gather_seconds = gather_seconds
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._retry_delay = retry_initial
        self._enqueued = 0
        self._done = 0
        self._in_flight: list[CompletionRecord] = []
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Failed write attempts since start (each is retried).
        self.failures = 0

    @property
    def pending(self) -> int:
        """Records queued and not yet written (or set aside)."""
        return self._enqueued - self._done

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    def reserve(self) -> QueuePlace:
        """A place for one record; 503 ``database_unavailable`` when the queue has no room
        (the database has been away long enough for the queue to fill)."""
        if self._closed or self._held + self.pending >= self._capacity:
            raise DatabaseUnavailableError(
                "The database is not answering and too many completions are waiting to be "
                "stored, so this one could not be kept. Please retry shortly, or send it "
                "without `store`.",
                param="store",
            )
        self._held += 1
        return QueuePlace(self)

    def _give_back_place(self) -> None:
        self._held -= 1

    def put(self, record: CompletionRecord, place: QueuePlace) -> None:
        """Queue a record in the place reserved for it; never waits."""
        place.use()
        self._held -= 1
        self._queue.append(record)
        self._enqueued += 1
        self._arrived.set()
        metrics.STORE_QUEUE_DEPTH.set(self.pending)

    async def sync(self) -> None:
        """Wait until every record queued before this call is written or set aside
        (read-your-writes)."""
        target = self._enqueued
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def close(self, flush_seconds: float) -> None:
        """Flush what is queued (for up to ``flush_seconds``), then stop. Records the database
        has not taken by then go to the recovery file."""
        assert self._task is not None, "the writer was closed without being started"
        self._closed = True
        if self.pending:
            logger.info("flushing stored completions", extra={"pending": self.pending})
        try:
            await asyncio.wait_for(self.sync(), flush_seconds)
        except TimeoutError:
            logger.error(
                "the database did not take every stored completion in time; the rest go to "
                "the recovery file",
                extra={"pending": self.pending, "file": str(self._unstored_file)},
            )
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        left = [*self._in_flight, *self._queue]
        self._in_flight = []
        self._queue.clear()
        for record in left:
            await self._set_aside(record, "shutdown", "not written before shutdown")

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._queue) < self._batch_size:
                # Let a busy server's next completions join this transaction: one commit for
                # many rows costs the serving loop far less than one commit per row.
                await asyncio.sleep(self._gather_seconds)
            count = min(self._batch_size, len(self._queue))
            self._in_flight = [self._queue.popleft() for _ in range(count)]
            await self._write()
            async with self._progress:
                self._done += count
                self._progress.notify_all()
            metrics.STORE_QUEUE_DEPTH.set(self.pending)

    async def _write(self) -> None:
        """Write the batch in flight, retrying while the database is away. A batch the
        database refuses is split in halves until each record it refuses is alone; those are
        set aside. Records leave ``_in_flight`` as they are done, so that a shutdown sets
        aside only the others."""
        groups = deque([list(self._in_flight)])
        while groups:
            group = groups[0]
            try:
                await self._insert(group)
            except Exception as exc:
                if _is_transient(exc):
                    await self._back_off(exc, len(group))
                    continue
                if len(group) > 1:
                    groups.popleft()
                    half = len(group) // 2
                    groups.extendleft([group[half:], group[:half]])
                    continue
                try:
                    # An earlier attempt may have committed it and lost its connection before
                    # saying so; then the database now refuses it as a duplicate.
                    already = await self._exists(group[0].id)
                except Exception as lookup_exc:
                    if _is_transient(lookup_exc):
                        await self._back_off(lookup_exc, 1)
                        continue
                    already = False
                if not already:
                    await self._set_aside(group[0], "refused", _first_line(exc))
            groups.popleft()
            del self._in_flight[: len(group)]
            self._retry_delay = self._retry_initial

    async def _back_off(self, exc: BaseException, records: int) -> None:
        self.failures += 1
        metrics.STORE_WRITE_FAILURES.inc()
        logger.warning(
            "writing stored completions failed; retrying",
            extra={
                "error": _first_line(exc),
                "records": records,
                "retry_in_s": self._retry_delay,
            },
        )
        await asyncio.sleep(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)

    async def _insert(self, batch: list[CompletionRecord]) -> None:
        async with self._database.write() as connection:
            if self._database.is_sqlite:
                # The serving loop and this writer share a core: SQLAlchemy's per-row parameter
                # handling cost more than SQLite's insert itself (14 against 6 µs a row), so
                # SQLite gets the rows straight from the driver, inside the same transaction.
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.executemany(_SQLITE_INSERT, [_values(r) for r in batch])
            else:
                await connection.execute(insert(StoredCompletion), [_row(r) for r in batch])

    async def _exists(self, completion_id: str) -> bool:
        async with self._database.read() as connection:
            query = select(StoredCompletion.seq).where(StoredCompletion.id == completion_id)
            return (await connection.execute(query)).first() is not None

    async def _set_aside(
        self, record: CompletionRecord, reason: SetAsideReason, error: str
    ) -> None:
        """Keep a record the database did not take where an operator can recover it."""
        metrics.STORE_RECORDS_REJECTED.labels(reason).inc()
        entry = {"reason": reason, "error": error, "at": int(time.time()), "record": _row(record)}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        try:
            await asyncio.to_thread(_append, self._unstored_file, line)
        except OSError as exc:
            # The log is the last place left; it carries the record whole.
            logger.error(
                "a stored completion could not be written to the database or the recovery file",
                extra={"id": record.id, "error": _first_line(exc), "entry": entry},
            )
            return
        logger.error(
            "stored completion set aside in the recovery file",
            extra={
                "id": record.id,
                "owner": record.owner,
                "reason": reason,
                "error": error,
                "file": str(self._unstored_file),
            },
        )


def _append(path: Path, line: str) -> None:
    """One ``write`` on an ``O_APPEND`` descriptor, so that workers sharing the file do not
    interleave their lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
