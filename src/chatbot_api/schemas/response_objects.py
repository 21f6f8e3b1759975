"""What the Responses and Conversations APIs answer with, for the OpenAPI document: the
``Response`` object, item lists, conversations, and the objects of deletes and counts.

Items are documented loosely (an object with ``type`` and ``id``): they are stored and
returned as OpenAI defines them, one of several shapes (``message``, ``function_call``...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.schemas.metadata import Metadata
from chatbot_api.schemas.responses import InputItem

__all__ = [
    "ConversationDeleted",
    "ConversationItemList",
    "ConversationObject",
    "CreateConversationRequest",
    "CreateItemsRequest",
    "InputTokens",
    "ResponseDeleted",
    "ResponseItemList",
    "ResponseObject",
    "ResponseUsage",
    "UpdateConversationRequest",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponseUsage(_Open):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(_Open):
    id: str = Field(examples=["resp_0193a5c1d2e3f4a5b6c7d8e9f0a1b2c3"])
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
    model: str
    output: list[dict[str, Any]] = Field(
        description="`message` items with `output_text` parts, and `function_call` items."
    )
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    tool_choice: Any
    tools: list[dict[str, Any]]
    previous_response_id: str | None = None
    usage: ResponseUsage | None = None


class ResponseDeleted(_Open):
    id: str
    object: Literal["response"] = "response"
    deleted: bool


class _ItemList(_Open):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponseItemList(_ItemList):
    """The input items of a response, paged."""


class ConversationItemList(_ItemList):
    """Items of a conversation, paged (or the items just added)."""


class InputTokens(_Open):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class ConversationObject(_Open):
    id: str = Field(examples=["conv_0193a5c1d2e3f4a5b6c7d8e9f0a1b2c3"])
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class ConversationList(_Open):
    """The caller's conversations, paged: an extension of ours (OpenAI's API has no list), so
    that a client such as the playground can find its conversations again by key."""

    object: Literal["list"] = "list"
    data: list[ConversationObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ConversationDeleted(_Open):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool


class CreateConversationRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "metadata": {"topic": "travel"},
                    "items": [{"role": "user", "content": "I am planning a trip to Rome."}],
                }
            ]
        },
    )
    metadata: Metadata | None = None
    items: list[InputItem] | None = Field(default=None, max_length=20)


class UpdateConversationRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={"examples": [{"metadata": {"topic": "history"}}]},
    )
    metadata: Metadata


class CreateItemsRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={"examples": [{"items": [{"role": "user", "content": "And Florence?"}]}]},
    )
    items: list[InputItem] = Field(min_length=1, max_length=20)
