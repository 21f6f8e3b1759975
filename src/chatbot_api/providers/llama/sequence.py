"""One request's generation, shared between the engine thread and the request's coroutine.

The engine appends events to ``out`` and wakes the coroutine through its event loop; the
coroutine sets ``cancelled`` when its client goes away, and the engine drops the sequence at
its next step. ``out`` is bounded in effect: the engine skips a sequence whose backlog is full,
so a slow reader holds back only its own sequence, never the batch.
"""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbot_api.providers.base import FinishReason, TokenLogprob
from chatbot_api.providers.stop import StopMatcher

if TYPE_CHECKING:
    from chatbot_api.providers.llama.sampling import SamplingParams

__all__ = ["Done", "Emission", "Failure", "Sequence"]

#: Events a sequence may hold unread before the engine stops decoding it.
BACKLOG = 64


@dataclass(frozen=True, slots=True)
class Emission:
    text: str
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True, slots=True)
class Done:
    reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failure:
    error: Exception


SequenceEvent = Emission | Done | Failure


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stops: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    #: Drop leading white space of the reply (a transcript prompt ends in "Assistant:").
    lstrip: bool = False

    out: deque[SequenceEvent] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False

    # Engine-thread state from here on.
    seq_id: int = -1
    prefilled: int = 0
    n_past: int = 0
    generated: int = 0
    last_token: int = -1
    sampler: object = None
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
    def backlogged(self) -> bool:
        return len(self.out) >= BACKLOG

    def push(self, event: SequenceEvent) -> None:
        """Engine thread: hand an event over and wake the reader."""
        self.out.append(event)
        try:
            self.loop.call_soon_threadsafe(self.wakeup.set)
        except RuntimeError:  # the reader's loop is gone; nobody is listening
            self.cancelled = True

    async def next_event(self) -> SequenceEvent:
        """Request coroutine: the next event, waiting for the engine if there is none yet."""
        while not self.out:
            self.wakeup.clear()
            if self.out:
                break
            await self.wakeup.wait()
        return self.out.popleft()
