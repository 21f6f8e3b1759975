"""Tool calls on local models: the tools in the prompt, a grammar for the calls, calls read back.

Every call is written the same way, whatever the model, in the Hermes syntax: one block per
call, ``<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>``,
blocks separated by a newline. A chat template that renders tools in that syntax itself is
given the tools, the earlier calls and the tool results as Hugging Face's templates take them
(``TemplatePrompter.renders_tools``). For any other template the prompt describes the tools and
the syntax in the system message (a generic instruction, as llama.cpp's server uses for
templates whose tool syntax it does not know); earlier calls are written back in the same
syntax and tool results as ``<tool_response>`` blocks in a user turn, so that any template
can render them.

The grammar (llguidance's Lark, with each function's ``parameters`` inlined as a JSON schema)
lets the model write only a known function's name and arguments that validate against its
schema. Under ``auto`` the reply is either such calls or an ordinary answer that does not
begin with ``<tool_call>``; ``required`` and a named function allow calls only.
:class:`ToolCallReader` turns the text the grammar produced back into OpenAI's tool-call
deltas as it streams.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Any, Literal

from chatbot_api.errors import InvalidRequestError, UnsupportedParameterError
from chatbot_api.ids import new_id
from chatbot_api.providers.base import PromptMessage, TextDelta, TokenLogprob, ToolCallDelta
from chatbot_api.providers.llama.structured import (
    JSON_OPTIONS,
    MAX_SCHEMA_BYTES,
    compact_schema,
    schema_error,
)
from chatbot_api.schemas.chat import ChatCompletionRequest

__all__ = [
    "MAX_TOOLS",
    "ToolCallReader",
    "ToolPlan",
    "plan_tools",
    "prompt_messages",
    "template_tools",
]

#: OpenAI's own limit on ``tools``.
MAX_TOOLS = 128
#: OpenAI's rule for a function's name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"
#: What the grammar writes before a call's name, between name and arguments, and after them:
#: the Hermes syntax (Qwen 2.5 and 3, Hermes, SmolLM3), so that templates written for it
#: render calls the way the model writes them.
_BEFORE_NAME = _OPEN + '\n{"name": "'
_BEFORE_ARGUMENTS = '", "arguments": '
_AFTER_ARGUMENTS = "}\n" + _CLOSE
#: Between two calls of one reply.
_BETWEEN = "\n"
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Function:
    #: Its place in the request's ``tools``.
    index: int
    name: str
    description: str | None
    parameters: dict[str, Any]
    #: ``parameters`` as the grammar inlines them (compact JSON, with llguidance's options).
    schema: str

    def described(self) -> dict[str, Any]:
        """The function as the model is told of it: name, description, parameters."""
        described: dict[str, Any] = {"name": self.name}
        if self.description:
            described["description"] = self.description
        described["parameters"] = self.parameters
        return described


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The functions offered for this reply and what the reply may be."""

    functions: tuple[Function, ...]
    #: ``auto``: an answer or calls; ``required``: calls only (of ``functions``, which a
    #: named ``tool_choice`` narrows to that function).
    choice: Literal["auto", "required"]
    parallel: bool
    #: The function a named ``tool_choice`` asked for.
    named: str | None = None

    def instruction(self) -> str:
        """What the system message says of the tools and how to call them."""
        listing = "\n".join(json.dumps(f.described(), ensure_ascii=False) for f in self.functions)
        example = _written_call("function name", '{"argument": "value"}')
        how = (
            f"To call a function, reply with a {_OPEN}{_CLOSE} block holding a JSON object "
            f"with the function's name and arguments:\n{example}"
        )
        if self.parallel:
            how += "\nTo call several functions, write one block per call, one per line."
        if self.named is not None:
            when = f"Call the function {self.named} now."
        elif self.choice == "required":
            when = "Call one of these functions now."
        else:
            when = "If none of them helps, answer the user directly instead."
        return (
            "You can call functions to help you answer. The functions, each with a JSON "
            f"schema of its arguments:\n<tools>\n{listing}\n</tools>\n\n{how}\n{when}"
        )

    def rule_params(self) -> dict[str, str]:
        """Which parameter each function's rule in :meth:`grammar` comes from, for errors."""
        return {
            f"fn_{i}": f"tools[{f.index}].function.parameters" for i, f in enumerate(self.functions)
        }

    def grammar(self, answer_schema: dict[str, Any] | None) -> str:
        """The reply's grammar in llguidance's Lark. ``answer_schema``: the JSON schema an
        answer (under ``auto``) must follow, from ``response_format``; None: free text."""
        rules = [
            f"fn_{i}: {json.dumps(_BEFORE_NAME + f.name + _BEFORE_ARGUMENTS)} "
            f"%json {f.schema} {json.dumps(_AFTER_ARGUMENTS)}"
            for i, f in enumerate(self.functions)
        ]
        call = " | ".join(f"fn_{i}" for i in range(len(self.functions)))
        calls = f"call ({json.dumps(_BETWEEN)} call)*" if self.parallel else "call"
        lines = [f"calls: {calls}", f"call: {call}", *rules]
        if self.choice == "required":
            return "\n".join(["start: calls", *lines])
        if answer_schema is None:
            # Any text that does not begin a call (a lexeme may not be empty, hence the "?").
            answer = ["answer: TEXT?", f"TEXT: /(.|\\n)+/ & ~/{re.escape(_OPEN)}(.|\\n)*/"]
        else:
            schema = _with_options(answer_schema, "response_format", layout_ours=False)
            answer = [f"answer: %json {schema}"]
        return "\n".join(["start: answer | calls", *answer, *lines])


#: ``x-guidance`` keys that change how JSON is written: in a call's arguments, ours hold,
#: since the reader finds where the arguments end by their syntax.
_LAYOUT = frozenset(
    {"whitespace_flexible", "whitespace_pattern", "item_separator", "key_separator"}
)


def _with_options(schema: dict[str, Any], param: str, *, layout_ours: bool = True) -> str:
    """``schema`` as compact JSON, written with the same options as ``response_format``'s.
    A schema's own ``x-guidance`` wins, except (``layout_ours``) on where white space and
    separators go."""
    given = schema.get("x-guidance")
    own = dict(given) if isinstance(given, dict) else {}
    if layout_ours:
        own = {k: v for k, v in own.items() if k not in _LAYOUT}
    options = {**JSON_OPTIONS, **own}
    return compact_schema({**schema, "x-guidance": options}, param)


def _invalid(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="invalid_value")


def _function(i: int, tool: Any) -> Function:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise UnsupportedParameterError(
            f"Unsupported tool type: {kind!r}; local models take 'function' tools only.",
            param=f"tools[{i}].type",
        )
    spec = tool.get("function")
    if not isinstance(spec, dict):
        raise _invalid("Missing required parameter: 'function'.", f"tools[{i}].function")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _invalid(
            "Invalid 'name': a function's name is 1 to 64 letters, digits, '_' or '-'.",
            f"tools[{i}].function.name",
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(
            "Invalid 'description': expected a string.", f"tools[{i}].function.description"
        )
    parameters = spec.get("parameters")
    where = f"tools[{i}].function.parameters"
    if parameters is None:
        parameters = _NO_PARAMETERS
    elif not isinstance(parameters, dict):
        raise _invalid("Invalid 'parameters': expected a JSON schema object.", where)
    # Arguments are a JSON object, as OpenAI has them: a schema that names no type gets it.
    kind = parameters.get("type", "object")
    if kind != "object":
        raise schema_error(f"a function's parameters must be of type 'object', not {kind!r}", where)
    parameters = {**parameters, "type": "object"}
    return Function(i, name, description, parameters, _with_options(parameters, where))


def plan_tools(request: ChatCompletionRequest) -> ToolPlan | None:
    """The tools this request offers and how they may be used; None when the reply is plain
    text (no tools, or ``tool_choice: "none"``). Raises 400 for a tool or a choice that is not
    OpenAI's."""
    if not request.tools:
        return None
    if len(request.tools) > MAX_TOOLS:
        raise _invalid(f"Too many tools: at most {MAX_TOOLS} can be given.", "tools")
    functions = tuple(_function(i, tool) for i, tool in enumerate(request.tools))
    if sum(len(f.schema) for f in functions) > MAX_SCHEMA_BYTES:
        raise schema_error(f"the tools' schemas are larger than {MAX_SCHEMA_BYTES} bytes", "tools")
    seen: set[str] = set()
    for f in functions:
        if f.name in seen:
            raise _invalid(
                f"Duplicate function name {f.name!r}: each tool needs a name of its own.",
                f"tools[{f.index}].function.name",
            )
        seen.add(f.name)
    choice = request.tool_choice if request.tool_choice is not None else "auto"
    parallel = request.parallel_tool_calls is not False
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(functions, choice, parallel)  # type: ignore[arg-type]  # narrowed above
    named = _named(choice)
    if named is None:
        raise _invalid(
            "Invalid value for 'tool_choice': use 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}.",
            "tool_choice",
        )
    chosen = tuple(f for f in functions if f.name == named)
    if not chosen:
        raise _invalid(
            f"Invalid value for 'tool_choice': no function named {named!r} is in 'tools'.",
            "tool_choice",
        )
    return ToolPlan(chosen, "required", parallel=False, named=named)


def _named(choice: object) -> str | None:
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _written_call(name: str, arguments: str) -> str:
    """A call as the model writes one, its arguments as the client sent them back."""
    return f"{_BEFORE_NAME}{name}{_BEFORE_ARGUMENTS}{arguments}{_AFTER_ARGUMENTS}"


def template_tools(plan: ToolPlan | None) -> list[dict[str, Any]] | None:
    """The tools as a chat template that renders them takes them (OpenAI's shape)."""
    if plan is None:
        return None
    return [{"type": "function", "function": f.described()} for f in plan.functions]


def prompt_messages(
    messages: Sequence[PromptMessage], plan: ToolPlan | None
) -> list[PromptMessage]:
    """``messages`` as any chat template can render them: the tools described in the system
    message, earlier calls written in the call syntax, tool results as a user turn."""
    out: list[PromptMessage] = []
    for is_result, run in groupby(messages, key=lambda m: m.role in ("tool", "function")):
        if is_result:
            # The results of one turn's calls, together in one user turn (joined once: a
            # request may hold thousands of them).
            blocks = (f"<tool_response>\n{m.text}\n</tool_response>" for m in run)
            out.append(PromptMessage("user", "\n".join(blocks)))
            continue
        for message in run:
            if message.tool_calls:
                calls = _BETWEEN.join(
                    _written_call(c.name, c.arguments) for c in message.tool_calls
                )
                text = f"{message.text}\n{calls}" if message.text else calls
                out.append(PromptMessage(message.role, text))
            else:
                out.append(message)
    if plan is None:
        return out
    instruction = plan.instruction()
    if out and out[0].role in ("system", "developer"):
        out[0] = replace(out[0], text=f"{out[0].text}\n\n{instruction}")
    else:
        out.insert(0, PromptMessage("system", instruction))
    return out


class _Arguments:
    """Where a call's JSON arguments end: the object's closing brace, outside strings."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def take(self, text: str) -> int:
        """How many characters of ``text`` belong to the arguments (all, unless they end)."""
        for i, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return len(text)


class ToolCallReader:
    """The reply's text, as the grammar let the model write it, into text and tool-call
    deltas. Under ``auto`` the first characters decide: a reply that begins ``<tool_call>``
    is calls, any other is an answer, passed on as it comes."""

    def __init__(self, plan: ToolPlan) -> None:
        self._undecided = plan.choice == "auto"
        self._held = ""
        self._held_logprobs: list[TokenLogprob] = []
        #: Characters of the call syntax still to pass over before the next part.
        self._skip = len(_BEFORE_NAME)
        self._name: list[str] | None = []
        self._arguments: _Arguments | None = None
        self.calls = 0
        self._closed = 0

    @property
    def finished_calls(self) -> bool:
        """The reply is calls, and none was cut off (by a stop string or the length limit)."""
        return self.calls > 0 and self._closed == self.calls

    def feed(
        self, text: str, logprobs: tuple[TokenLogprob, ...] | None = None
    ) -> list[TextDelta | ToolCallDelta]:
        """The events for the reply's next ``text``; an answer's keep their ``logprobs``
        (calls have none, as OpenAI's have none)."""
        if self._undecided:
            self._held += text
            if logprobs:
                self._held_logprobs.extend(logprobs)
            if _OPEN.startswith(self._held) and len(self._held) < len(_OPEN):
                return []
            self._undecided = False
            text, self._held = self._held, ""
            if logprobs is not None:
                logprobs, self._held_logprobs = tuple(self._held_logprobs), []
            if not text.startswith(_OPEN):
                self._skip = -1  # an answer, from here to the end
        if self._skip < 0:
            return [TextDelta(text, logprobs=logprobs)] if text else []
        return self._calls(text)

    def end(self) -> list[TextDelta]:
        """What was held back when the reply ended (a short answer that began like a call)."""
        held, self._held = self._held, ""
        logprobs, self._held_logprobs = tuple(self._held_logprobs), []
        return [TextDelta(held, logprobs=logprobs or None)] if held else []

    def _calls(self, text: str) -> list[TextDelta | ToolCallDelta]:
        events: list[TextDelta | ToolCallDelta] = []
        while text:
            if self._skip:
                passed = min(self._skip, len(text))
                self._skip -= passed
                text = text[passed:]
            elif self._name is not None:
                end = text.find('"')
                self._name.append(text if end < 0 else text[:end])
                if end < 0:
                    break
                events.append(self._begin("".join(self._name)))
                self._name = None
                self._arguments = _Arguments()
                self._skip = len(_BEFORE_ARGUMENTS)
                text = text[end:]
            else:
                assert self._arguments is not None  # the state after a name
                taken = self._arguments.take(text)
                events.append(self._piece(text[:taken]))
                text = text[taken:]
                if self._arguments.depth == 0:
                    self._closed += 1
                    self._arguments = None
                    self._name = []
                    self._skip = len(_AFTER_ARGUMENTS) + len(_BETWEEN) + len(_BEFORE_NAME)
        return events

    def _begin(self, name: str) -> ToolCallDelta:
        call = {
            "index": self.calls,
            "id": new_id("call"),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        self.calls += 1
        return ToolCallDelta(call)

    def _piece(self, arguments: str) -> ToolCallDelta:
        return ToolCallDelta({"index": self.calls - 1, "function": {"arguments": arguments}})
