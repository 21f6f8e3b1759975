"""``CreateChatCompletionResponse`` and ``CreateChatCompletionStreamResponse`` (the SSE chunk).

Fields the spec marks required but nullable (``message.content``, ``logprobs``) are always
written, as ``null`` when empty; optional fields the spec does not allow to be ``null``
(``tool_calls``, chunk ``usage`` when not asked for) are left out when unset.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, Field

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "Choice",
    "ChunkChoice",
    "CompletionUsage",
    "Delta",
    "FinishReason",
    "PromptTokensDetails",
    "ResponseMessage",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def _absent(value: Any) -> bool:
    return value is None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        default=0, description="Prompt tokens taken from the model's cache, not computed again."
    )


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Only from providers that keep a prompt cache (local models); others leave it out.
    prompt_tokens_details: PromptTokensDetails | None = Field(default=None, exclude_if=_absent)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> Self:
        details = None
        if cached_tokens is not None:
            details = PromptTokensDetails(cached_tokens=cached_tokens)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, exclude_if=_absent)


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str = Field(examples=["chatcmpl-3f1c2a9e8b7d4c6f9a0b1c2d3e4f5a6b"])
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    metadata: dict[str, str] | None = Field(default=None, exclude_if=_absent)


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_absent)
    content: str | None = Field(default=None, exclude_if=_absent)
    tool_calls: list[dict[str, Any]] | None = Field(default=None, exclude_if=_absent)


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    # With ``stream_options.include_usage`` every chunk carries it (null but on the last one);
    # without, the stream writer leaves it out.
    usage: CompletionUsage | None = None
