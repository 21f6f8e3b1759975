"""Request messages (``ChatCompletionRequestMessage``): one model per role, chosen by ``role``.

Unions here use callable discriminators whose tags start with ``~``: Pydantic puts a union's
tag into an error's location, and ``api.error_handlers.param_from_location`` drops such tags
so that a client reads ``messages[0].content`` rather than Pydantic's internals.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

__all__ = [
    "AssistantMessage",
    "ChatMessage",
    "ContentPart",
    "DeveloperMessage",
    "FunctionMessage",
    "SystemMessage",
    "TextPart",
    "ToolMessage",
    "UserMessage",
    "message_text",
]


class _Lenient(BaseModel):
    """Fields the spec adds later must not break old servers: unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class MediaPart(BaseModel):
    """An image, audio or file part: accepted here; a provider that cannot read it says so."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url", "input_audio", "file"]


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in ("text", "refusal"):
        return f"~{kind}"
    return "~media" if kind in ("image_url", "input_audio", "file") else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("~text")]
    | Annotated[RefusalPart, Tag("~refusal")]
    | Annotated[MediaPart, Tag("~media")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_part_type",
        custom_error_message=(
            "each content part needs a 'type' of 'text', 'image_url', 'input_audio', 'file' "
            "or 'refusal'"
        ),
    ),
]


def _content_tag(value: Any) -> str:
    return "~parts" if isinstance(value, list) else "~text"


Content = Annotated[
    Annotated[str, Tag("~text")] | Annotated[list[ContentPart], Tag("~parts")],
    Discriminator(_content_tag),
]


class ToolCallFunction(_Lenient):
    name: str
    arguments: str


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class DeveloperMessage(_Lenient):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class SystemMessage(_Lenient):
    role: Literal["system"]
    content: Content
    name: str | None = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: Content | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: ToolCallFunction | None = None
    audio: dict[str, Any] | None = None


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(_Lenient):
    """Deprecated by OpenAI in favour of ``tool``; still part of the spec."""

    role: Literal["function"]
    content: str | None
    name: str


ROLES = ("developer", "system", "user", "assistant", "tool", "function")


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return f"~{role}" if role in ROLES else None


ChatMessage = Annotated[
    Annotated[DeveloperMessage, Tag("~developer")]
    | Annotated[SystemMessage, Tag("~system")]
    | Annotated[UserMessage, Tag("~user")]
    | Annotated[AssistantMessage, Tag("~assistant")]
    | Annotated[ToolMessage, Tag("~tool")]
    | Annotated[FunctionMessage, Tag("~function")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message=(
            "each message needs a 'role' of 'developer', 'system', 'user', 'assistant', "
            "'tool' or 'function'"
        ),
    ),
]


def message_text(content: str | list[Any] | None) -> str:
    """The text of a message's content: a string as is, text (and refusal) parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces: list[str] = []
    for part in content:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, RefusalPart):
            pieces.append(part.refusal)
    return "".join(pieces)
