"""Voice sessions: the request for a LiveKit room and token, what it answers, and the record
of a session. The token answer has the shape LiveKit's own token endpoints use."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from chatbot_api.schemas.metadata import Metadata

__all__ = [
    "CreateVoiceSessionRequest",
    "VoiceSession",
    "VoiceSessionList",
    "VoiceSessionToken",
    "WebhookReceipt",
]

#: Room names and identities travel in URLs and tokens: letters, digits and ``._~@:+-``.
_NAME = r"^[A-Za-z0-9._~@:+-]+$"
#: Bytes the instructions may take once JSON-encoded (escapes and UTF-8 counted): they ride
#: in the participant token, and clients send the token in a URL.
MAX_INSTRUCTION_BYTES = 4000


def _not_a_path_step(name: str) -> str:
    if set(name) == {"."}:
        raise ValueError("a name of dots alone is a path step, not a name")
    return name


def _fits_a_token(text: str) -> str:
    if len(json.dumps(text, ensure_ascii=False).encode()) > MAX_INSTRUCTION_BYTES:
        raise ValueError(f"at most {MAX_INSTRUCTION_BYTES} bytes once JSON-encoded")
    return text


RoomName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=_NAME),
    AfterValidator(_not_a_path_step),
]
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
    instructions: Annotated[str, AfterValidator(_fits_a_token)] | None = Field(
        default=None,
        description=(
            "The agent's system prompt, up to 4,000 bytes as JSON. It travels in the token "
            "(which clients put in a URL, and whoever holds it can read)."
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


class WebhookReceipt(BaseModel):
    received: bool = True
    recorded: bool = Field(description="Whether it was about a session of this server's.")
