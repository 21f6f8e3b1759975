"""The databases the persistence tests run on: SQLite always, PostgreSQL when configured.

``CHATBOT_TEST_POSTGRES_URL`` (for example ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``)
points the tests at a PostgreSQL they may wipe; ``.ci/run`` sets it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chatbot_api.db.tables import Base

__all__ = ["BACKENDS", "POSTGRES_URL", "database_url_for"]

POSTGRES_URL = os.environ.get("CHATBOT_TEST_POSTGRES_URL")

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            POSTGRES_URL is None, reason="CHATBOT_TEST_POSTGRES_URL is not set"
        ),
    ),
]


async def _wipe_postgres(url: str) -> None:
    engine = create_async_engine(url)
    tables = [table.name for table in Base.metadata.sorted_tables] + ["alembic_version"]
    async with engine.begin() as connection:
        for table in tables:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    await engine.dispose()


def database_url_for(backend: str, directory: Path) -> str:
    """A fresh, empty database of the given kind."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{directory / 'store.db'}"
    assert POSTGRES_URL is not None
    asyncio.run(_wipe_postgres(POSTGRES_URL))
    return POSTGRES_URL
