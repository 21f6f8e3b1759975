"""Table definitions. Persistence models only: wire schemas live in ``schemas/``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey",
    "Base",
    "Conversation",
    "ResponseItem",
    "StoredCompletion",
    "StoredResponse",
]


class Base(DeclarativeBase):
    pass


class StoredCompletion(Base):
    """A chat completion kept with ``store: true``: the request's messages and the answer."""

    __tablename__ = "stored_completions"

    #: Insertion order: paging walks it, so ties in ``created`` never reorder a page.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    #: Who may read it: the API key's id once keys exist; "" for anonymous use.
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    created: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Payloads are kept as the JSON text that was sent, so writing costs no re-serialising.
    messages_json: Mapped[str] = mapped_column(Text)
    response_json: Mapped[str] = mapped_column(Text)
    # Filtered on by key, so a JSON column the databases can index into.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_stored_completions_owner_seq", "owner", "seq"),
        Index("ix_stored_completions_owner_model_seq", "owner", "model", "seq"),
    )


class ApiKey(Base):
    """An API key: only its SHA-256 is kept; ``prefix`` (not secret) finds it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    #: Model ids the key may use; None for every model.
    models: Mapped[list[str] | None] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class StoredResponse(Base):
    """A response of the Responses API. Its items (input and output) are rows of
    :class:`ResponseItem`; ``body_json`` is the response object without its ``output``."""

    __tablename__ = "responses"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: ``queued``, ``in_progress``, ``completed``, ``incomplete``, ``failed`` or ``cancelled``.
    status: Mapped[str] = mapped_column(String(16))
    background: Mapped[bool] = mapped_column(Boolean)
    #: The response this one continues; the chain of them is its context.
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    body_json: Mapped[str] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    #: While a background response runs: until when its server vouches for it (unix seconds).
    lease_until: Mapped[int | None] = mapped_column(BigInteger)


class Conversation(Base):
    """A conversation of the Conversations API; its items are rows of :class:`ResponseItem`."""

    __tablename__ = "conversations"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    # Listed by owner, newest first (``GET /v1/conversations``).
    __table_args__ = (Index("ix_conversations_owner_seq", "owner", "seq"),)


class ResponseItem(Base):
    """One item (a message, a function call or its output...), stored once: it belongs to
    the response that read or wrote it, to a conversation, or to both. Insertion order
    (``seq``) is conversation order."""

    __tablename__ = "response_items"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    #: The item's id as clients see it; an item sent back as input keeps its id, so the
    #: same id may name several rows (each lookup is scoped to a response or conversation).
    id: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64))
    response_id: Mapped[str | None] = mapped_column(String(64))
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    #: ``input`` or ``output`` of its response (``input`` for items added to a conversation).
    role: Mapped[str] = mapped_column(String(8))
    item_json: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_response_items_response_seq", "response_id", "seq"),
        Index("ix_response_items_conversation_seq", "conversation_id", "seq"),
    )


class VoiceSession(Base):
    """A voice session: the LiveKit room a key made, and what LiveKit's webhooks said of it."""

    __tablename__ = "voice_sessions"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    room_name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    #: Identities that joined, in the order they did.
    participants: Mapped[list[str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    __table_args__ = (Index("ix_voice_sessions_owner_seq", "owner", "seq"),)
