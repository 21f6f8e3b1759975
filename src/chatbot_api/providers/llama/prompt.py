"""From chat messages to the prompt a model reads, and the strings that end its turn.

``template`` renders the chat template embedded in the GGUF (Jinja, as llama.cpp's own server
does). ``transcript`` writes a plain conversation, which suits base models with no template,
such as the bundled Gemma 3 270M: in our trials it answered short questions sensibly this
way and produced nonsense with Gemma's turn markers (see README, "The bundled model").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from chatbot_api.providers.base import PromptMessage

__all__ = ["Prompt", "TemplatePrompter", "TranscriptPrompter"]

_SPEAKERS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}
DEFAULT_PREAMBLE = "The following is a conversation with a helpful assistant."


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


class TemplatePrompter:
    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos_token, bos_token=bos_token
        )

    def __call__(self, messages: Sequence[PromptMessage]) -> Prompt:
        rendered = self._formatter(
            messages=[{"role": m.role, "content": m.text} for m in messages]  # type: ignore[misc]  # llama_cpp's TypedDicts
        )
        stops = tuple(rendered.stop) if isinstance(rendered.stop, list) else (rendered.stop,)
        return Prompt(
            rendered.prompt,
            tuple(s for s in stops if s),
            parse_special=True,
            add_special=False,
            lstrip=False,
        )
