"""What every store shares: transactions that turn a database failure into a 503, a page of
a list, and the check that keeps a NUL out of PostgreSQL queries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from chatbot_api.db.engine import Database
from chatbot_api.errors import DatabaseUnavailableError

__all__ = ["Order", "Page", "matchable", "reading", "writing"]

Order = Literal["asc", "desc"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": self.data,
            "first_id": self.data[0]["id"] if self.data else None,
            "last_id": self.data[-1]["id"] if self.data else None,
            "has_more": self.has_more,
        }


def matchable(*values: str | None) -> bool:
    """False when a lookup value holds NUL: nothing stored can (request bodies holding one
    are refused), and PostgreSQL would refuse the query, a 503 that blames the database for
    the client's input."""
    return not any(value is not None and "\x00" in value for value in values)


@asynccontextmanager
async def reading(database: Database) -> AsyncIterator[AsyncConnection]:
    try:
        async with database.read() as connection:
            yield connection
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("database read failed", extra={"error": str(exc).splitlines()[0]})
        raise DatabaseUnavailableError() from None


@asynccontextmanager
async def writing(database: Database) -> AsyncIterator[AsyncConnection]:
    try:
        async with database.write() as connection:
            yield connection
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("database write failed", extra={"error": str(exc).splitlines()[0]})
        raise DatabaseUnavailableError() from None
