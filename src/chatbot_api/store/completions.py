"""Queries behind OpenAI's stored-completion endpoints, always scoped to one owner.

A NUL character cannot reach a stored row (request bodies holding one are refused with a
400), but it can arrive in a path or a query string: such an id or filter matches nothing,
and is answered so without asking PostgreSQL, which would refuse the query.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import RowMapping, Select, delete, select, update

from chatbot_api.db.engine import Database
from chatbot_api.db.tables import StoredCompletion
from chatbot_api.errors import DatabaseUnavailableError, NotFoundError
from chatbot_api.store.access import Order, Page, matchable, reading, writing
from chatbot_api.store.writer import CompletionRecord, QueuePlace, StoreWriter

__all__ = ["CompletionStore", "Page"]

#: How long a read waits for earlier writes before answering 503.
_CATCH_UP_SECONDS = 5.0


def _not_found(completion_id: str) -> NotFoundError:
    return NotFoundError(
        f"No chat completion found with id '{completion_id}'.", param="completion_id"
    )


def _completion(row: RowMapping) -> dict[str, Any]:
    """Row -> the wire object: the stored answer with its current metadata."""
    body: dict[str, Any] = json.loads(row["response_json"])
    body["metadata"] = row["metadata"]
    body["request_id"] = row["request_id"]
    return body


def _message(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    if parts is not None:
        content = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
    return {
        "id": f"{completion_id}-{index}",
        "role": message["role"],
        "content": content,
        "refusal": message.get("refusal"),
        "name": message.get("name"),
        "content_parts": parts,
    }


class CompletionStore:
    def __init__(self, database: Database, writer: StoreWriter) -> None:
        self._database = database
        self._writer = writer

    def reserve(self) -> QueuePlace:
        """A place in the writer's queue for a completion about to be generated (503 when
        there is none); :meth:`save` fills it, ``release`` gives it back."""
        return self._writer.reserve()

    def save(self, record: CompletionRecord, place: QueuePlace) -> None:
        self._writer.put(record, place)

    async def _caught_up(self) -> None:
        """Let the writes queued before this request land first (read-your-writes)."""
        try:
            await asyncio.wait_for(self._writer.sync(), _CATCH_UP_SECONDS)
        except TimeoutError:
            raise DatabaseUnavailableError() from None

    async def list(
        self,
        owner: str,
        *,
        model: str | None,
        metadata: dict[str, str],
        after: str | None,
        limit: int,
        order: Order,
    ) -> Page:
        if not matchable(model, after, *metadata, *metadata.values()):
            return Page([], has_more=False)
        await self._caught_up()
        query = select(StoredCompletion).where(StoredCompletion.owner == owner)
        if model is not None:
            query = query.where(StoredCompletion.model == model)
        for key, value in metadata.items():
            query = query.where(StoredCompletion.metadata_[key].as_string() == value)
        query = await self._after(query, owner, after, order)
        ordering = StoredCompletion.seq.asc() if order == "asc" else StoredCompletion.seq.desc()
        async with reading(self._database) as connection:
            rows = (await connection.execute(query.order_by(ordering).limit(limit + 1))).all()
        page = [_completion(row._mapping) for row in rows[:limit]]
        return Page(page, has_more=len(rows) > limit)

    async def _after(
        self, query: Select[Any], owner: str, after: str | None, order: Order
    ) -> Select[Any]:
        if after is None:
            return query
        cursor = (
            select(StoredCompletion.seq)
            .where(StoredCompletion.owner == owner, StoredCompletion.id == after)
            .scalar_subquery()
        )
        if order == "asc":
            return query.where(StoredCompletion.seq > cursor)
        return query.where(StoredCompletion.seq < cursor)

    async def _row(self, owner: str, completion_id: str) -> RowMapping:
        if not matchable(completion_id):
            raise _not_found(completion_id)
        await self._caught_up()
        query = select(StoredCompletion).where(
            StoredCompletion.owner == owner, StoredCompletion.id == completion_id
        )
        async with reading(self._database) as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise _not_found(completion_id)
        return row._mapping

    async def get(self, owner: str, completion_id: str) -> dict[str, Any]:
        return _completion(await self._row(owner, completion_id))

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        if not matchable(completion_id):
            raise _not_found(completion_id)
        await self._caught_up()
        async with writing(self._database) as connection:
            result = await connection.execute(
                update(StoredCompletion)
                .where(StoredCompletion.owner == owner, StoredCompletion.id == completion_id)
                .values({StoredCompletion.metadata_: metadata or {}})
            )
        if result.rowcount == 0:
            raise _not_found(completion_id)
        return await self.get(owner, completion_id)

    async def delete(self, owner: str, completion_id: str) -> dict[str, Any]:
        if not matchable(completion_id):
            raise _not_found(completion_id)
        await self._caught_up()
        async with writing(self._database) as connection:
            result = await connection.execute(
                delete(StoredCompletion).where(
                    StoredCompletion.owner == owner, StoredCompletion.id == completion_id
                )
            )
        if result.rowcount == 0:
            raise _not_found(completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    async def messages(
        self, owner: str, completion_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        row = await self._row(owner, completion_id)
        messages = [
            _message(completion_id, i, m) for i, m in enumerate(json.loads(row["messages_json"]))
        ]
        if order == "desc":
            messages.reverse()
        if after is not None:
            ids = [m["id"] for m in messages]
            messages = messages[ids.index(after) + 1 :] if after in ids else []
        return Page(messages[:limit], has_more=len(messages) > limit)
