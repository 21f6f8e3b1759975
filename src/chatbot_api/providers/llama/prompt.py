"""From chat messages to the prompt a model reads, and the strings that end its turn.

``template`` renders the chat template embedded in the GGUF (Jinja in a sandbox, with the
helpers Hugging Face's chat templates expect, as llama.cpp's own server does). ``transcript``
writes a plain conversation, which suits base models with no template, such as the bundled
Gemma 3 270M: in our trials it answered short questions sensibly this way and produced
nonsense with Gemma's turn markers (see README, "The bundled model").

This runs in the API worker, which never loads llama.cpp itself: the engine process does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2.ext
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbot_api.providers.base import PromptMessage, PromptToolCall

__all__ = ["Prompt", "TemplatePrompter", "TemplateRefusedError", "TranscriptPrompter"]

_SPEAKERS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}
DEFAULT_PREAMBLE = "The following is a conversation with a helpful assistant."


class TemplateRefusedError(TemplateError):
    """The chat template itself refused the messages (its ``raise_exception``)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    stops: tuple[str, ...]
    #: The template carries its own special tokens (BOS, turn markers) as text.
    parse_special: bool
    add_special: bool
    lstrip: bool


class TranscriptPrompter:
    """``<system text>\\n\\nUser: ...\\nAssistant: ...\\nUser: ...\\nAssistant:``."""

    stops = ("\nUser:", "\nAssistant:", "\n\n")

    def __call__(self, messages: Sequence[PromptMessage]) -> Prompt:
        preamble = [m.text for m in messages if m.role in ("system", "developer") and m.text]
        lines = [
            f"{_SPEAKERS[m.role]}: {m.text.strip()}"
            for m in messages
            if m.role not in ("system", "developer")
        ]
        head = "\n".join(preamble) if preamble else DEFAULT_PREAMBLE
        text = head + "\n\n" + "\n".join([*lines, "Assistant:"])
        return Prompt(text, self.stops, parse_special=False, add_special=True, lstrip=True)


def _to_json(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as Hugging Face's chat templates expect it (not HTML-escaped)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise TemplateRefusedError(message)


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


_PROBE_TOOL = "probe_tool_8c41"
_PROBE_CALL = "probe_call_2f7d"
_PROBE_RESULT = "probe_result_93ab"


def _arguments(text: str) -> Any:
    """A call's arguments as Hugging Face's templates take them: an object when they are
    one, else the text as the client sent it."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
        return text
    return value if isinstance(value, dict) else text


def _template_message(message: PromptMessage) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": message.role, "content": message.text}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


class TemplatePrompter:
    """Renders a GGUF's chat template; a template that does not compile stops start-up."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        environment.filters["tojson"] = _to_json
        self._template = environment.from_string(template)
        self._bos = bos_token
        self._eos = eos_token

        self.renders_tools = self._renders_tools()

    def _renders_tools(self) -> bool:
        """Whether the template writes tools, calls and results itself, calls in the Hermes
        syntax (``<tool_call>``) that :mod:`.tools` reads back: rendered once with a probe."""
        tool = {"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {}}}
        call = PromptToolCall("call_probe", _PROBE_CALL, "{}")
        history = [
            PromptMessage("user", "?"),
            PromptMessage("assistant", "", tool_calls=(call,)),
            PromptMessage("tool", _PROBE_RESULT, tool_call_id="call_probe"),
        ]
        try:
            offered = self._render([PromptMessage("user", "?")], [tool])
            answered = self._render(history, [tool])
        except Exception:
            return False
        return (
            _PROBE_TOOL in offered
            and "<tool_call>" in offered
            and _PROBE_CALL in answered
            and _PROBE_RESULT in answered
        )

    def _render(self, messages: Sequence[PromptMessage], tools: list[dict[str, Any]] | None) -> str:
        return self._template.render(
            messages=[_template_message(m) for m in messages],
            tools=tools,
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
        )

    def __call__(
        self, messages: Sequence[PromptMessage], tools: list[dict[str, Any]] | None = None
    ) -> Prompt:
        """Raises :class:`jinja2.TemplateError` when the template cannot render ``messages``.
        ``tools`` only for a template that :attr:`renders_tools`."""
        text = self._render(messages, tools)
        return Prompt(
            text,
            (self._eos,) if self._eos else (),
            parse_special=True,
            add_special=False,
            lstrip=False,
        )
