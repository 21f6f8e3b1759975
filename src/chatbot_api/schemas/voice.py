"""Voice sessions: the request for a LiveKit room and token, what it answers, and the record
of a session. The token answer has the shape LiveKit's own token endpoints use."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chatbot_api.schemas.metadata import Metadata

__all__ = [
    "CreateVoiceSessionRequest",
    "VoiceSession",
    "VoiceSessionList",
    "VoiceSessionToken",
]

#: Room names and identities travel in URLs and tokens: letters, digits and ``._~@:+-``.
_NAME = r"^[A-Za-z0-9._~@:+-]+$"
RoomName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NAME)]
Identity = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NAME)]


class CreateVoiceSessionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": "gemma-3-270m", "instructions": "Answer in one short sentence."},
                {"model": "echo", "room_name": "support-42", "participant_name": "Ada"},
            ]
        },
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="The model the voice agent answers with (the key must be allowed it)."
    )
    room_name: RoomName | None = Field(
        default=None, description="The room to join; a new one is named when not given."
    )
    participant_identity: Identity | None = Field(
        default=None, description="The caller's identity in the room; generated when not given."
    )
    participant_name: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="The caller's display name."
    )
    instructions: Annotated[str, StringConstraints(max_length=4000)] | None = Field(
        default=None,
        description=(
            "The agent's system prompt. It travels in the token (which clients put in a URL), "
            "hence its limit."
        ),
    )
    metadata: Metadata | None = Field(
        default=None, description="Kept with the session and passed to the agent's dispatch."
    )


class VoiceSessionToken(BaseModel):
    server_url: str = Field(description="The LiveKit server to connect to.")
    participant_token: str = Field(description="A JWT that joins this room only, until expiry.")
    room_name: str
    participant_identity: str
    expires_at: int = Field(description="When the token expires (Unix seconds).")


class VoiceSession(BaseModel):
    object: Literal["voice.session"] = "voice.session"
    room_name: str
    model: str
    created_at: int
    started_at: int | None = Field(description="When LiveKit reported the room started.")
    ended_at: int | None = Field(description="When LiveKit reported the room finished.")
    participants: list[str] = Field(description="Identities that joined, in order.")
    metadata: dict[str, str]


class VoiceSessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceSession]
    first_id: str | None = Field(description="The first session's room name.")
    last_id: str | None = Field(
        description="The last session's room name: `after` for the next page."
    )
    has_more: bool
