"""The provider interface: one async generator of events, plus ``aclose``.

A provider turns a :class:`GenerationRequest` into a stream of :class:`TextDelta`, then one
:class:`Finish` per choice, then a single :class:`Usage`. Providers that cannot produce several
choices in one call leave ``"n"`` out of ``supported_parameters``; the chat service then runs
``n`` independent generations and numbers the choices itself.

Optional members: ``async def start(self)``, awaited once before the first request (a
provider that must reach a process or service of its own); ``max_choices``, the most choices
one request can ever get from it (``n`` above that is refused with 400); and
``async def count_tokens(self, request) -> int``, the prompt's length in the model's own
tokens (``POST /v1/responses/input_tokens``; without it, four characters count as a token).

A provider that forwards chat completions to an OpenAI-compatible service may also be a
:class:`Relay`: the chat service then hands it the client's JSON body and passes the
service's answer on as bytes, instead of building it again from events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from chatbot_api.schemas.chat import ChatCompletionRequest

__all__ = [
    "Finish",
    "FinishReason",
    "GenerationEvent",
    "GenerationRequest",
    "PromptMessage",
    "PromptToolCall",
    "Provider",
    "Relay",
    "RelayedAnswer",
    "RelayedChunk",
    "RelayedStream",
    "TextDelta",
    "TokenLogprob",
    "ToolCallDelta",
    "TopLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class PromptToolCall:
    """A call an earlier assistant turn made: its id, function and arguments (as sent)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class PromptMessage:
    role: str
    text: str
    #: An assistant turn's tool calls.
    tool_calls: tuple[PromptToolCall, ...] = ()
    #: A tool result's call.
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate. ``request`` is the client's request, for providers that pass it on."""

    request: ChatCompletionRequest
    messages: tuple[PromptMessage, ...]
    max_tokens: int | None
    stop: tuple[str, ...]
    seed: int | None
    #: The HTTP request's id, for the provider's own log lines.
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log probability, and the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    index: int = 0
    #: Present when the request asked for ``logprobs`` and the provider supports them.
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as OpenAI streams it: ``call`` holds the call's own ``index``,
    on its first piece ``id``, ``type`` and ``function.name``, and ``function.arguments``
    in pieces. Passed on as the provider sent it."""

    call: dict[str, Any]
    index: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    index: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens served from a cache rather than computed; None: the provider keeps none.
    cached_tokens: int | None = None


GenerationEvent = TextDelta | ToolCallDelta | Finish | Usage


@runtime_checkable
class Provider(Protocol):
    """A backend that generates chat completions for one or more model ids."""

    #: Optional request parameters this provider honours (``tools``, ``response_format``,
    #: ``logprobs``, ``n``...). Any other optional parameter a client sets is refused with 400.
    supported_parameters: frozenset[str]

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the completion. Cancelling the iteration must stop the work promptly."""
        ...

    def problem(self) -> str | None:
        """Why the provider cannot serve right now (for ``/ready``), or None when it can."""
        ...

    async def aclose(self) -> None:
        """Release whatever the provider holds (threads, clients, model weights)."""
        ...


@dataclass(frozen=True, slots=True)
class RelayedAnswer:
    """A ``chat.completion`` as the upstream sent it: its bytes, and their parsed JSON."""

    #: The model that served it: the one asked for, or one of its fallbacks.
    model: str
    #: The deployment that answered, by name.
    deployment: str
    body: bytes
    document: dict[str, Any]


#: One ``data`` payload of an upstream stream, and its parsed JSON.
RelayedChunk = tuple[bytes, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RelayedStream:
    """A stream the upstream has begun: its first chunk arrived, none has been passed on."""

    model: str
    deployment: str
    #: Every chunk, the first included, up to the upstream's ``[DONE]``.
    chunks: AsyncGenerator[RelayedChunk, None]
    #: Ends the upstream call, whether or not ``chunks`` was ever iterated (a generator
    #: closed before its first step runs no ``finally``); safe to call more than once.
    aclose: Callable[[], Awaitable[None]]


@runtime_checkable
class Relay(Protocol):
    """A provider that forwards the client's chat-completion body (a JSON object, ``model``
    included) and answers with the upstream's own bytes. Every failure before the answer's
    first byte is raised as a :class:`~chatbot_api.errors.ChatbotAPIError`."""

    async def relay_answer(self, body: dict[str, Any]) -> RelayedAnswer: ...

    async def relay_stream(self, body: dict[str, Any]) -> RelayedStream: ...
