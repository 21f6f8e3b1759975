"""Conversations and their items in the database, always scoped to one owner.

A conversation's items are the rows of ``response_items`` that name it, in insertion order:
items added through the Conversations API, and the input and output of every response
created with ``conversation``. Deleting an item from a conversation leaves it to the response
that read or wrote it, if any.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chatbot_api.db.engine import Database
from chatbot_api.db.tables import Conversation, ResponseItem
from chatbot_api.errors import NotFoundError
from chatbot_api.ids import renamed
from chatbot_api.store.access import Order, Page, matchable, owned_page, reading, writing

__all__ = [
    "ConversationStore",
    "bounded_items",
    "conversation_items",
    "conversation_not_found",
    "detach",
    "item_page",
    "item_rows",
    "lock_conversation",
    "still_there",
    "taken_ids",
]

Item = dict[str, Any]


def conversation_not_found(conversation_id: str, param: str = "conversation") -> NotFoundError:
    return NotFoundError(f"No conversation found with id '{conversation_id}'.", param=param)


def _item_not_found(item_id: str) -> NotFoundError:
    return NotFoundError(
        f"No item found with id '{item_id}' in this conversation.", param="item_id"
    )


def _wire(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "conversation",
        "created_at": row.created_at,
        "metadata": row.metadata,
    }


def item_rows(
    items: Iterable[Item],
    *,
    owner: str,
    role: str,
    response_id: str | None,
    conversation_id: str | None,
) -> list[dict[str, Any]]:
    """Rows of ``response_items`` for ``items`` of one response or conversation."""
    return [
        {
            "id": item["id"],
            "owner": owner,
            "response_id": response_id,
            "conversation_id": conversation_id,
            "role": role,
            "item_json": json.dumps(item, separators=(",", ":")),
        }
        for item in items
    ]


async def lock_conversation(
    connection: AsyncConnection, owner: str, conversation_id: str, param: str = "conversation"
) -> Any:
    """The caller's conversation, held for this write transaction (404 when it is not the
    caller's or no longer exists): turns appended at once land one after the other."""
    if not matchable(conversation_id):
        raise conversation_not_found(conversation_id, param)
    row = (
        await connection.execute(
            select(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner == owner)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise conversation_not_found(conversation_id, param)
    return row


async def still_there(connection: AsyncConnection, owner: str, conversation_id: str) -> bool:
    """Whether the conversation a turn began in still exists, held for this transaction."""
    row = await connection.execute(
        select(Conversation.seq)
        .where(Conversation.id == conversation_id, Conversation.owner == owner)
        .with_for_update()
    )
    return row.first() is not None


async def taken_ids(connection: AsyncConnection, conversation_id: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` the conversation's items already have."""
    if not ids:
        return set()
    rows = await connection.execute(
        select(ResponseItem.id).where(
            ResponseItem.conversation_id == conversation_id, ResponseItem.id.in_(ids)
        )
    )
    return set(rows.scalars())


async def detach(connection: AsyncConnection, conversation_id: str) -> None:
    """What a deleted conversation leaves: its items that no response keeps are gone, the
    others stay with their responses (after a turn that ended once it was deleted, too)."""
    await connection.execute(
        delete(ResponseItem).where(
            ResponseItem.conversation_id == conversation_id, ResponseItem.response_id.is_(None)
        )
    )
    await connection.execute(
        update(ResponseItem)
        .where(ResponseItem.conversation_id == conversation_id)
        .values(conversation_id=None)
    )


def _first_kept(sizes: Sequence[Any], max_chars: int) -> tuple[int, int]:
    """Of items (``seq``, size) in order: the ``seq`` from which the newest fit in
    ``max_chars``, and how many older ones are left out."""
    total = 0
    for index in range(len(sizes) - 1, -1, -1):
        total += sizes[index][1] or 0
        if total > max_chars:
            kept = sizes[index + 1][0] if index + 1 < len(sizes) else sizes[-1][0] + 1
            return kept, index + 1
    return (sizes[0][0] if sizes else 0), 0


async def conversation_items(
    connection: AsyncConnection,
    owner: str,
    conversation_id: str,
    *,
    before_seq: int | None,
    max_chars: int,
) -> tuple[list[Item], int]:
    """A conversation's items in order (only those before ``before_seq`` if given), the
    newest that fit in ``max_chars`` of JSON; and how many older ones did not fit."""
    mine = [ResponseItem.conversation_id == conversation_id, ResponseItem.owner == owner]
    if before_seq is not None:
        mine.append(ResponseItem.seq < before_seq)
    return await bounded_items(connection, tuple(mine), max_chars)


async def bounded_items(
    connection: AsyncConnection, where: tuple[Any, ...], max_chars: int
) -> tuple[list[Item], int]:
    """The items ``where`` selects, in order, the newest that fit in ``max_chars`` of JSON;
    and how many older ones did not. Their sizes are read first: a context that does not
    fit is never loaded whole."""
    sizes = (
        await connection.execute(
            select(ResponseItem.seq, func.length(ResponseItem.item_json))
            .where(*where)
            .order_by(ResponseItem.seq)
        )
    ).all()
    if not sizes:
        return [], 0
    first, dropped = _first_kept(sizes, max_chars)
    rows = await connection.execute(
        select(ResponseItem.item_json)
        .where(*where, ResponseItem.seq >= first)
        .order_by(ResponseItem.seq)
    )
    return [json.loads(text) for text in rows.scalars()], dropped


async def item_page(
    connection: AsyncConnection, query: Any, *, after: str | None, limit: int, order: Order
) -> Page:
    """One page of the item rows ``query`` selects (``seq`` and ``item_json``), starting
    after the item with id ``after`` among them."""
    if after is not None:
        if not matchable(after):
            return Page([], has_more=False)
        among = query.subquery()
        cursor = (
            select(among.c.seq)
            .where(among.c.seq.in_(select(ResponseItem.seq).where(ResponseItem.id == after)))
            .order_by(among.c.seq.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = query.where(
            ResponseItem.seq > cursor if order == "asc" else ResponseItem.seq < cursor
        )
    ordering = ResponseItem.seq.asc() if order == "asc" else ResponseItem.seq.desc()
    rows = (await connection.execute(query.order_by(ordering).limit(limit + 1))).all()
    data = [json.loads(row.item_json) for row in rows[:limit]]
    return Page(data, has_more=len(rows) > limit)


class ConversationStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(
        self, owner: str, conversation_id: str, metadata: dict[str, str], items: Sequence[Item]
    ) -> dict[str, Any]:
        created_at = int(time.time())
        async with writing(self._database) as connection:
            await connection.execute(
                insert(Conversation),
                [
                    {
                        "id": conversation_id,
                        "owner": owner,
                        "created_at": created_at,
                        "metadata": metadata,
                    }
                ],
            )
            if items:
                await connection.execute(
                    insert(ResponseItem),
                    item_rows(
                        items,
                        owner=owner,
                        role="input",
                        response_id=None,
                        conversation_id=conversation_id,
                    ),
                )
        return {
            "id": conversation_id,
            "object": "conversation",
            "created_at": created_at,
            "metadata": metadata,
        }

    async def list_owned(self, owner: str, *, after: str | None, limit: int, order: Order) -> Page:
        """The owner's conversations, newest first unless ``order="asc"``."""
        return await owned_page(
            self._database,
            Conversation,
            owner,
            key="id",
            after=after,
            limit=limit,
            order=order,
            wire=_wire,
        )

    async def get(self, owner: str, conversation_id: str) -> dict[str, Any]:
        if not matchable(conversation_id):
            raise conversation_not_found(conversation_id, "conversation_id")
        async with reading(self._database) as connection:
            row = (
                await connection.execute(
                    select(Conversation).where(
                        Conversation.id == conversation_id, Conversation.owner == owner
                    )
                )
            ).first()
        if row is None:
            raise conversation_not_found(conversation_id, "conversation_id")
        return _wire(row)

    async def items(
        self, owner: str, conversation_id: str, *, max_chars: int
    ) -> tuple[list[Item], int]:
        """The caller's conversation's items for a response that continues it: the newest
        that fit in ``max_chars``, and how many older ones did not."""
        if not matchable(conversation_id):
            raise conversation_not_found(conversation_id)
        async with reading(self._database) as connection:
            exists = await connection.execute(
                select(Conversation.seq).where(
                    Conversation.id == conversation_id, Conversation.owner == owner
                )
            )
            if exists.first() is None:
                raise conversation_not_found(conversation_id)
            return await conversation_items(
                connection, owner, conversation_id, before_seq=None, max_chars=max_chars
            )

    async def update(
        self, owner: str, conversation_id: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        async with writing(self._database) as connection:
            await lock_conversation(connection, owner, conversation_id, "conversation_id")
            await connection.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values({Conversation.metadata_: metadata})
            )
        return await self.get(owner, conversation_id)

    async def delete(self, owner: str, conversation_id: str) -> dict[str, Any]:
        """Delete a conversation and its items; items a stored response read or wrote stay
        with that response."""
        async with writing(self._database) as connection:
            await lock_conversation(connection, owner, conversation_id, "conversation_id")
            await connection.execute(delete(Conversation).where(Conversation.id == conversation_id))
            await detach(connection, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def add_items(
        self, owner: str, conversation_id: str, items: list[Item]
    ) -> dict[str, Any]:
        """Append ``items``; one whose id the conversation has already gets a new one."""
        async with writing(self._database) as connection:
            await lock_conversation(connection, owner, conversation_id, "conversation_id")
            ids = [item["id"] for item in items]
            renamed(items, taken=await taken_ids(connection, conversation_id, ids))
            await connection.execute(
                insert(ResponseItem),
                item_rows(
                    items,
                    owner=owner,
                    role="input",
                    response_id=None,
                    conversation_id=conversation_id,
                ),
            )
        return Page(list(items), has_more=False).to_wire()

    async def list_items(
        self, owner: str, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        await self.get(owner, conversation_id)
        async with reading(self._database) as connection:
            query = select(ResponseItem.seq, ResponseItem.item_json).where(
                ResponseItem.conversation_id == conversation_id, ResponseItem.owner == owner
            )
            return await item_page(connection, query, after=after, limit=limit, order=order)

    async def get_item(self, owner: str, conversation_id: str, item_id: str) -> Item:
        await self.get(owner, conversation_id)
        if not matchable(item_id):
            raise _item_not_found(item_id)
        async with reading(self._database) as connection:
            row = (
                await connection.execute(
                    select(ResponseItem.item_json)
                    .where(
                        ResponseItem.conversation_id == conversation_id,
                        ResponseItem.owner == owner,
                        ResponseItem.id == item_id,
                    )
                    .order_by(ResponseItem.seq.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            raise _item_not_found(item_id)
        item: Item = json.loads(row.item_json)
        return item

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> dict[str, Any]:
        """Take an item out of a conversation; the conversation is returned."""
        if not matchable(item_id):
            raise _item_not_found(item_id)
        async with writing(self._database) as connection:
            await lock_conversation(connection, owner, conversation_id, "conversation_id")
            target = ResponseItem.conversation_id == conversation_id, ResponseItem.id == item_id
            found = await connection.execute(select(ResponseItem.seq).where(*target))
            if found.first() is None:
                raise _item_not_found(item_id)
            await connection.execute(
                delete(ResponseItem).where(*target, ResponseItem.response_id.is_(None))
            )
            await connection.execute(
                update(ResponseItem).where(*target).values(conversation_id=None)
            )
        return await self.get(owner, conversation_id)
