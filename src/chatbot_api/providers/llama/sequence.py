"""One request's generation inside the engine process, and the events it produces.

The engine process builds a :class:`Sequence` once the prompt is tokenised and its grammar (if
any) compiled; the decode thread owns it from then on. ``cancelled`` is the one field another
thread writes: the request's client went away, and the decode thread drops the sequence at its
next step.
"""

from __future__ import annotations

import codecs
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbot_api.errors import ChatbotAPIError
from chatbot_api.providers.base import FinishReason, TokenLogprob
from chatbot_api.providers.stop import StopMatcher

if TYPE_CHECKING:
    from chatbot_api.providers.llama.grammar import Constraint
    from chatbot_api.providers.llama.protocol import Sampling
    from chatbot_api.providers.llama.sampling import Penalties

__all__ = ["Done", "Emission", "Failure", "Sequence", "SequenceEvent"]


@dataclass(frozen=True, slots=True)
class Emission:
    text: str
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True, slots=True)
class Done:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens whose KV cells an earlier sequence left (not prefilled again).
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Failure:
    error: ChatbotAPIError


SequenceEvent = Emission | Done | Failure


@dataclass(eq=False)
class Sequence:
    #: The requesting connection's own id for it, and the connection (opaque to the engine).
    id: int
    owner: object
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    stops: tuple[str, ...]
    request_id: str | None = None
    #: Drop leading white space of the reply (a transcript prompt ends in "Assistant:").
    lstrip: bool = False
    constraint: Constraint | None = None
    #: Return each token's log probability, with this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0

    cancelled: bool = False

    # Decode-thread state from here on.
    seq_id: int = -1
    prefilled: int = 0
    #: Prompt tokens reused from the slot's cells rather than prefilled.
    cached: int = 0
    n_past: int = 0
    generated: int = 0
    last_token: int = -1
    sampler: object = None
    #: The repeat, frequency and presence penalties, applied outside the chain.
    penalties: Penalties | None = None
    #: The grammar taking the last sampled token and preparing its next mask, in a worker.
    stepping: Future[None] | None = None
    matcher: StopMatcher = field(init=False)
    decoder: codecs.IncrementalDecoder = field(init=False)
    held_logprobs: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.matcher = StopMatcher(self.stops)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def prompt_done(self) -> bool:
        return self.prefilled >= len(self.prompt)

    @property
    def ready_to_decode(self) -> bool:
        """Its prompt is in and its grammar (if any) knows which tokens may come next."""
        return self.prompt_done and self.stepping is None
