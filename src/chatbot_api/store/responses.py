"""Responses and their items in the database, always scoped to one owner.

Each response keeps only the items of its own turn (its new input, its output); the context
of a continuation is the chain of ``previous_response_id`` links walked in the database, and
a conversation's items are rows that name it. Nothing is copied from turn to turn, so a long
conversation grows by its new items only.

Writes happen in the request, before the answer is sent: a client that has a response can
continue from it at once, on any worker or server sharing the database.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chatbot_api.db.engine import Database
from chatbot_api.db.sqlite_thread import SqliteThread
from chatbot_api.db.tables import Conversation, ResponseItem, StoredResponse
from chatbot_api.errors import InvalidRequestError, NotFoundError
from chatbot_api.ids import renamed
from chatbot_api.store.access import Order, Page, matchable, reading, writing
from chatbot_api.store.conversations import (
    bounded_items,
    detach,
    item_page,
    item_rows,
    still_there,
    taken_ids,
)
from chatbot_api.store.group_commit import GroupCommit

__all__ = ["UNFINISHED", "Context", "ResponseRecord", "ResponseStore"]

Item = dict[str, Any]

#: Statuses of a response still being generated.
UNFINISHED = ("queued", "in_progress")

#: What a background response whose server stopped reads as.
_ABANDONED = {
    "code": "server_error",
    "message": (
        "The server generating this response stopped before it finished (a restart or a "
        "crash); nothing more will be generated. Create the response again."
    ),
}

#: The longest chain of ``previous_response_id`` links followed.
MAX_CHAIN = 10_000


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    id: str
    owner: str
    model: str
    created_at: int
    status: str
    background: bool
    previous_response_id: str | None
    conversation_id: str | None
    request_id: str | None
    #: The response object without ``output`` (kept as rows of items).
    body: dict[str, Any]
    input_tokens: int
    output_tokens: int
    lease_until: int | None = None


def _not_found(response_id: str, param: str = "response_id") -> NotFoundError:
    return NotFoundError(f"No response found with id '{response_id}'.", param=param)


def _body_without_output(body: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in body.items() if k != "output"}, separators=(",", ":"))


_RESPONSE_COLUMNS = (
    "id",
    "owner",
    "model",
    "created_at",
    "status",
    "background",
    "previous_response_id",
    "conversation_id",
    "request_id",
    "body_json",
    "input_tokens",
    "output_tokens",
    "lease_until",
)
_ITEM_COLUMNS = ("id", "owner", "response_id", "conversation_id", "role", "item_json")


def _sqlite_insert(table: Any, columns: tuple[str, ...]) -> str:
    """The INSERT statement as SQLAlchemy writes it for SQLite (qmark placeholders)."""
    statement = insert(table).values({name: bindparam(name) for name in columns})
    return str(statement.compile(dialect=sqlite.dialect()))


_SQLITE_INSERT_RESPONSE = _sqlite_insert(StoredResponse, _RESPONSE_COLUMNS)
_SQLITE_INSERT_ITEM = _sqlite_insert(ResponseItem, _ITEM_COLUMNS)
_SQLITE_DROP_LOOSE_ITEMS = (
    "DELETE FROM response_items WHERE conversation_id = ? AND response_id IS NULL"
)
_SQLITE_DETACH_ITEMS = "UPDATE response_items SET conversation_id = NULL WHERE conversation_id = ?"
# The ids as one JSON array parameter: a constant statement whatever their number.
_SQLITE_TAKEN = (
    "SELECT id FROM response_items WHERE conversation_id = ? "
    "AND id IN (SELECT value FROM json_each(?))"
)
_SQLITE_CONVERSATION = str(
    select(Conversation.seq)
    .where(Conversation.id == bindparam("id"), Conversation.owner == bindparam("owner"))
    .compile(dialect=sqlite.dialect())
)


def _values(record: ResponseRecord) -> tuple[Any, ...]:
    row = ResponseStore._row(record)
    return tuple(row[name] for name in _RESPONSE_COLUMNS)


def _item_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in _ITEM_COLUMNS)


@dataclass(frozen=True, slots=True)
class Context:
    """The stored items a turn reads, and how many older ones did not fit."""

    items: list[Item]
    dropped: int


@dataclass(frozen=True, slots=True)
class _Turn:
    record: ResponseRecord | None
    input_items: list[Item]
    output_items: list[Item]
    owner: str
    conversation_id: str | None

    def rows(self) -> list[dict[str, Any]]:
        response_id = self.record.id if self.record is not None else None
        return [
            *item_rows(
                self.input_items,
                owner=self.owner,
                role="input",
                response_id=response_id,
                conversation_id=self.conversation_id,
            ),
            *item_rows(
                self.output_items,
                owner=self.owner,
                role="output",
                response_id=response_id,
                conversation_id=self.conversation_id,
            ),
        ]


def _sqlite_taken(connection: sqlite3.Connection, conversation_id: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` the conversation's items already have."""
    if not ids:
        return set()
    rows = connection.execute(_SQLITE_TAKEN, (conversation_id, json.dumps(ids)))
    return {row[0] for row in rows}


def _abandoned(row: Any) -> bool:
    """A response still unfinished whose server stopped renewing its lease (a crash)."""
    lease = row.lease_until
    return bool(row.status in UNFINISHED and lease is not None and lease < time.time())


class ResponseStore:
    def __init__(self, database: Database, *, lease_seconds: int = 15) -> None:
        self._database = database
        self.lease_seconds = lease_seconds
        #: On SQLite, turns are written on a thread of their own, one round trip each batch.
        self._sqlite = (
            SqliteThread(database.sqlite_file, busy_timeout_ms=database.busy_timeout_ms)
            if database.sqlite_file is not None
            else None
        )
        self._turns = GroupCommit(self._write_turns)

    async def save(
        self,
        record: ResponseRecord | None,
        input_items: list[Item],
        output_items: list[Item],
        *,
        owner: str,
        conversation_id: str | None,
    ) -> None:
        """One turn, committed when this returns: the response (None with ``store: false``)
        and its items, appended to ``conversation_id`` when it has one (an input item whose
        id the conversation has already gets a new one). Turns saved at the same time share
        a transaction (``GroupCommit``)."""
        turn = _Turn(record, input_items, output_items, owner, conversation_id)
        await self._turns.submit(turn)

    async def _write_turns(self, turns: Sequence[_Turn]) -> None:
        conversations = sorted({(t.owner, t.conversation_id) for t in turns if t.conversation_id})
        if self._sqlite is not None:
            values = [_values(t.record) for t in turns if t.record is not None]

            def write(connection: sqlite3.Connection) -> None:
                gone = {
                    conversation_id
                    for owner, conversation_id in conversations
                    if connection.execute(_SQLITE_CONVERSATION, (conversation_id, owner)).fetchone()
                    is None
                }
                taken: dict[str, set[str]] = {}
                for turn in turns:
                    if turn.conversation_id and turn.conversation_id not in gone:
                        ids = [item["id"] for item in turn.input_items]
                        held = taken.setdefault(turn.conversation_id, set())
                        held |= _sqlite_taken(connection, turn.conversation_id, ids)
                        renamed(turn.input_items, taken=held)
                        held.update(ids)
                connection.executemany(_SQLITE_INSERT_RESPONSE, values)
                connection.executemany(
                    _SQLITE_INSERT_ITEM, [_item_values(row) for t in turns for row in t.rows()]
                )
                for conversation_id in gone:
                    connection.execute(_SQLITE_DROP_LOOSE_ITEMS, (conversation_id,))
                    connection.execute(_SQLITE_DETACH_ITEMS, (conversation_id,))

            await self._sqlite.transaction(write)
            return
        async with writing(self._database) as connection:
            gone = {
                conversation_id
                for owner, conversation_id in conversations
                if not await still_there(connection, owner, conversation_id)
            }
            held: dict[str, set[str]] = {}
            for turn in turns:
                if turn.conversation_id and turn.conversation_id not in gone:
                    ids = [item["id"] for item in turn.input_items]
                    seen = held.setdefault(turn.conversation_id, set())
                    seen |= await taken_ids(connection, turn.conversation_id, ids)
                    renamed(turn.input_items, taken=seen)
                    seen.update(ids)
            records = [self._row(t.record) for t in turns if t.record is not None]
            if records:
                await connection.execute(insert(StoredResponse), records)
            rows = [row for t in turns for row in t.rows()]
            if rows:
                await connection.execute(insert(ResponseItem), rows)
            for conversation_id in gone:
                await detach(connection, conversation_id)

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()

    @staticmethod
    def _row(record: ResponseRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "owner": record.owner,
            "model": record.model,
            "created_at": record.created_at,
            "status": record.status,
            "background": record.background,
            "previous_response_id": record.previous_response_id,
            "conversation_id": record.conversation_id,
            "request_id": record.request_id,
            "body_json": _body_without_output(record.body),
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "lease_until": record.lease_until,
        }

    async def finish(
        self,
        response_id: str,
        body: dict[str, Any],
        output_items: Sequence[Item],
        *,
        owner: str,
        conversation_id: str | None,
        input_tokens: int,
        output_tokens: int,
    ) -> bool:
        """Record a background response's end, unless it was cancelled (or given up) first;
        False then."""
        async with writing(self._database) as connection:
            gone = conversation_id is not None and not await still_there(
                connection, owner, conversation_id
            )
            result = await connection.execute(
                update(StoredResponse)
                .where(StoredResponse.id == response_id, StoredResponse.status.in_(UNFINISHED))
                .values(
                    status=body["status"],
                    body_json=_body_without_output(body),
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    lease_until=None,
                )
            )
            if result.rowcount == 0:
                return False
            rows = item_rows(
                output_items,
                owner=owner,
                role="output",
                response_id=response_id,
                conversation_id=conversation_id,
            )
            if rows:
                await connection.execute(insert(ResponseItem), rows)
            if gone:
                assert conversation_id is not None
                await detach(connection, conversation_id)
        return True

    async def set_status(self, response_id: str, status: str, lease_until: int | None) -> None:
        async with writing(self._database) as connection:
            await connection.execute(
                update(StoredResponse)
                .where(StoredResponse.id == response_id, StoredResponse.status.in_(UNFINISHED))
                .values(status=status, lease_until=lease_until)
            )

    async def renew(self, response_ids: Sequence[str], lease_until: int) -> set[str]:
        """Extend the lease of the running ``response_ids``; the ids no longer running
        (cancelled, or given up by a reader) are returned: their work should stop."""
        async with writing(self._database) as connection:
            await connection.execute(
                update(StoredResponse)
                .where(StoredResponse.id.in_(response_ids), StoredResponse.status.in_(UNFINISHED))
                .values(lease_until=lease_until)
            )
            running = await connection.execute(
                select(StoredResponse.id).where(
                    StoredResponse.id.in_(response_ids), StoredResponse.status.in_(UNFINISHED)
                )
            )
            return set(response_ids) - set(running.scalars())

    async def abandon(self, response_ids: Sequence[str], message: str) -> None:
        """Mark responses this server can no longer finish as failed (at shutdown)."""
        error = {"code": "server_error", "message": message}
        async with writing(self._database) as connection:
            rows = await connection.execute(
                select(StoredResponse.id, StoredResponse.body_json).where(
                    StoredResponse.id.in_(response_ids), StoredResponse.status.in_(UNFINISHED)
                )
            )
            for row in rows.all():
                body = json.loads(row.body_json)
                body.update(status="failed", error=error)
                await connection.execute(
                    update(StoredResponse)
                    .where(StoredResponse.id == row.id, StoredResponse.status.in_(UNFINISHED))
                    .values(status="failed", body_json=json.dumps(body), lease_until=None)
                )

    async def _response_row(
        self, connection: AsyncConnection, owner: str, response_id: str, param: str
    ) -> Any:
        if not matchable(response_id):
            raise _not_found(response_id, param)
        row = (
            await connection.execute(
                select(StoredResponse).where(
                    StoredResponse.id == response_id, StoredResponse.owner == owner
                )
            )
        ).first()
        if row is None:
            raise _not_found(response_id, param)
        return row

    async def get(self, owner: str, response_id: str) -> dict[str, Any]:
        """The response object with its output, as it stands now."""
        async with reading(self._database) as connection:
            row = await self._response_row(connection, owner, response_id, "response_id")
            output = await connection.execute(
                select(ResponseItem.item_json)
                .where(ResponseItem.response_id == response_id, ResponseItem.role == "output")
                .order_by(ResponseItem.seq)
            )
            items = [json.loads(text) for text in output.scalars()]
        body: dict[str, Any] = json.loads(row.body_json)
        body["status"] = row.status
        body["output"] = items
        if _abandoned(row):
            await self._give_up(response_id)
            body.update(status="failed", error=_ABANDONED)
        return body

    async def _give_up(self, response_id: str) -> None:
        """A background response whose server stopped renewing its lease: failed for good."""
        async with writing(self._database) as connection:
            row = (
                await connection.execute(
                    select(StoredResponse.body_json).where(
                        StoredResponse.id == response_id,
                        StoredResponse.status.in_(UNFINISHED),
                        StoredResponse.lease_until < int(time.time()),
                    )
                )
            ).first()
            if row is None:
                return
            body = json.loads(row.body_json)
            body.update(status="failed", error=_ABANDONED)
            await connection.execute(
                update(StoredResponse)
                .where(StoredResponse.id == response_id, StoredResponse.status.in_(UNFINISHED))
                .values(status="failed", body_json=json.dumps(body), lease_until=None)
            )

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        """Mark a background response cancelled (its server stops it); a finished one (or
        one whose server stopped: failed) is returned as it is."""
        async with writing(self._database) as connection:
            row = await self._response_row(connection, owner, response_id, "response_id")
            if not row.background:
                raise InvalidRequestError(
                    "Only responses created with 'background': true can be cancelled.",
                    param="response_id",
                    code="invalid_value",
                )
            if row.status in UNFINISHED and not _abandoned(row):
                body = json.loads(row.body_json)
                body["status"] = "cancelled"
                await connection.execute(
                    update(StoredResponse)
                    .where(StoredResponse.id == response_id, StoredResponse.status.in_(UNFINISHED))
                    .values(status="cancelled", body_json=json.dumps(body), lease_until=None)
                )
        return await self.get(owner, response_id)

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        """Delete a response and its items; the items a conversation holds stay there."""
        async with writing(self._database) as connection:
            row = await self._response_row(connection, owner, response_id, "response_id")
            await connection.execute(delete(StoredResponse).where(StoredResponse.id == response_id))
            # Its turn leaves the history: what continued from it continues from its parent.
            await connection.execute(
                update(StoredResponse)
                .where(
                    StoredResponse.previous_response_id == response_id,
                    StoredResponse.owner == owner,
                )
                .values(previous_response_id=row.previous_response_id)
            )
            await connection.execute(
                delete(ResponseItem).where(
                    ResponseItem.response_id == response_id, ResponseItem.conversation_id.is_(None)
                )
            )
            await connection.execute(
                update(ResponseItem)
                .where(ResponseItem.response_id == response_id)
                .values(response_id=None)
            )
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(
        self, owner: str, response_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        async with reading(self._database) as connection:
            await self._response_row(connection, owner, response_id, "response_id")
            query = select(ResponseItem.seq, ResponseItem.item_json).where(
                ResponseItem.response_id == response_id, ResponseItem.role == "input"
            )
            return await item_page(connection, query, after=after, limit=limit, order=order)

    async def context(self, owner: str, response_id: str, *, max_chars: int) -> Context:
        """What a continuation of ``response_id`` reads: the items of its chain in order
        (and, when the chain began in a conversation, that conversation's items before it),
        the newest that fit in ``max_chars``. 404 when it is not the caller's; 400 while it
        runs."""
        async with reading(self._database) as connection:
            row = await self._response_row(connection, owner, response_id, "previous_response_id")
            if _abandoned(row):
                await self._give_up(response_id)  # failed: what it read can be continued
            elif row.status in UNFINISHED:
                raise InvalidRequestError(
                    f"Response '{response_id}' is still {row.status.replace('_', ' ')}; "
                    "continue from it once it has finished.",
                    param="previous_response_id",
                    code="invalid_value",
                )
            chain = (
                select(
                    StoredResponse.id,
                    StoredResponse.previous_response_id,
                    StoredResponse.conversation_id,
                    literal(0).label("depth"),
                )
                .where(StoredResponse.id == response_id, StoredResponse.owner == owner)
                .cte("chain", recursive=True)
            )
            earlier = select(
                StoredResponse.id,
                StoredResponse.previous_response_id,
                StoredResponse.conversation_id,
                (chain.c.depth + 1).label("depth"),
            ).where(
                StoredResponse.id == chain.c.previous_response_id,
                StoredResponse.owner == owner,
                chain.c.depth < MAX_CHAIN,
            )
            chain = chain.union_all(earlier)
            links = (
                await connection.execute(
                    select(chain.c.id, chain.c.conversation_id).order_by(chain.c.depth.desc())
                )
            ).all()
            in_chain = ResponseItem.response_id.in_([link.id for link in links])
            root_conversation = links[0].conversation_id if links else None
            first = (
                await connection.execute(select(func.min(ResponseItem.seq)).where(in_chain))
            ).scalar()
            if root_conversation is not None and first is not None:
                # The conversation's items before the chain began, then the chain's own.
                where = (
                    or_(
                        in_chain,
                        and_(
                            ResponseItem.conversation_id == root_conversation,
                            ResponseItem.owner == owner,
                            ResponseItem.seq < first,
                        ),
                    ),
                )
            else:
                where = (in_chain,)
            items, dropped = await bounded_items(connection, where, max_chars)
        return Context(items, dropped)

    async def referenced(self, owner: str, item_ids: Sequence[str]) -> dict[str, Item]:
        """The caller's stored items with these ids (the newest of each id)."""
        if not item_ids or not matchable(*item_ids):
            return {}
        async with reading(self._database) as connection:
            rows = await connection.execute(
                select(ResponseItem.id, ResponseItem.item_json)
                .where(ResponseItem.owner == owner, ResponseItem.id.in_(item_ids))
                .order_by(ResponseItem.seq)
            )
            return {row.id: json.loads(row.item_json) for row in rows}
