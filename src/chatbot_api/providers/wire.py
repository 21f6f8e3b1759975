"""OpenAI's chat-completion JSON, as an upstream sends it, read into our events: what the
``openai`` provider yields to the Responses API, and what a relayed stream adds to the
assembly of a completion to be stored. Only what the events carry is read; a value of the
wrong type is left out rather than trusted."""

from __future__ import annotations

from typing import Any, cast

from chatbot_api.providers.base import (
    Finish,
    FinishReason,
    GenerationEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

__all__ = ["chunk_events", "completion_events", "usage_of"]

_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def completion_events(document: dict[str, Any]) -> list[GenerationEvent]:
    """The events of a ``chat.completion``: every choice ends with its finish reason."""
    return _events(document, "message", whole=True)


def chunk_events(document: dict[str, Any]) -> list[GenerationEvent]:
    """The events of one ``chat.completion.chunk``."""
    return _events(document, "delta", whole=False)


def _events(document: dict[str, Any], part: str, *, whole: bool) -> list[GenerationEvent]:
    events: list[GenerationEvent] = []
    for choice in _dicts(document.get("choices")):
        index = _index(choice)
        said = choice.get(part)
        said = said if isinstance(said, dict) else {}
        content = said.get("content")
        if isinstance(content, str) and content:
            events.append(TextDelta(content, index, _logprobs(choice.get("logprobs"))))
        for number, call in enumerate(_dicts(said.get("tool_calls"))):
            events.append(ToolCallDelta(_tool_call(call, number), index))
        if whole or choice.get("finish_reason") is not None:
            events.append(Finish(_finish(choice.get("finish_reason")), index))
    usage = usage_of(document)
    if usage is not None:
        events.append(usage)
    return events


def usage_of(document: dict[str, Any]) -> Usage | None:
    """The document's token counts, when it carries them."""
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _tool_call(call: dict[str, Any], number: int) -> dict[str, Any]:
    """A tool call (or a streamed piece of one) with only well-typed fields: its ``index``
    (the call's position when it has none), ``id``, ``type`` and ``function`` name and
    arguments as strings."""
    index = call.get("index")
    piece: dict[str, Any] = {"index": index if type(index) is int and index >= 0 else number}
    for key in ("id", "type"):
        if isinstance(call.get(key), str):
            piece[key] = call[key]
    function = call.get("function")
    if isinstance(function, dict):
        piece["function"] = {
            key: function[key]
            for key in ("name", "arguments")
            if isinstance(function.get(key), str)
        }
    return piece


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index", 0)
    return index if type(index) is int and 0 <= index < 128 else 0


#: More tokens than any answer holds: a count past it is a fault, not a count.
_MOST_TOKENS = 2**40


def _count(value: Any) -> int:
    return value if type(value) is int and 0 <= value < _MOST_TOKENS else 0


def _finish(reason: Any) -> FinishReason:
    # function_call is the deprecated spelling of tool_calls' predecessor; OpenAI's stop.
    return cast(FinishReason, reason) if reason in _FINISH_REASONS else "stop"


def _logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(logprobs, dict):
        return None
    content = _dicts(logprobs.get("content"))
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=str(item.get("token", "")),
            logprob=_number(item.get("logprob")),
            bytes=_bytes(item.get("bytes")),
            top_logprobs=tuple(
                TopLogprob(
                    str(top.get("token", "")), _number(top.get("logprob")), _bytes(top.get("bytes"))
                )
                for top in _dicts(item.get("top_logprobs"))
            ),
        )
        for item in content
    )


def _number(value: Any) -> float:
    return float(value) if type(value) in (int, float) else 0.0


def _bytes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if type(item) is int and 0 <= item < 256)
