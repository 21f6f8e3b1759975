"""Collecting a provider's events into a ``chat.completion`` (answers and stored streams)."""

from __future__ import annotations

from typing import Any

from chatbot_api.providers.base import (
    Finish,
    FinishReason,
    GenerationEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from chatbot_api.schemas.completions import ChatCompletion, Choice, CompletionUsage, ResponseMessage

__all__ = ["Assembly", "wire_logprobs"]


class Assembly:
    """Texts, finish reasons, logprobs and usage of every choice, as events arrive."""

    def __init__(self, n: int, *, logprobs: bool) -> None:
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self._reasons: list[FinishReason] = ["stop"] * n
        #: Per choice, tool calls in the order they began, their argument pieces joined...
        self._tool_calls: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        #: ... and, per choice, which of them the pieces with each ``index`` now continue.
        self._current: list[dict[Any, dict[str, Any]]] = [{} for _ in range(n)]
        self._want_logprobs = logprobs
        self.usage = CompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def add(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            self._texts[event.index].append(event.text)
            if event.logprobs:
                self._logprobs[event.index].extend(event.logprobs)
        elif isinstance(event, ToolCallDelta):
            self._add_tool_call(event)
        elif isinstance(event, Finish):
            self._reasons[event.index] = event.reason
        else:
            self.usage = CompletionUsage.of(
                event.prompt_tokens, event.completion_tokens, event.cached_tokens
            )

    def _add_tool_call(self, event: ToolCallDelta) -> None:
        """A piece continues the call its ``index`` names, unless it brings an ``id`` of its
        own: then it begins another (some upstreams number every call 0)."""
        piece = event.call
        calls, current = self._tool_calls[event.index], self._current[event.index]
        function = piece.get("function") or {}
        position = piece.get("index", len(calls))
        call = current.get(position)
        new_id = piece.get("id")
        if call is None or (new_id and call["id"] and new_id != call["id"]):
            call = {"id": new_id, "type": piece.get("type", "function")}
            call["function"] = {"name": function.get("name", ""), "arguments": ""}
            calls.append(call)
            current[position] = call
        call["function"]["arguments"] += function.get("arguments") or ""

    def _message(self, choice: int) -> ResponseMessage:
        text = "".join(self._texts[choice])
        calls = self._tool_calls[choice]
        if not calls:
            return ResponseMessage(content=text)
        return ResponseMessage(content=text or None, tool_calls=calls)

    def completion(self, completion_id: str, created: int, model: str) -> ChatCompletion:
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=model,
            choices=[
                Choice(
                    index=i,
                    message=self._message(i),
                    logprobs=wire_logprobs(self._logprobs[i]) if self._want_logprobs else None,
                    finish_reason=self._reasons[i],
                )
                for i, texts in enumerate(self._texts)
            ],
            usage=self.usage,
        )


def wire_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object of a choice: ``{"content": [...], "refusal": null}``."""
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.bytes),
                "top_logprobs": [
                    {"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)}
                    for a in t.top_logprobs
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }
