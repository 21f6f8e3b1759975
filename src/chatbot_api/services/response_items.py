"""Items of the Responses and Conversations APIs: the validated input in the form they are
stored and returned in (with ids and statuses), and a context of items as chat messages.

A model reads a context as chat messages: a user, system or developer message as itself,
earlier answers as assistant messages, consecutive function calls as one assistant message
with ``tool_calls`` followed by each call's output as a ``tool`` message.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from typing import Any

from chatbot_api.errors import InvalidRequestError
from chatbot_api.ids import new_id, renamed
from chatbot_api.schemas.responses import (
    AssistantInputMessage,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputMessage,
    InputTextPart,
    ItemReference,
    OutputTextPart,
    ReasoningItem,
    RefusalPart,
)

__all__ = ["check_function_outputs", "context_messages", "stored_items"]

Item = dict[str, Any]


def _parts(content: str | list[Any], *, kind: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text_part(kind, content)]
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, InputTextPart | OutputTextPart):
            parts.append(_text_part(part.type, part.text))
        elif isinstance(part, RefusalPart):
            parts.append({"type": "refusal", "refusal": part.refusal})
        else:
            parts.append(part.model_dump(exclude_none=True))
    return parts


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def stored_items(items: Sequence[InputItem], references: dict[str, Item]) -> list[Item]:
    """Input items as they are stored and listed: each with an id and a status.

    ``references`` holds the stored items that ``item_reference`` entries name; each is
    taken as it was stored. An id repeated in the list is replaced by a new one after its
    first use, so that it names one item.
    """
    out: list[Item] = []
    for item in items:
        if isinstance(item, InputMessage):
            out.append(
                {
                    "type": "message",
                    "id": item.id or new_id("msg"),
                    "status": "completed",
                    "role": item.role,
                    "content": _parts(item.content, kind="input_text"),
                }
            )
        elif isinstance(item, AssistantInputMessage):
            out.append(
                {
                    "type": "message",
                    "id": item.id or new_id("msg"),
                    "status": "completed",
                    "role": "assistant",
                    "content": _parts(item.content, kind="output_text"),
                }
            )
        elif isinstance(item, FunctionCallItem):
            out.append(
                {
                    "type": "function_call",
                    "id": item.id or new_id("fc"),
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            output: str | list[dict[str, Any]] = (
                item.output
                if isinstance(item.output, str)
                else _parts(item.output, kind="input_text")
            )
            out.append(
                {
                    "type": "function_call_output",
                    "id": item.id or new_id("fco"),
                    "call_id": item.call_id,
                    "output": output,
                    "status": "completed",
                }
            )
        elif isinstance(item, ItemReference):
            out.append(dict(references[item.id]))
        else:
            assert isinstance(item, ReasoningItem)
            kept = item.model_dump(exclude_none=True)
            kept["id"] = item.id or new_id("rs")
            kept.setdefault("summary", [])
            out.append(kept)
    return renamed(out, taken=set())


def _chat_content(parts: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's content as chat content: plain text when it is only text."""
    if isinstance(parts, str):
        return parts
    if all(p.get("type") in ("input_text", "output_text", "refusal") for p in parts):
        return "".join(p.get("text") or p.get("refusal") or "" for p in parts)
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            chat_parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "refusal":
            chat_parts.append({"type": "text", "text": part.get("refusal", "")})
        elif kind == "input_image":
            chat_parts.append({"type": "image_url", "image_url": {"url": part.get("image_url")}})
        elif kind == "input_audio":
            chat_parts.append({"type": "input_audio", "input_audio": part.get("input_audio")})
        else:
            chat_parts.append(
                {"type": "file", "file": {k: v for k, v in part.items() if k != "type"}}
            )
    return chat_parts


def check_function_outputs(context: Iterable[Item], input_items: Iterable[Item]) -> None:
    """OpenAI's rule: each ``function_call_output`` of this turn's input answers a function
    call before it, in the stored context or in the input. (A call left without an output is
    not refused: a stored conversation may hold one, and refusing it would refuse every turn
    after it. The model is not shown it: ``context_messages``.)"""
    calls: set[str] = set()
    for item in context:
        if item.get("type") == "function_call":
            calls.add(item["call_id"])
    for item in input_items:
        kind = item.get("type")
        if kind == "function_call":
            calls.add(item["call_id"])
        elif kind == "function_call_output" and item["call_id"] not in calls:
            raise InvalidRequestError(
                f"No tool call found for function call output with call_id {item['call_id']}.",
                param="input",
                code="invalid_value",
            )


def context_messages(instructions: str | None, items: Iterable[Item]) -> list[dict[str, Any]]:
    """The chat messages a model reads for ``instructions`` and a context of stored items.

    They keep OpenAI's rule for tool results (``requests.check_tool_turns``, which the chat
    service holds them to, as an upstream may): each run of calls is one assistant message
    followed at once by their results, in the calls' order. A call nobody answered is left
    out (nothing awaits its result), and so is a result whose call is not in the context
    (``truncation: auto`` may have dropped it).
    """
    items = list(items)
    outputs: dict[str, deque[Item]] = defaultdict(deque)  # each call id's results, in order
    for item in items:
        if item.get("type") == "function_call_output":
            outputs[item["call_id"]].append(item)
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "developer", "content": instructions})
    run: dict[str, dict[str, Any]] = {}  # the current run of calls by id
    for item in items:
        kind = item.get("type")
        # Reasoning items carry another model's hidden reasoning: nothing for ours to read.
        if kind in ("reasoning", "function_call_output"):
            continue
        if kind == "function_call":
            call_id = item["call_id"]
            if outputs.get(call_id) and call_id not in run:
                function = {"name": item["name"], "arguments": item["arguments"]}
                run[call_id] = {"id": call_id, "type": "function", "function": function}
            continue
        _end_run(messages, run, outputs)
        if kind == "message":
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
    _end_run(messages, run, outputs)
    return messages


def _end_run(
    messages: list[dict[str, Any]],
    run: dict[str, dict[str, Any]],
    outputs: dict[str, deque[Item]],
) -> None:
    """A run of calls as one assistant message, then each call's result; the run emptied."""
    if not run:
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": list(run.values())})
    for call_id in run:
        output = outputs[call_id].popleft()["output"]
        text = output if isinstance(output, str) else _chat_content(output)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
    run.clear()
