"""Per-sequence sampling: a llama.cpp sampler chain built from the request, and logprobs.

Used in the engine process only."""

from __future__ import annotations

import ctypes
import random
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from chatbot_api.providers.base import TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from chatbot_api.providers.llama.protocol import Sampling

__all__ = ["build_sampler", "token_logprob", "token_piece"]

_PENALTY_WINDOW = 64


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
    if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
        # The binding declares a leading n_vocab argument that newer llama.cpp dropped; passing
        # the window twice lands it in the right register under either signature.
        add(
            llama_cpp.llama_sampler_init_penalties(
                _PENALTY_WINDOW,
                _PENALTY_WINDOW,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
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
