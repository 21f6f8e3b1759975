"""The messages between API workers and a model's engine process, and how they are framed.

Each message is a tagged msgspec struct, encoded as MessagePack and sent with a four-byte
big-endian length in front, over a Unix socket. Workers send :class:`Generate` and
:class:`Cancel`; the engine answers with :class:`Hello` on connect, then :class:`Text`,
:class:`Finished` or :class:`Failed` per request, and :class:`Stats` when its slots change.
A request's id is chosen by the worker and is unique on its connection only.
"""

from __future__ import annotations

import asyncio
import struct

import msgspec

__all__ = [
    "EXIT_ENGINE_FAILED",
    "MAX_FRAME_BYTES",
    "Cancel",
    "EngineMessage",
    "EngineSpec",
    "Failed",
    "Finished",
    "Generate",
    "GrammarSpec",
    "Hello",
    "Sampling",
    "Stats",
    "Text",
    "TokenLogprobWire",
    "TopLogprobWire",
    "WireError",
    "WorkerMessage",
    "encode",
    "read_frame",
]

#: The engine process's exit status when its decode loop failed (``EX_SOFTWARE``).
EXIT_ENGINE_FAILED = 70
#: Largest message either side accepts: a prompt under the HTTP body cap fits many times over.
MAX_FRAME_BYTES = 256 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class EngineSpec(msgspec.Struct, frozen=True):
    """Everything the engine process needs, handed over as JSON on its command line."""

    model_id: str
    path: str
    #: The model's ``LlamaCppConfig`` as JSON.
    config: str
    socket: str
    restarts: int
    log_level: str
    log_format: str
    log_file: str | None


class Sampling(msgspec.Struct, frozen=True):
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    logit_bias: dict[int, float]


class GrammarSpec(msgspec.Struct, frozen=True):
    """Structured output: ``json_object`` (any object), ``json_schema`` (``schema`` as JSON)
    or ``lark`` (``schema``: a grammar in llguidance's Lark, as tool calls use)."""

    kind: str
    schema: str
    #: The request parameter the grammar came from, named in its errors...
    param: str = "response_format"
    #: ... or, for an error in one rule of a ``lark`` grammar, the parameter that rule names.
    rule_params: dict[str, str] = {}


class Generate(msgspec.Struct, frozen=True, tag=True):
    id: int
    prompt: str
    add_special: bool
    parse_special: bool
    #: The client's limit on generated tokens; None: the model's default.
    max_tokens: int | None
    stops: list[str]
    #: Drop leading white space of the reply (a transcript prompt ends in "Assistant:").
    lstrip: bool
    sampling: Sampling
    grammar: GrammarSpec | None
    logprobs: bool
    top_logprobs: int
    request_id: str | None
    #: Only count the prompt's tokens: answered with ``Finished`` at once, nothing decoded.
    count_only: bool = False


class Cancel(msgspec.Struct, frozen=True, tag=True):
    id: int


class Hello(msgspec.Struct, frozen=True, tag=True):
    """What a worker needs to know about the model, sent once per connection."""

    model_id: str
    pid: int
    #: How many times this model's engine was restarted before this one.
    restarts: int
    n_vocab: int
    context_size: int
    parallel: int
    queue_size: int
    chat_template: str | None
    bos_token: str
    eos_token: str


class TopLogprobWire(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobWire(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprobWire]


class Text(msgspec.Struct, frozen=True, tag=True):
    id: int
    text: str
    logprobs: list[TokenLogprobWire] | None = None


class Finished(msgspec.Struct, frozen=True, tag=True):
    id: int
    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class WireError(msgspec.Struct, frozen=True):
    """A :class:`~chatbot_api.errors.ChatbotAPIError` as the engine raised it."""

    status: int
    type: str
    message: str
    param: str | None
    code: str | None
    headers: dict[str, str]


class Failed(msgspec.Struct, frozen=True, tag=True):
    id: int
    error: WireError


class Stats(msgspec.Struct, frozen=True, tag=True):
    slots_in_use: int
    queue_depth: int


WorkerMessage = Generate | Cancel
EngineMessage = Hello | Text | Finished | Failed | Stats

_encoder = msgspec.msgpack.Encoder()


def encode(message: WorkerMessage | EngineMessage) -> bytes:
    """One frame: the length, then the message."""
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body, or None when the other side closed the connection."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {length} bytes is larger than {MAX_FRAME_BYTES}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
