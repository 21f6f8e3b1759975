"""The database: an async engine, its SQLite pragmas, read and write transactions, migrations.

SQLite runs in WAL mode (readers never block the writer), with a busy timeout and foreign
keys on. Write transactions begin with ``BEGIN IMMEDIATE``: they take the write lock before
reading anything, so two writers queue on the busy timeout instead of deadlocking (a
deferred transaction that reads, then writes, can fail at once with "database is locked").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "default_database_url"]

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant: it names the lock that keeps two workers from migrating at once.
_MIGRATION_LOCK = 7_246_173


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'chatbot.db'}"


class Database:
    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self.is_sqlite = url.startswith("sqlite")
        #: The SQLite database file (None on PostgreSQL).
        self.sqlite_file: Path | None = None
        options: dict[str, Any] = {}
        if self.is_sqlite:
            database = make_url(url).database
            if not database or database == ":memory:":
                # SQLAlchemy gives an in-memory database a single connection, shared by every
                # request: two transactions at once on it fail ("cannot start a transaction
                # within a transaction"), and a request gets a 503 for it.
                raise ValueError(
                    f"the SQLite database must be a file (sqlite+aiosqlite:///path.db): {url}"
                )
            self.sqlite_file = Path(database)
            self.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        else:
            options = {"pool_size": 10, "max_overflow": 10, "pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            self._configure_sqlite(busy_timeout_ms)

    def _configure_sqlite(self, busy_timeout_ms: int) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            # Let SQLAlchemy's "begin" event below issue BEGIN, not the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages, not SQLite's 2 MiB
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get("write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that holds the write lock from its first statement; commits on exit."""
        async with self.engine.connect() as connection:
            connection = await connection.execution_options(write=True)
            async with connection.begin():
                yield connection

    async def ping(self) -> None:
        async with self.read() as connection:
            await connection.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; safe from several workers)."""
        async with self.write() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            await connection.run_sync(_upgrade)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
