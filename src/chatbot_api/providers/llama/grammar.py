"""Structured output with llguidance: JSON schemas compiled to token masks, off the decode loop.

llguidance (the structured-generation engine llama.cpp itself integrates) turns a JSON schema
into a matcher that, at each step, says which tokens may come next. This module runs in the
engine process:

* :class:`GrammarCompiler` builds matchers in threads of their own, never in the decode loop
  and never on the event loop. Each compile is bounded: llguidance's own limits cap the size of
  a grammar and the work of its lexer, and a compile that takes longer than its budget is
  refused. Compiled matchers are cached by schema; a request gets a cheap copy.
* :class:`Constraint` is one sequence's matcher with its mask for the next token. The decode
  thread applies the mask to the logits before sampling; consuming the sampled token and
  computing the next mask run in a worker thread of the engine's, so a grammar that is slow to
  follow holds back its own sequence only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from chatbot_api.errors import InvalidRequestError, ServerOverloadedError
from chatbot_api.providers.llama.protocol import GrammarSpec
from chatbot_api.providers.llama.structured import JSON_OPTIONS

__all__ = ["Constraint", "GrammarCompiler", "GrammarError"]

logger = logging.getLogger(__name__)

#: llguidance's limits, with error messages that do not dump the parser's state.
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)
_LARK_PLACE = re.compile(r"^at (\d+)\(\d+\): ")
#: A line of the grammar quoted in an error ("  4 | fn_0: ...") or the caret under it.
_LARK_CONTEXT = re.compile(r"^\s*(\d+ \||\^)")
_ANY_OBJECT = '{"type":"object"}'


class GrammarError(InvalidRequestError):
    """The schema cannot be compiled or followed: a 400 naming ``response_format``."""

    default_code = "invalid_json_schema"

    def __init__(self, reason: str, param: str = "response_format") -> None:
        super().__init__(f"Invalid schema for {param}: {reason}", param=param)


def _first_line(message: str) -> str:
    """llguidance's messages can run to many lines (a regex with a caret under it)."""
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())[:500]


@dataclass(eq=False)
class Constraint:
    """One sequence's grammar: its matcher and which tokens are barred from the next step."""

    matcher: llguidance.LLMatcher
    n_vocab: int
    #: The request parameter the grammar came from.
    param: str = "response_format"
    barred: np.ndarray[Any, np.dtype[np.bool_]] = field(init=False)
    #: Set when the grammar is complete: the sequence ends without sampling more.
    finished: bool = False

    def __post_init__(self) -> None:
        self._next_mask()

    def _next_mask(self) -> None:
        """Compute the mask for the next token (llguidance drops the GIL while it works).

        A matcher that cannot go on is in its error state (llguidance never offers an empty
        mask otherwise); it is checked by the mask too, so that no step samples from nothing.
        """
        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(words, bitorder="little", count=self.n_vocab)
        if self.matcher.is_error() or not allowed.any():
            reason = self.matcher.get_error() or "the schema allows no continuation here"
            raise GrammarError(_first_line(reason), self.param)
        self.barred = allowed == 0

    def apply(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Decode thread: bar every token the grammar does not allow next."""
        np.putmask(logits, self.barred, -np.inf)

    def advance(self, token: int) -> None:
        """Worker thread: take the sampled token, then prepare the next step's mask."""
        if not self.matcher.consume_token(token):
            raise GrammarError(_first_line(self.matcher.get_error()), self.param)
        if self.matcher.is_stopped():
            self.finished = True
            return
        self._next_mask()


class GrammarCompiler:
    """Compiles, caches and hands out constraints for one model's vocabulary.

    Used from the engine process's event loop: the cache is touched on that thread only, the
    work happens in threads of the compiler's own.
    """

    def __init__(
        self,
        vocab: Any,
        n_vocab: int,
        *,
        budget_seconds: float,
        cache_size: int = 64,
        threads: int = 2,
        queue_limit: int = 16,
    ) -> None:
        self._n_vocab = n_vocab
        self._budget = budget_seconds
        self._cache: OrderedDict[str, llguidance.LLMatcher | GrammarError] = OrderedDict()
        self._cache_size = cache_size
        self._queue_limit = queue_limit
        self._in_flight = 0
        self._compiling = ThreadPoolExecutor(threads, thread_name_prefix="grammar")
        self._copying = ThreadPoolExecutor(threads, thread_name_prefix="grammar-copy")
        # Reading a 262,144-token vocabulary into llguidance takes seconds: start it now, in
        # the background, so that plain requests are served meanwhile.
        self._tokenizer: Future[llguidance.LLTokenizer] = self._compiling.submit(
            lltokenizer_from_vocab, vocab
        )

    def close(self) -> None:
        self._compiling.shutdown(wait=True, cancel_futures=True)
        self._copying.shutdown(wait=True, cancel_futures=True)

    async def constraint(self, spec: GrammarSpec) -> Constraint:
        """A constraint for ``spec``, ready for its first token.

        Raises :class:`GrammarError` for a schema that cannot be compiled or takes longer than
        the budget to compile, and 503 when too many schemas are compiling already.
        """
        # The parameters are in the key too: a cached refusal names the request's own.
        named = f"{spec.param}\0{sorted(spec.rule_params.items())}"
        key = hashlib.sha256(f"{spec.kind}\0{spec.schema}\0{named}".encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is None:
            cached = await self._compile(key, spec)
        else:
            self._cache.move_to_end(key)
        if isinstance(cached, GrammarError):
            raise cached
        # A copy shares what the prototype compiled; its first mask is computed off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._copying, Constraint, cached.deep_copy(), self._n_vocab, spec.param
        )

    async def _compile(self, key: str, spec: GrammarSpec) -> llguidance.LLMatcher | GrammarError:
        # Reading the vocabulary is not the schema's cost: wait for it outside the budget.
        tokenizer = await asyncio.wrap_future(self._tokenizer)
        if self._in_flight >= self._queue_limit:
            raise ServerOverloadedError(
                "Every structured-output compiler is busy. Please retry shortly.",
                headers={"Retry-After": "1"},
            )
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def build() -> llguidance.LLMatcher:
            loop.call_soon_threadsafe(_settle, started)
            return _build(spec, tokenizer)

        job = loop.run_in_executor(self._compiling, build)
        job.add_done_callback(functools.partial(self._job_done, key))
        # The budget is the schema's own compile time: waiting for a compiler thread (others'
        # schemas) is not held against it. The request's deadline bounds the wait.
        await started
        try:
            # A compile past its budget is refused now and runs on until llguidance's limits
            # end it (a thread cannot be stopped); shielded, so that its result is not lost.
            result: llguidance.LLMatcher | GrammarError = await asyncio.wait_for(
                asyncio.shield(job), self._budget
            )
        except TimeoutError:
            result = _CompileTimeoutError(self._budget, spec.param)
        except GrammarError as error:
            result = error
        self._remember(key, result)
        return result

    def _remember(self, key: str, result: llguidance.LLMatcher | GrammarError) -> None:
        self._cache[key] = result
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _job_done(self, key: str, job: asyncio.Future[llguidance.LLMatcher]) -> None:
        self._in_flight -= 1
        if job.cancelled():
            return
        error = job.exception()  # retrieved: a compile refused for its time may fail later
        # A schema refused for its time that compiled (or was found wanting) in the end is
        # answered by that from now on, not by the refusal.
        if isinstance(self._cache.get(key), _CompileTimeoutError):
            if error is None:
                self._remember(key, job.result())
            elif isinstance(error, GrammarError):
                self._remember(key, error)


class _CompileTimeoutError(GrammarError):
    def __init__(self, budget: float, param: str) -> None:
        super().__init__(f"the schema took longer than {budget:g} s to compile; simplify it", param)


def _settle(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


def _build(spec: GrammarSpec, tokenizer: llguidance.LLTokenizer) -> llguidance.LLMatcher:
    """Compile ``spec`` (in a compiler thread): a matcher whose first mask is computed."""
    if spec.kind == "lark":
        grammar = llguidance.LLMatcher.grammar_from_lark(spec.schema)
    else:
        # The worker sends a JSON object (``provider.grammar_spec``), which is all this refuses.
        schema = _ANY_OBJECT if spec.kind == "json_object" else spec.schema
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_LIMITS)
    # The first mask builds the lexer's tables (it consumes nothing): copies of a warm
    # prototype start fast.
    matcher.compute_bitmask()
    if matcher.is_error():
        message, param = matcher.get_error(), spec.param
        if spec.kind == "lark":
            message, param = _lark_error(message, spec)
        raise GrammarError(_first_line(message), param)
    return matcher


def _lark_error(message: str, spec: GrammarSpec) -> tuple[str, str]:
    """llguidance's "at 4(7): <reason>", then the grammar around the fault (which is ours,
    not the client's): the reason alone, and the parameter the faulty rule came from."""
    place = _LARK_PLACE.match(message.strip())
    param = spec.param
    if place is not None:
        lines = spec.schema.splitlines()
        line = int(place.group(1)) - 1
        rule = lines[line].partition(":")[0] if 0 <= line < len(lines) else ""
        param = spec.rule_params.get(rule, param)
        message = message.strip()[place.end() :]
    reason = [text for text in message.splitlines() if not _LARK_CONTEXT.match(text)]
    return "\n".join(reason), param
