"""``CreateResponse`` and the input items it carries (the spec's ``InputItem``).

Input items are validated here, one model per ``type``, so that a client reads which item and
which field is wrong (``input[2].call_id``). Fields that only some providers can honour are
typed loosely and checked in the service layer; keys the spec does not define are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from chatbot_api.schemas.metadata import Metadata

__all__ = [
    "AssistantInputMessage",
    "ConversationRef",
    "CreateResponseRequest",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputItem",
    "InputMessage",
    "InputTokensRequest",
    "ItemReference",
    "ReasoningItem",
    "TextParam",
]

#: The most one request may carry, as OpenAI's limit on a string input (10 MiB).
MAX_TEXT = 10_485_760


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class InputTextPart(_Lenient):
    type: Literal["input_text"]
    text: Annotated[str, Field(max_length=MAX_TEXT)]


class OutputTextPart(_Lenient):
    type: Literal["output_text"]
    text: Annotated[str, Field(max_length=MAX_TEXT)]


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class MediaPart(BaseModel):
    """An image, file or audio part: kept; a model that cannot read it says so with a 400."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["input_image", "input_file", "input_audio"]


_PART_TYPES = ("input_text", "output_text", "refusal", "input_image", "input_file", "input_audio")


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in ("input_image", "input_file", "input_audio"):
        return "~media"
    return f"~{kind}" if kind in _PART_TYPES else None


ContentPart = Annotated[
    Annotated[InputTextPart, Tag("~input_text")]
    | Annotated[OutputTextPart, Tag("~output_text")]
    | Annotated[RefusalPart, Tag("~refusal")]
    | Annotated[MediaPart, Tag("~media")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_part_type",
        custom_error_message=(
            "each content part needs a 'type' of 'input_text', 'input_image', 'input_file', "
            "'input_audio', 'output_text' or 'refusal'"
        ),
    ),
]

Content = Annotated[
    Annotated[Annotated[str, Field(max_length=MAX_TEXT)], Tag("~text")]
    | Annotated[list[ContentPart], Tag("~parts")],
    Discriminator(lambda value: "~parts" if isinstance(value, list) else "~text"),
]


class InputMessage(_Lenient):
    """A user, system or developer message (``EasyInputMessage`` or ``InputMessage``)."""

    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=128)
    role: Literal["user", "system", "developer"]
    content: Content


class AssistantInputMessage(_Lenient):
    """An earlier answer sent back as input (``EasyInputMessage`` or ``OutputMessage``)."""

    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=128)
    role: Literal["assistant"]
    content: Content


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    arguments: Annotated[str, Field(max_length=MAX_TEXT)]


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    output: Content


class ItemReference(_Lenient):
    """A stored item, named by id (the caller's own)."""

    type: Literal["item_reference"] | None = "item_reference"
    id: str = Field(min_length=1, max_length=128)


class ReasoningItem(BaseModel):
    """Another model's reasoning: kept with the conversation, not shown to ours."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["reasoning"]
    id: str | None = Field(default=None, max_length=128)


_ITEM_TYPES = ("message", "function_call", "function_call_output", "item_reference", "reasoning")


def _item_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if "type" not in value and "role" not in value and "id" in value:
        return "~item_reference"  # OpenAI's ItemReferenceParam may leave out its type
    kind = value.get("type", "message")
    if kind == "message" or (kind is None and "role" in value):
        return "~assistant" if value.get("role") == "assistant" else "~message"
    if kind is None and "id" in value:
        return "~item_reference"
    return f"~{kind}" if kind in _ITEM_TYPES else None


InputItem = Annotated[
    Annotated[InputMessage, Tag("~message")]
    | Annotated[AssistantInputMessage, Tag("~assistant")]
    | Annotated[FunctionCallItem, Tag("~function_call")]
    | Annotated[FunctionCallOutputItem, Tag("~function_call_output")]
    | Annotated[ItemReference, Tag("~item_reference")]
    | Annotated[ReasoningItem, Tag("~reasoning")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item_type",
        custom_error_message=(
            "each input item needs a 'type' of 'message' (or a 'role'), 'function_call', "
            "'function_call_output', 'item_reference' or 'reasoning'; this server runs no "
            "built-in tools"
        ),
    ),
]

Input = Annotated[
    Annotated[Annotated[str, Field(max_length=MAX_TEXT)], Tag("~text")]
    | Annotated[list[InputItem], Tag("~items")],
    Discriminator(lambda value: "~items" if isinstance(value, list) else "~text"),
]


class FunctionTool(_Lenient):
    """A function the model may call (``FunctionTool``); the only tool type we serve."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextParam(_Lenient):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ConversationRef(_Lenient):
    id: str = Field(min_length=1, max_length=128)


def _text_or_object(value: Any) -> str:
    return "~text" if isinstance(value, str) else "~object"


ConversationParam = Annotated[
    Annotated[Annotated[str, Field(min_length=1, max_length=128)], Tag("~text")]
    | Annotated[ConversationRef, Tag("~object")],
    Discriminator(_text_or_object),
]

ToolChoice = Annotated[
    Annotated[str, Tag("~text")] | Annotated[dict[str, Any], Tag("~object")],
    Discriminator(_text_or_object),
]


class ReasoningParam(_Lenient):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class StreamOptions(_Lenient):
    include_obfuscation: bool | None = None


class _InputFields(BaseModel):
    """What ``CreateResponse`` and ``TokenCountsBody`` share: the model's whole input."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: Input | None = None
    instructions: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    previous_response_id: str | None = Field(default=None, max_length=128)
    conversation: ConversationParam | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation


class CreateResponseRequest(_InputFields):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": "echo", "input": "Hello there", "instructions": "Be brief."},
            ]
        },
    )

    model: str = Field(min_length=1, examples=["echo"])
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    metadata: Metadata | None = None
    user: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    store: bool | None = Field(
        default=None,
        description="Keep the response and its items (default true, as OpenAI's).",
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    background: bool | None = None
    include: list[str] | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    prompt: dict[str, Any] | None = None

    # Accepted and without effect on a self-hosted server.
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: Any = None
    moderation: Any = None


class InputTokensRequest(_InputFields):
    """``TokenCountsBody``: what a response would read, counted without generating."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={"examples": [{"model": "echo", "input": "How many tokens is this?"}]},
    )

    model: str = Field(min_length=1, examples=["echo"])
