"""Per-sequence sampling: a llama.cpp sampler chain built from the request, and logprobs.

Used in the engine process only."""

from __future__ import annotations

import ctypes
import random
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from chatbot_api.providers.base import TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from chatbot_api.providers.llama.protocol import Sampling

__all__ = ["Penalties", "build_sampler", "token_logprob", "token_piece"]

_PENALTY_WINDOW = 64


class Penalties:
    """The repeat, frequency and presence penalties of llama.cpp's penalties sampler, over
    the last :data:`_PENALTY_WINDOW` sampled tokens, with its formula.

    llama.cpp's sampler looks up every candidate (262,144 for Gemma 3) in its counts for each
    token: a fifth of a single stream's decode time on two cores (docs/benchmarks.md). Here
    only the logits of the tokens in the window change, in place, just before the chain
    samples; :meth:`restore` puts them back after, so that logprobs stay the model's own.
    """

    def __init__(self, params: Sampling) -> None:
        self._repeat = params.repeat_penalty
        self._frequency = params.frequency_penalty
        self._presence = params.presence_penalty
        self._bias = params.logit_bias
        self._recent: deque[int] = deque()
        self._counts: Counter[int] = Counter()
        self._saved: list[tuple[int, float]] = []

    @classmethod
    def of(cls, params: Sampling) -> Penalties | None:
        active = params.repeat_penalty != 1.0 or params.presence_penalty != 0
        return cls(params) if active or params.frequency_penalty != 0 else None

    def apply(self, logits: np.ndarray[Any, Any]) -> None:
        """Penalise the logits of the tokens in the window. The chain adds a token's logit
        bias first, as llama.cpp's chain did before its penalties: the bias is taken into
        account here and left for the chain to add."""
        saved = self._saved
        for token, count in self._counts.items():
            raw = float(logits[token])
            saved.append((token, raw))
            bias = self._bias.get(token, 0.0)
            logit = raw + bias
            logit = logit * self._repeat if logit <= 0 else logit / self._repeat
            logit -= count * self._frequency + self._presence
            logits[token] = logit - bias

    def restore(self, logits: np.ndarray[Any, Any]) -> None:
        for token, raw in self._saved:
            logits[token] = raw
        self._saved.clear()

    def accept(self, token: int) -> None:
        self._counts[token] += 1
        if len(self._recent) >= _PENALTY_WINDOW:
            oldest = self._recent.popleft()
            self._counts[oldest] -= 1
            if not self._counts[oldest]:
                del self._counts[oldest]
        self._recent.append(token)


def build_sampler(n_vocab: int, params: Sampling) -> Any:
    """The chain a sequence samples with; ``llama_sampler_sample`` also accepts the token.

    Structured output is not part of the chain: the sequence's grammar bars tokens in the
    logits before the chain runs (``grammar.Constraint``).
    """
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
            *(llama_cpp.llama_logit_bias(token, bias) for token, bias in params.logit_bias.items())
        )
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    # The penalties are not in the chain: see Penalties.
    if params.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(params.top_k))
    add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    add(llama_cpp.llama_sampler_init_dist(seed % 2**32))
    return chain


def token_piece(vocab: Any, token: int) -> bytes:
    """The bytes of one token; a multi-byte character may span several tokens.

    Asked first with no room at all, llama.cpp answers with the piece's length (negated);
    then the piece is read into a buffer of exactly that size.
    """
    empty = ctypes.create_string_buffer(1)
    size = -llama_cpp.llama_token_to_piece(vocab, token, empty, 0, 0, False)
    buffer = ctypes.create_string_buffer(max(size, 1))
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:size]


def token_logprob(
    ctx: Any, vocab: Any, n_vocab: int, index: int, token: int, top: int
) -> TokenLogprob:
    """The sampled token's log probability under the model, from the logits at ``index``."""
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak).sum()))
    alternatives: tuple[TopLogprob, ...] = ()
    if top:
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best])]
        alternatives = tuple(_top(vocab, int(t), float(logits[t]) - log_total) for t in best)
    piece = token_piece(vocab, token)
    return TokenLogprob(
        token=piece.decode("utf-8", errors="replace"),
        logprob=float(logits[token]) - log_total,
        bytes=tuple(piece),
        top_logprobs=alternatives,
    )


def _top(vocab: Any, token: int, logprob: float) -> TopLogprob:
    piece = token_piece(vocab, token)
    return TopLogprob(
        token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(piece)
    )
