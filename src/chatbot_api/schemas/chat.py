"""``CreateChatCompletionRequest``: every field of the current spec is accepted.

Fields we honour are typed and range-checked; fields that only some providers can honour are
typed loosely and checked against the provider's capabilities in the service layer; keys the
spec does not (yet) define are ignored and logged at debug level, never refused.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from chatbot_api.schemas.messages import ChatMessage
from chatbot_api.schemas.metadata import Metadata

__all__ = ["ChatCompletionRequest", "StreamOptions"]

logger = logging.getLogger(__name__)

Stop = Annotated[
    Annotated[str, Tag("~text")]
    | Annotated[list[str], Field(min_length=1, max_length=4), Tag("~list")],
    Discriminator(lambda value: "~list" if isinstance(value, list) else "~text"),
    Field(description="Up to 4 sequences where generation stops; they are not returned."),
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    # Strict like OpenAI's API: "yes" is not a boolean, "2" is not an integer.
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "echo",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "Hello there"},
                    ],
                    "max_completion_tokens": 64,
                    "stream": False,
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(
        min_length=1,
        description=(
            "The conversation. As on OpenAI, each `tool` message answers a call of the "
            "assistant message before it, and every call is answered before any other message."
        ),
    )
    model: str = Field(min_length=1, examples=["echo"])

    # Sampling and length: every provider honours these.
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated by OpenAI.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Upper bound on generated tokens; wins over max_tokens."
    )
    n: int | None = Field(default=None, ge=1, le=128)
    stop: Stop | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: Metadata | None = None
    store: bool | None = Field(
        default=None, description="Keep this completion for the stored-completion endpoints."
    )

    # Honoured only by providers that declare support; otherwise a 400 naming the parameter.
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description=(
            "Functions the model may call (type 'function'). Served by 'openai' upstreams and "
            "by local models with a chat template, whose calls a grammar holds to each "
            "function's 'parameters' schema; other models answer 400."
        ),
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None,
        description="'none', 'auto' (default with tools), 'required' or a named function.",
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="false: at most one call in a reply."
    )
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None

    # Accepted and without effect on a self-hosted server.
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    moderation: Any = None

    @model_validator(mode="before")
    @classmethod
    def _note_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and logger.isEnabledFor(logging.DEBUG):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                logger.debug("ignoring unknown request fields", extra={"fields": unknown})
        return data

    @property
    def completion_limit(self) -> int | None:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(s for s in self.stop if s)
