"""Wire schemas of OpenAI's stored-completion endpoints (for validation and the docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.schemas.completions import ChatCompletion
from chatbot_api.schemas.metadata import Metadata

__all__ = [
    "ChatCompletionDeleted",
    "ChatCompletionList",
    "ChatCompletionMessageList",
    "StoredChatCompletion",
    "StoredMessage",
    "UpdateMetadataRequest",
]


class StoredChatCompletion(ChatCompletion):
    metadata: dict[str, str] | None = None
    request_id: str | None = None


class ChatCompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredChatCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredMessage(BaseModel):
    id: str = Field(examples=["chatcmpl-abc123-0"])
    role: str
    content: str | None
    refusal: str | None = None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class ChatCompletionMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ChatCompletionDeleted(BaseModel):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool


class UpdateMetadataRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={"examples": [{"metadata": {"topic": "geography", "reviewed": "yes"}}]},
    )
    metadata: Metadata | None
