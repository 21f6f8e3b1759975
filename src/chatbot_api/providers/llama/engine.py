"""The continuous-batching engine: one loaded model, one decode thread, many sequences.

Each step the thread builds one llama.cpp batch holding the next token of every decoding
sequence (one sequence id each) plus as much pending prompt as fits, decodes it once, and
samples every sequence that produced logits with that sequence's own sampler chain. New
requests join between steps; finished and cancelled ones leave and free their KV cells.
llama.cpp releases the GIL while it computes, so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

import llama_cpp

from chatbot_api import metrics
from chatbot_api.errors import ServerOverloadedError
from chatbot_api.providers.base import FinishReason
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.native_log import route_native_logs
from chatbot_api.providers.llama.sampling import build_sampler, token_logprob, token_piece
from chatbot_api.providers.llama.sequence import Done, Emission, Failure, Sequence

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

_backend_ready = threading.Lock()
_backend_initialised = False


def _init_backend() -> None:
    global _backend_initialised
    with _backend_ready:
        if not _backend_initialised:
            route_native_logs()
            llama_cpp.llama_backend_init()
            _backend_initialised = True


class Engine:
    def __init__(self, model_id: str, path: Path, config: LlamaCppConfig) -> None:
        _init_backend()
        self.model_id = model_id
        self.config = config
        self.context_size = config.context_size
        model_params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the model file {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.context_size * config.parallel
        params.n_batch = config.batch_size
        params.n_ubatch = config.batch_size
        params.n_seq_max = config.parallel
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        params.kv_unified = True
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(config.batch_size, 0, 1)

        self._lock = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._free_ids = list(range(config.parallel - 1, -1, -1))
        self._closing = False
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

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence; refuse at once (503) when every slot and queue place is taken."""
        with self._lock:
            if self._closing:
                raise ServerOverloadedError("The model is shutting down.")
            free_now = len(self._free_ids) - len(self._waiting)
            if free_now <= 0 and len(self._waiting) >= self.config.queue_size:
                raise ServerOverloadedError(
                    f"Model '{self.model_id}' is busy: every sequence and queue place is taken. "
                    "Please retry shortly.",
                    headers={"Retry-After": "1"},
                )
            self._waiting.append(sequence)
            self._lock.notify()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    # -- the decode thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._admit():
                self._step()
        except Exception as exc:  # pragma: no cover - llama.cpp failures we cannot provoke
            logger.exception("the decode loop of %s failed", self.model_id)
            for sequence in [*self._active, *self._waiting]:
                sequence.push(Failure(exc))
        finally:
            with self._lock:
                leftovers = [*self._active, *self._waiting]
                self._active.clear()
                self._waiting.clear()
            for sequence in leftovers:
                sequence.push(Failure(ServerOverloadedError("The model is shutting down.")))

    def _admit(self) -> bool:
        """Move waiting sequences into free slots; sleep while there is nothing to do."""
        with self._lock:
            while not self._closing and not self._waiting and not self._active:
                self._lock.wait()
            if self._closing:
                return False
            while self._waiting and self._free_ids:
                sequence = self._waiting.popleft()
                if sequence.cancelled:
                    continue
                sequence.seq_id = self._free_ids.pop()
                sequence.sampler = build_sampler(self.vocab, self.n_vocab, sequence.params)
                self._active.append(sequence)
            metrics.QUEUE_DEPTH.labels(self.model_id).set(len(self._waiting))
            metrics.SLOTS_IN_USE.labels(self.model_id).set(len(self._active))
            return True

    def _step(self) -> None:
        for sequence in [s for s in self._active if s.cancelled]:
            logger.info(
                "sequence cancelled",
                extra={"model": self.model_id, "completion_tokens": sequence.generated},
            )
            self._release(sequence)
        batch = self._batch
        batch.n_tokens = 0
        to_sample: list[tuple[Sequence, int]] = []
        in_batch: list[Sequence] = []
        room = self.config.batch_size

        for sequence in self._active:
            if sequence.prompt_done and not sequence.backlogged:
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
            # Every sequence waits on a slow reader; look again shortly.
            with self._lock:
                self._lock.wait(0.005)
            return
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:  # pragma: no cover - the KV cache is sized so that every slot fits
            error = ServerOverloadedError(
                f"Model '{self.model_id}' could not decode (llama.cpp status {status}); "
                "please retry."
            )
            for sequence in in_batch:
                sequence.push(Failure(error))
                self._release(sequence)
            return
        for sequence, index in to_sample:
            self._sample(sequence, index)

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

    def _sample(self, sequence: Sequence, index: int) -> None:
        token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, index)
        sequence.generated += 1
        if sequence.params.logprobs:
            sequence.held_logprobs.append(
                token_logprob(
                    self._ctx,
                    self.vocab,
                    self.n_vocab,
                    index,
                    token,
                    sequence.params.top_logprobs,
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

    def _emit(self, sequence: Sequence, text: str) -> None:
        logprobs = None
        if sequence.params.logprobs:
            logprobs = tuple(sequence.held_logprobs)
            sequence.held_logprobs.clear()
        sequence.push(Emission(text, logprobs))

    def _finish(self, sequence: Sequence, reason: FinishReason, *, flush: bool) -> None:
        if flush:
            emitted, stopped = sequence.matcher.feed(sequence.decoder.decode(b"", final=True))
            tail = emitted if stopped else emitted + sequence.matcher.flush()
            if tail:
                self._emit(sequence, tail)
        sequence.push(Done(reason, sequence.generated))
        self._release(sequence)

    def _release(self, sequence: Sequence) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        llama_cpp.llama_sampler_free(sequence.sampler)
        sequence.sampler = None
        with self._lock:
            self._active.remove(sequence)
            self._free_ids.append(sequence.seq_id)
            metrics.SLOTS_IN_USE.labels(self.model_id).set(len(self._active))
