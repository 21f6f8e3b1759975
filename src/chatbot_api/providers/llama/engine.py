"""The continuous-batching engine: one loaded model, one decode thread, many sequences.

It runs inside the model's engine process (``providers.llama.server``). Each step the decode
thread builds one llama.cpp batch holding the next token of every decoding sequence (one
sequence id each) plus as much pending prompt as fits, decodes it once, and samples every
sequence that produced logits with that sequence's own sampler chain, after its grammar (if
any) has barred the tokens it does not allow. New sequences join between steps; finished and
cancelled ones leave. The events of a step are handed over together.

Prefix reuse (``cache_prompt``, as llama.cpp's server calls it): a sequence that leaves keeps
its KV cells in its slot while the slot is idle. A new sequence whose prompt continues what an
idle slot holds (a conversation's next turn repeats the whole conversation so far) takes that
slot and prefills only what is new; any other takes the least recently used slot, and the
longest prefix any idle slot shares with it (a system prompt) is shared into it, cell for cell,
rather than computed again. ``usage.prompt_tokens_details.cached_tokens`` reports what was reused.

A failure that belongs to one sequence (its grammar, its sampling) fails that sequence alone;
a failure of the loop itself fails every sequence and is reported to the process, which exits
so that its supervisor starts a fresh engine.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from chatbot_api.errors import ChatbotAPIError, ServerOverloadedError, as_api_error
from chatbot_api.providers.base import FinishReason
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.native_log import loading_quietly, route_native_logs
from chatbot_api.providers.llama.sampling import (
    Penalties,
    build_sampler,
    token_logprob,
    token_piece,
)
from chatbot_api.providers.llama.sequence import Done, Emission, Failure, Sequence, SequenceEvent

__all__ = ["Engine", "EventSink"]

logger = logging.getLogger(__name__)

#: Receives the events of one decode step, in order, on the decode thread.
EventSink = Callable[[list[tuple[Sequence, SequenceEvent]]], None]
#: Receives the number of sequences decoding and waiting whenever they change.
StatsSink = Callable[[int, int], None]
#: How long the decode thread sleeps when every sequence waits on its grammar (it is woken as
#: soon as one is ready; this only bounds a missed wake-up).
_IDLE_WAIT_SECONDS = 0.05
#: How long a step waits for the grammars of the last step to prepare their next masks (most
#: take well under a millisecond). A grammar slower than this misses the step, and holds
#: back its own sequence only.
_GRAMMAR_WAIT_SECONDS = 0.005


@dataclass(slots=True)
class _Slot:
    """One sequence id of the KV cache, and the tokens its cells hold, position by position."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    #: When a sequence last left it (a step count): the least recent is evicted first.
    used: int = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


#: Tokens a slot may hold past the prompt that continues it and still be taken by it: what a
#: reply generated but its client did not send back (a stop string, a last token re-split).
_TAIL = 32
#: The shortest prefix kept or shared from another slot. Every prompt starts with a few tokens in
#: common (the first token, a role marker); sharing those saves nothing, and a prompt computed
#: in two pieces rounds differently from one computed whole (docs/benchmarks.md), so a short
#: unrelated prompt is computed as it would be on a fresh server.
_SHARED_AT_LEAST = 16


def _shutting_down() -> ServerOverloadedError:
    return ServerOverloadedError("The model is shutting down.", headers={"Retry-After": "1"})


class Engine:
    def __init__(
        self,
        model_id: str,
        path: Path,
        config: LlamaCppConfig,
        *,
        on_events: EventSink,
        on_stats: StatsSink,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        route_native_logs()
        llama_cpp.llama_backend_init()
        self.model_id = model_id
        self.config = config
        self.context_size = config.context_size
        self._on_events = on_events
        self._on_stats = on_stats
        self._on_fatal = on_fatal
        model_params = llama_cpp.llama_model_default_params()
        with loading_quietly():
            self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the model file {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_swa = llama_cpp.llama_model_n_swa(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.context_size * config.parallel
        params.n_batch = config.batch_size
        params.n_ubatch = config.batch_size
        params.n_seq_max = config.parallel
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        # One pool of cells for every sequence: a prefix shared by several (a system prompt)
        # is held once, its cells tagged with each sequence's id (``_take_slot``).
        params.kv_unified = True
        # Sliding-window layers (Gemma 3's) otherwise keep only the last window of each
        # sequence, and a kept prefix longer than that could not be extended.
        params.swa_full = config.cache_prompt
        params.no_perf = True
        with loading_quietly():
            self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:  # pragma: no cover - memory llama.cpp cannot get: tens of seconds to see
            llama_cpp.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(config.batch_size, 0, 1)

        self._lock = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        #: Requests admitted but still being prepared (tokenised, grammar compiled).
        self._preparing = 0
        self._idle = [_Slot(seq_id) for seq_id in range(config.parallel)]
        self._slots: dict[int, _Slot] = {}
        self._clock = 0
        self._closing = False
        self._outbox: list[tuple[Sequence, SequenceEvent]] = []
        self._stats = (0, 0)
        #: Grammars take each sampled token and prepare their next mask here.
        self._steps = ThreadPoolExecutor(2, thread_name_prefix="grammar-step")
        self._fresh_steps: list[Future[None]] = []
        self._thread = threading.Thread(target=self._run, name=f"llama:{model_id}", daemon=True)
        self._thread.start()

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Thread-safe: it reads only the vocabulary."""
        data = text.encode("utf-8")
        size = len(data) + 2
        tokens = (llama_cpp.llama_token * size)()
        count = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, size, add_special, parse_special
        )
        if count < 0:  # pragma: no cover - a token per byte plus specials always fits
            raise RuntimeError("tokenizer buffer too small")
        return list(tokens[:count])

    def chat_template(self) -> str | None:
        """The chat template embedded in the GGUF file, if it has one."""
        template = llama_cpp.llama_model_chat_template(self._model, None)
        return template.decode("utf-8") if template else None

    def token_text(self, token: int) -> str:
        return token_piece(self.vocab, token).decode("utf-8", errors="replace")

    # -- requests -------------------------------------------------------------------------

    def reserve(self) -> None:
        """Hold a place for a request about to be prepared; 503 at once when there is none.

        Every request holds a place from here until it ends: a decoding slot or one of
        ``queue_size`` places in line.
        """
        with self._lock:
            if self._closing:
                raise _shutting_down()
            held = len(self._active) + len(self._waiting) + self._preparing
            if held >= self.config.parallel + self.config.queue_size:
                raise ServerOverloadedError(
                    f"Model '{self.model_id}' is busy: every sequence and queue place is taken. "
                    "Please retry shortly.",
                    headers={"Retry-After": "1"},
                )
            self._preparing += 1

    def unreserve(self) -> None:
        """Give back a place whose request failed or left before it was submitted."""
        with self._lock:
            self._preparing -= 1

    def submit(self, sequence: Sequence) -> None:
        """Queue a prepared sequence in the place :meth:`reserve` held for it (before
        :meth:`close`: a sequence submitted after it is never decoded)."""
        with self._lock:
            self._preparing -= 1
            self._waiting.append(sequence)
            self._lock.notify()

    def wake(self) -> None:
        """Have the decode thread look again now (a cancellation, a grammar step done)."""
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        self._steps.shutdown(wait=True, cancel_futures=True)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    # -- the decode thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._admit():
                self._step()
                self._flush()
        except BaseException as exc:
            logger.exception("the decode loop of %s failed", self.model_id)
            try:
                self._fail_all(
                    ServerOverloadedError(
                        f"The engine of model '{self.model_id}' failed; it is being restarted. "
                        "Please retry shortly.",
                        headers={"Retry-After": "1"},
                    )
                )
            finally:
                self._on_fatal(exc)
        else:
            self._fail_all(_shutting_down())

    def _fail_all(self, error: ChatbotAPIError) -> None:
        with self._lock:
            leftovers = [*self._active, *self._waiting]
            self._active.clear()
            self._waiting.clear()
        self._outbox.extend((sequence, Failure(error)) for sequence in leftovers)
        self._flush()

    def _flush(self) -> None:
        if self._outbox:
            events, self._outbox = self._outbox, []
            self._on_events(events)
        stats = (len(self._active), len(self._waiting))
        if stats != self._stats:
            self._stats = stats
            self._on_stats(*stats)

    def _admit(self) -> bool:
        """Move waiting sequences into free slots; sleep while there is nothing to do."""
        with self._lock:
            while not self._closing and not self._waiting and not self._active:
                self._lock.wait()
            if self._closing:
                return False
            while self._waiting and self._idle:
                sequence = self._waiting.popleft()
                if sequence.cancelled:
                    continue
                self._take_slot(sequence)
                sequence.sampler = build_sampler(self.n_vocab, sequence.sampling)
                sequence.penalties = Penalties.of(sequence.sampling)
                self._active.append(sequence)
            return True

    def _take_slot(self, sequence: Sequence) -> None:
        """Give ``sequence`` a slot, with the longest prefix of its prompt any idle slot holds.

        A prompt that continues what an idle slot holds (the next turn of its conversation;
        a reply that ended in a stop string leaves up to :data:`_TAIL` tokens behind) takes
        that slot. Any other takes the least recently used slot, and when another idle slot
        shares a prefix with it (a system prompt, the same prompt again) that prefix's cells
        are shared into it, not computed again: in the unified cache a cell holds every
        sequence id that uses it. No slot's cells are lost but the least recently used one's.
        """
        prompt = sequence.prompt
        target = min(self._idle, key=lambda idle: idle.used)
        keep = 0
        if self.config.cache_prompt:
            best, common = max(
                ((idle, _common_prefix(idle.tokens, prompt)) for idle in self._idle),
                key=lambda found: found[1],
            )
            if common < _SHARED_AT_LEAST:
                common = 0  # a role marker or two: not worth a prompt computed in pieces
            elif common >= len(best.tokens) - _TAIL:
                target = best
            # The last prompt token is always decoded again: its logits give the first token.
            keep = min(common, len(prompt) - 1)
            if not self._intact(best, keep):
                keep = 0
            elif target is not best and keep > 0:
                llama_cpp.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
                llama_cpp.llama_memory_seq_cp(self._memory, best.seq_id, target.seq_id, 0, keep)
                target.tokens[:] = best.tokens[:keep]
        if keep <= 0 or not llama_cpp.llama_memory_seq_rm(self._memory, target.seq_id, keep, -1):
            keep = 0
            llama_cpp.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
        del target.tokens[keep:]
        self._idle.remove(target)
        self._slots[target.seq_id] = target
        sequence.seq_id = target.seq_id
        sequence.prefilled = sequence.n_past = sequence.cached = keep

    def _intact(self, slot: _Slot, keep: int) -> bool:
        """Whether the cells the first ``keep`` tokens need are still there. A sliding-window
        layer (Gemma 3's) only looks ``n_swa`` tokens back, and llama.cpp gives cells that no
        window of their sequence reaches any more to other sequences: a kept prefix is only
        whole if its sequence still holds every position its last window needs."""
        lowest = int(llama_cpp.llama_memory_seq_pos_min(self._memory, slot.seq_id))
        return 0 <= lowest <= max(0, keep - int(self._n_swa))

    def _step(self) -> None:
        for sequence in [s for s in self._active if s.cancelled]:
            logger.info(
                "sequence cancelled",
                extra={
                    "model": self.model_id,
                    "completion_tokens": sequence.generated,
                    "request_id": sequence.request_id,
                },
            )
            self._release(sequence)
        if self._fresh_steps:
            wait(self._fresh_steps, timeout=_GRAMMAR_WAIT_SECONDS)
            self._fresh_steps.clear()
        for sequence in [s for s in self._active if s.stepping is not None and s.stepping.done()]:
            self._grammar_stepped(sequence)

        batch = self._batch
        batch.n_tokens = 0
        to_sample: list[tuple[Sequence, int]] = []
        in_batch: list[Sequence] = []
        room = self.config.batch_size
        for sequence in self._active:
            if sequence.ready_to_decode and room > 0:
                self._add(sequence.last_token, sequence, logits=True)
                to_sample.append((sequence, batch.n_tokens - 1))
                in_batch.append(sequence)
                room -= 1
        for sequence in self._active:
            if room <= 0:
                break
            if not sequence.prompt_done:
                chunk = sequence.prompt[sequence.prefilled : sequence.prefilled + room]
                sequence.prefilled += len(chunk)
                for position, token in enumerate(chunk):
                    last = sequence.prompt_done and position == len(chunk) - 1
                    self._add(token, sequence, logits=last)
                room -= len(chunk)
                in_batch.append(sequence)
                if sequence.prompt_done:
                    to_sample.append((sequence, batch.n_tokens - 1))

        if batch.n_tokens == 0:
            # Every sequence waits on its grammar: sleep until one is ready.
            with self._lock:
                self._lock.wait(_IDLE_WAIT_SECONDS)
            return
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            # The KV cache is sized so that every slot's context fits; should llama.cpp refuse
            # anyway, the sequences of this batch fail and the others carry on.
            error = ServerOverloadedError(
                f"Model '{self.model_id}' could not decode (llama.cpp status {status}); "
                "please retry.",
                headers={"Retry-After": "1"},
            )
            for sequence in in_batch:
                self._fail(sequence, error, forget=True)
            return
        for sequence, index in to_sample:
            try:
                self._sample(sequence, index)
            except Exception as exc:  # this sequence's own failure: the others go on
                self._fail(sequence, as_api_error(exc, sequence.request_id))

    def _grammar_stepped(self, sequence: Sequence) -> None:
        stepping, sequence.stepping = sequence.stepping, None
        assert stepping is not None
        assert sequence.constraint is not None
        error = stepping.exception()
        if error is not None:
            self._fail(sequence, as_api_error(error, sequence.request_id))
        elif sequence.constraint.finished:
            self._finish(sequence, "stop", flush=True)

    def _add(self, token: int, sequence: Sequence, *, logits: bool) -> None:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = sequence.n_past
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = sequence.seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        sequence.n_past += 1
        self._slots[sequence.seq_id].tokens.append(token)

    def _sample(self, sequence: Sequence, index: int) -> None:
        penalties = sequence.penalties
        if sequence.constraint is not None or penalties is not None:
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,)
            )
            if sequence.constraint is not None:
                sequence.constraint.apply(logits)
            if penalties is not None:
                penalties.apply(logits)
        token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, index)
        if penalties is not None:
            penalties.restore(logits)
            penalties.accept(token)
        sequence.generated += 1
        if sequence.logprobs:
            sequence.held_logprobs.append(
                token_logprob(
                    self._ctx,
                    self.vocab,
                    self.n_vocab,
                    index,
                    token,
                    sequence.top_logprobs,
                )
            )
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            self._finish(sequence, "stop", flush=True)
            return
        text = sequence.decoder.decode(token_piece(self.vocab, token))
        if sequence.lstrip:
            text = text.lstrip()
            sequence.lstrip = not text
        emitted, stopped = sequence.matcher.feed(text)
        if emitted:
            self._emit(sequence, emitted)
        if stopped:
            self._finish(sequence, "stop", flush=False)
        elif sequence.generated >= sequence.max_tokens or sequence.n_past >= self.context_size:
            self._finish(sequence, "length", flush=True)
        else:
            sequence.last_token = token
            if sequence.constraint is not None:
                stepping: Future[None] = self._steps.submit(sequence.constraint.advance, token)
                stepping.add_done_callback(lambda _: self.wake())
                sequence.stepping = stepping
                self._fresh_steps.append(stepping)

    def _emit(self, sequence: Sequence, text: str) -> None:
        logprobs = None
        if sequence.logprobs:
            logprobs = tuple(sequence.held_logprobs)
            sequence.held_logprobs.clear()
        self._outbox.append((sequence, Emission(text, logprobs)))

    def _finish(self, sequence: Sequence, reason: FinishReason, *, flush: bool) -> None:
        if flush:
            emitted, stopped = sequence.matcher.feed(sequence.decoder.decode(b"", final=True))
            tail = emitted if stopped else emitted + sequence.matcher.flush()
            if tail:
                self._emit(sequence, tail)
        done = Done(reason, len(sequence.prompt), sequence.generated, sequence.cached)
        self._outbox.append((sequence, done))
        self._release(sequence)

    def _fail(self, sequence: Sequence, error: ChatbotAPIError, *, forget: bool = False) -> None:
        self._outbox.append((sequence, Failure(error)))
        self._release(sequence, forget=forget)

    def _release(self, sequence: Sequence, *, forget: bool = False) -> None:
        """Free the sequence's slot. Its cells stay for a later prompt to reuse, unless
        ``forget`` (a failed decode may have left them half written) or reuse is off."""
        slot = self._slots.pop(sequence.seq_id)
        if forget or not self.config.cache_prompt:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens.clear()
        self._clock += 1
        slot.used = self._clock
        llama_cpp.llama_sampler_free(sequence.sampler)
        sequence.sampler = None
        with self._lock:
            self._active.remove(sequence)
            self._idle.append(slot)
