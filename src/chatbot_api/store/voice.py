"""Voice sessions in the database: the room a key made, and what LiveKit's webhooks said.

A room belongs to the key that first asked for it; another key asking for the same room name
is refused, so that nobody can obtain a token into someone else's conversation.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from chatbot_api.db.engine import Database
from chatbot_api.db.tables import VoiceSession
from chatbot_api.errors import ConflictError, NotFoundError
from chatbot_api.store.access import Order, Page, matchable, owned_page, reading, writing

__all__ = ["VoiceSessionStore"]


def _wire(row: Any) -> dict[str, Any]:
    return {
        "object": "voice.session",
        "room_name": row.room_name,
        "model": row.model,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "participants": list(row.participants),
        "metadata": row.metadata,
    }


def _taken(room_name: str) -> ConflictError:
    return ConflictError(
        f"The room '{room_name}' belongs to another API key; choose another room_name.",
        param="room_name",
        code="room_taken",
    )


class VoiceSessionStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def claim(
        self, owner: str, room_name: str, model: str, metadata: dict[str, str]
    ) -> tuple[bool, str]:
        """Record the room as ``owner``'s: whether it is new, and the model it serves. A room
        already theirs is theirs again; a room of another key is a 409 (two keys asking at
        once: the first insert wins, in either database, and the other is told so)."""
        row = {
            "room_name": room_name,
            "owner": owner,
            "model": model,
            "created_at": int(time.time()),
            "started_at": None,
            "ended_at": None,
            "participants": [],
            "metadata": metadata,
        }
        async with writing(self._database) as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            inserted = await connection.execute(
                dialect.insert(VoiceSession)
                .values(row)
                .on_conflict_do_nothing(index_elements=[VoiceSession.room_name])
            )
            holder = (
                await connection.execute(
                    select(VoiceSession.owner, VoiceSession.model).where(
                        VoiceSession.room_name == room_name
                    )
                )
            ).one()
        if holder.owner != owner:
            raise _taken(room_name)
        return bool(inserted.rowcount), str(holder.model)

    async def forget(self, owner: str, room_name: str) -> None:
        """Drop a claim whose room could not be made, so that it is not listed as a session."""
        async with writing(self._database) as connection:
            await connection.execute(
                delete(VoiceSession).where(
                    VoiceSession.room_name == room_name,
                    VoiceSession.owner == owner,
                    VoiceSession.started_at.is_(None),
                )
            )

    async def record(
        self, room_name: str, event: str, *, at: int, participant: str | None = None
    ) -> bool:
        """Apply a webhook's news to the room's record; False when the room is not ours.

        Events may arrive late, twice or out of order: a start older than what is recorded,
        or an end before the start, changes nothing; the row is locked while it changes, so
        that joins arriving together are all kept."""
        async with writing(self._database) as connection:
            row = (
                await connection.execute(
                    select(
                        VoiceSession.seq,
                        VoiceSession.started_at,
                        VoiceSession.ended_at,
                        VoiceSession.participants,
                    )
                    .where(VoiceSession.room_name == room_name)
                    .with_for_update()
                )
            ).first()
            if row is None:
                return False
            changes: dict[Any, Any] = {}
            if event == "room_started":
                if _after(at, row.started_at) and _after(at, row.ended_at):
                    changes[VoiceSession.started_at] = at  # started (again, under its name)
                    changes[VoiceSession.ended_at] = None
            elif event == "room_finished":
                if _after(at, row.ended_at) and (row.started_at is None or at >= row.started_at):
                    changes[VoiceSession.ended_at] = at
            elif participant is not None and participant not in row.participants:
                changes[VoiceSession.participants] = [*row.participants, participant]
            if changes:
                await connection.execute(
                    update(VoiceSession).where(VoiceSession.seq == row.seq).values(changes)
                )
        return True

    async def get(self, owner: str, room_name: str) -> dict[str, Any]:
        if not matchable(room_name):
            raise _not_found(room_name)
        async with reading(self._database) as connection:
            row = (
                await connection.execute(
                    select(VoiceSession).where(
                        VoiceSession.room_name == room_name, VoiceSession.owner == owner
                    )
                )
            ).first()
        if row is None:
            raise _not_found(room_name)
        return _wire(row)

    async def list_owned(self, owner: str, *, after: str | None, limit: int, order: Order) -> Page:
        """The owner's sessions, newest first unless ``order="asc"``; ``after`` is a room."""
        return await owned_page(
            self._database,
            VoiceSession,
            owner,
            key="room_name",
            after=after,
            limit=limit,
            order=order,
            wire=_wire,
        )


def _after(at: int, recorded: int | None) -> bool:
    return recorded is None or at > recorded


def _not_found(room_name: str) -> NotFoundError:
    return NotFoundError(f"No voice session found in room '{room_name}'.", param="room_name")
