"""What every store shares: transactions that turn a database failure into a 503, a page of
a list, and the check that keeps a NUL out of PostgreSQL queries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from chatbot_api.db.engine import Database
from chatbot_api.errors import DatabaseUnavailableError

__all__ = ["Order", "Page", "matchable", "owned_page", "reading", "writing"]

Order = Literal["asc", "desc"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    #: The field of each object that ``after`` takes (voice sessions go by room name).
    key: str = "id"

    def to_wire(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": self.data,
            "first_id": self.data[0][self.key] if self.data else None,
            "last_id": self.data[-1][self.key] if self.data else None,
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


async def owned_page(
    database: Database,
    table: Any,
    owner: str,
    *,
    key: str,
    after: str | None,
    limit: int,
    order: Order,
    wire: Callable[[Any], dict[str, Any]],
) -> Page:
    """One page of ``owner``'s rows of ``table`` (which has ``seq`` and ``owner``), newest
    first unless ``order="asc"``, after the row whose ``key`` is ``after``; a key not theirs
    gives an empty page, as a key that does not exist does."""
    query = select(table).where(table.owner == owner)
    if after is not None:
        if not matchable(after):
            return Page([], has_more=False, key=key)
        cursor = (
            select(table.seq)
            .where(getattr(table, key) == after, table.owner == owner)
            .scalar_subquery()
        )
        query = query.where(table.seq > cursor if order == "asc" else table.seq < cursor)
    ordering = table.seq.asc() if order == "asc" else table.seq.desc()
    async with reading(database) as connection:
        rows = (await connection.execute(query.order_by(ordering).limit(limit + 1))).all()
    return Page([wire(row) for row in rows[:limit]], has_more=len(rows) > limit, key=key)
