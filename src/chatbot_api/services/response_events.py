"""A provider's events as a Responses API ``response``: its output items as they grow, and
the typed stream events OpenAI sends for them, in OpenAI's order, numbered.

Text opens an assistant ``message`` item with one ``output_text`` part; each tool call opens a
``function_call`` item whose arguments stream as ``response.function_call_arguments.delta``.
An item is closed (its ``.done`` events) when the next one opens or the generation ends.
"""

from __future__ import annotations

import time
from typing import Any

from chatbot_api.errors import ChatbotAPIError
from chatbot_api.ids import new_id
from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)

__all__ = ["ResponseBuilder", "response_error", "wire_usage"]

Event = dict[str, Any]


def wire_usage(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_error(error: ChatbotAPIError) -> dict[str, str]:
    """A response's ``error``: OpenAI's codes for it are few; the message says the rest."""
    if error.status_code == 429:
        code = "rate_limit_exceeded"
    elif error.status_code == 400:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": error.message}


def _logprobs(tokens: tuple[TokenLogprob, ...] | None) -> list[dict[str, Any]]:
    if not tokens:
        return []
    return [
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
    ]


class ResponseBuilder:
    """One response, built from the events of one generation."""

    def __init__(self, base: dict[str, Any]) -> None:
        #: Every field of the response but ``status``, ``output`` and what the end sets.
        self.base = base
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.input_tokens = 0
        self.cached_tokens = 0
        self.output_tokens = 0
        self._sequence = 0
        self._incomplete: str | None = None
        self._error: dict[str, str] | None = None
        self._completed_at: int | None = None
        #: The open item: a message (with its text so far) or a function call.
        self._open: dict[str, Any] | None = None
        self._text: list[str] = []
        self._logprobs: list[dict[str, Any]] = []
        #: Function call items by the provider's index of the call.
        self._calls: dict[int, dict[str, Any]] = {}

    def response(self, status: str | None = None) -> dict[str, Any]:
        """The response object as it stands."""
        body = dict(self.base)
        body["status"] = status or self.status
        body["output"] = list(self.output)
        body["error"] = self._error
        body["incomplete_details"] = (
            {"reason": self._incomplete} if self._incomplete is not None else None
        )
        body["completed_at"] = self._completed_at
        if body["status"] in ("completed", "incomplete"):
            # Optional but never null in the spec: left out until it is known.
            body["usage"] = wire_usage(self.input_tokens, self.output_tokens, self.cached_tokens)
        return body

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self, *, queued: bool = False) -> list[Event]:
        events = [self._event("response.created", response=self.response())]
        if queued:
            events.append(self._event("response.queued", response=self.response("queued")))
        events.append(self._event("response.in_progress", response=self.response()))
        return events

    def add(self, event: GenerationEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._add_text(event)
        if isinstance(event, ToolCallDelta):
            return self._add_call_piece(event)
        if isinstance(event, Finish):
            if event.reason == "length":
                self._incomplete = "max_output_tokens"
            elif event.reason == "content_filter":
                self._incomplete = "content_filter"
            return []
        self.input_tokens = event.prompt_tokens
        self.output_tokens = event.completion_tokens
        self.cached_tokens = event.cached_tokens or 0
        return []

    def _add_text(self, event: TextDelta) -> list[Event]:
        events: list[Event] = []
        item = self._open
        if item is None or item["type"] != "message":
            events += self._close()
            item = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self._open = item
            self._text = []
            self._logprobs = []
            index = len(self.output)
            self.output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=index, item=dict(item))
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        logprobs = _logprobs(event.logprobs)
        self._text.append(event.text)
        self._logprobs.extend(logprobs)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self._index(item),
                content_index=0,
                delta=event.text,
                logprobs=logprobs,
            )
        )
        return events

    def _add_call_piece(self, event: ToolCallDelta) -> list[Event]:
        piece = event.call
        function = piece.get("function") or {}
        key = piece.get("index", len(self._calls))
        events: list[Event] = []
        item = self._calls.get(key)
        if item is None:
            events += self._close()
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": piece.get("id") or new_id("call"),
                "name": function.get("name") or "",
                "arguments": "",
            }
            self._calls[key] = item
            self.output.append(item)
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=len(self.output) - 1,
                    item=dict(item),
                )
            )
            self._open = item
        delta = function.get("arguments") or ""
        if delta:
            item["arguments"] += delta
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index(item),
                    delta=delta,
                )
            )
        return events

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, kept in enumerate(self.output) if kept is item)

    def _close(self) -> list[Event]:
        """The ``.done`` events of the open item, which is final from here on."""
        item = self._open
        if item is None:
            return []
        self._open = None
        index = self._index(item)
        status = "incomplete" if self._incomplete else "completed"
        events: list[Event] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": self._logprobs,
            }
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append(
                self._event(
                    "response.output_text.done", **common, text=text, logprobs=self._logprobs
                )
            )
            events.append(self._event("response.content_part.done", **common, part=part))
            item.update(status=status, content=[part])
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            item["status"] = status
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def finish(self) -> list[Event]:
        """Close the open item; the last event: ``response.completed`` or, cut short,
        ``response.incomplete``."""
        events = self._close()
        self._completed_at = int(time.time())
        self.status = "incomplete" if self._incomplete else "completed"
        kind = "response.incomplete" if self._incomplete else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, error: ChatbotAPIError) -> list[Event]:
        """The generation failed: ``response.failed`` with the error."""
        self._open = None
        self.status = "failed"
        self._error = response_error(error)
        return [self._event("response.failed", response=self.response())]
