"""The ``langchain`` provider: a LangChain chat model or runnable, named by import path in the
models file, served as an OpenAI model (needs the ``langchain`` extra).

The conversation goes in as LangChain messages; the runnable's ``astream`` output comes back
as content deltas: message chunks give their text (a string content, or the text blocks of a
list content), plain strings pass as they are. Stop strings are applied here, across chunk
boundaries. Usage is the sum of the chunks' ``usage_metadata`` when the model reports it
(some report the prompt on the first chunk and the answer on the last), otherwise it is
counted in words and punctuation, the way ``echo`` counts.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from chatbot_api.providers.echo import count_tokens
from chatbot_api.providers.stop import StopMatcher

__all__ = ["LangChainConfig", "LangChainProvider", "load_runnable"]


class LangChainConfig(BaseModel):
    """Keys of a ``provider = "langchain"`` entry in the models file."""

    model_config = ConfigDict(extra="forbid")

    runnable: str = Field(
        description="Import path of the chat model or runnable: `package.module:attribute`."
    )


def load_runnable(path: str) -> Any:
    """The object at ``package.module:attribute``; a clear error when it is not a runnable."""
    try:
        from langchain_core.runnables import Runnable
    except ImportError:
        raise ValueError(
            "the langchain provider needs the langchain extra: pip install 'chatbot-api[langchain]'"
        ) from None
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"runnable {path!r} is not an import path like 'package.module:name'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not isinstance(target, Runnable):
        raise ValueError(f"{path!r} is a {type(target).__name__}, not a LangChain runnable")
    return target


class LangChainProvider:
    supported_parameters: frozenset[str] = frozenset()

    def __init__(self, config: LangChainConfig) -> None:
        self._runnable = load_runnable(config.runnable)

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

        kinds: dict[str, type[BaseMessage]] = {
            "system": SystemMessage,
            "developer": SystemMessage,
            "assistant": AIMessage,
        }
        messages = [kinds.get(m.role, HumanMessage)(content=m.text) for m in request.messages]
        matcher = StopMatcher(request.stop)
        produced: list[str] = []
        reported: tuple[int, int] | None = None
        stream = self._runnable.astream(messages)
        try:
            async for chunk in stream:
                usage = getattr(chunk, "usage_metadata", None)
                if usage:  # the chunks' counts add up, as LangChain adds message chunks
                    before = reported or (0, 0)
                    reported = (
                        before[0] + usage.get("input_tokens", 0),
                        before[1] + usage.get("output_tokens", 0),
                    )
                # ``text`` joins the text blocks of a list content (ChatAnthropic, v1 output).
                text = str(chunk.text) if isinstance(chunk, BaseMessage) else chunk
                if not isinstance(text, str) or not text:
                    continue
                kept, stopped = matcher.feed(text)
                if kept:
                    produced.append(kept)
                    yield TextDelta(kept)
                if stopped:
                    break
            else:
                rest = matcher.flush()
                if rest:
                    produced.append(rest)
                    yield TextDelta(rest)
        finally:
            await stream.aclose()
        yield Finish("stop")
        if reported is None:
            prompt = sum(count_tokens(m.text) for m in request.messages)
            reported = (prompt, count_tokens("".join(produced)))
        yield Usage(prompt_tokens=reported[0], completion_tokens=reported[1])
