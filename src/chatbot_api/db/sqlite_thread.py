"""A SQLite connection of its own on a thread of its own, for writes on the request path.

Through SQLAlchemy and aiosqlite, every statement of a transaction is a round trip to the
driver's thread (begin, each insert, commit: about 1.5 ms of CPU for a small transaction on
this machine). Here a whole transaction is one function run on the thread: one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from chatbot_api.errors import DatabaseUnavailableError

__all__ = ["SqliteThread"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteThread:
    def __init__(self, path: Path, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writes")
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Opened, used and closed on the one thread of the executor only.
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._connection = connection
        return self._connection

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a write transaction on the thread, committed when it returns (and
        rolled back if it raises). A database that fails (locked past the busy timeout, a
        full disk) is a 503."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._transaction, work)
        except sqlite3.Error as exc:
            logger.warning("database write failed", extra={"error": str(exc)})
            raise DatabaseUnavailableError() from None

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
