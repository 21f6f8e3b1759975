"""The built-in ``echo`` provider: deterministic, no network, no model.

It replies with the text of the last user message, streamed in word-sized pieces, and honours
``max_tokens`` (finish reason ``length``) and ``stop``. It exists for tests, client integration
tests and benchmarks; it is not a chatbot. A "token" here is a word with its leading spaces.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.providers.base import (
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from chatbot_api.providers.stop import StopMatcher

__all__ = ["EchoConfig", "EchoProvider", "count_tokens", "split_tokens"]

_TOKEN = re.compile(r"\s*\S+")


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(split_tokens(text))


class EchoConfig(BaseModel):
    """Keys an ``echo`` entry of the models file may set."""

    model_config = ConfigDict(extra="forbid")
    token_delay: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Seconds to wait before each token, to mimic a model.",
    )


class EchoProvider:
    supported_parameters: frozenset[str] = frozenset()

    def __init__(self, config: EchoConfig | None = None) -> None:
        self._delay = (config or EchoConfig()).token_delay

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's tokens, counted as ``generate`` reports them."""
        return sum(count_tokens(m.text) for m in request.messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        prompt_tokens = sum(count_tokens(m.text) for m in request.messages)
        last_user = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        matcher = StopMatcher(request.stop)
        produced = 0
        stopped = False
        reason: FinishReason = "stop"
        for token in split_tokens(last_user):
            if request.max_tokens is not None and produced >= request.max_tokens:
                reason = "length"
                break
            if self._delay:
                await asyncio.sleep(self._delay)
            produced += 1
            text, stopped = matcher.feed(token)
            if text:
                yield TextDelta(text)
            if stopped:
                break
        if not stopped and (rest := matcher.flush()):
            yield TextDelta(rest)
        yield Finish(reason)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=produced)

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
