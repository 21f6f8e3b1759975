"""The ``openai`` provider: a model served by one or more OpenAI-compatible deployments.

A request goes to a deployment picked by the model's ``routing`` among those that can take
it (not cooling down, not at their ``max_concurrency``, ``rpm`` or ``tpm``). A deployment that
fails before the answer's first byte has reached the client (no connection, a timeout, a 5xx,
a 429, no chat completion) is counted against its health and the request is tried again on
another, up to ``max_retries`` times; when every deployment has failed or none can take it,
the model's ``fallbacks`` are tried in order, each with its own deployments and retries (their
own fallbacks are not followed). A prompt too long for the model goes to its
``context_window_fallbacks`` instead. A stream that fails after its first chunk is not retried:
it ends with an error event.

Chat completions are relayed as bytes (:class:`~chatbot_api.providers.base.Relay`); other
callers (the Responses API) get the same answers as events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from chatbot_api.context import current_request
from chatbot_api.errors import ChatbotAPIError, RateLimitError, ServerOverloadedError
from chatbot_api.providers.base import (
    GenerationEvent,
    GenerationRequest,
    Provider,
    RelayedAnswer,
    RelayedChunk,
    RelayedStream,
)
from chatbot_api.providers.gateway.config import OpenAIUpstreamConfig
from chatbot_api.providers.gateway.deployment import Deployment, Refusal
from chatbot_api.providers.gateway.upstream import DeploymentError, Upstream
from chatbot_api.providers.wire import chunk_events, completion_events, usage_of

__all__ = ["OpenAIUpstreamProvider"]

logger = logging.getLogger(__name__)

#: Fields of the client's request that are ours, not the upstream's.
_OURS = ("store", "metadata")
#: Seconds before trying the same deployment again, doubling with each attempt.
_BACKOFF_SECONDS = 0.25
_encode = msgspec.json.encode
T = TypeVar("T")
#: One attempt at an answer: a model asks one of its deployments with the encoded body.
Attempt = Callable[["OpenAIUpstreamProvider", Deployment, bytes], Awaitable[T]]


class _ExhaustedError(Exception):
    """Every attempt on a model failed; ``error`` is what its client would be told."""

    def __init__(self, error: ChatbotAPIError) -> None:
        super().__init__(error.message)
        self.error = error


class OpenAIUpstreamProvider:
    supported_parameters: frozenset[str] = frozenset(
        {
            "tools",
            "tool_choice",
            "functions",
            "function_call",
            "response_format",
            "logprobs",
            "top_logprobs",
            "logit_bias",
            "n",
            "audio",
            "prediction",
            "web_search_options",
            "reasoning_effort",
            "verbosity",
        }
    )

    def __init__(self, model_id: str, config: OpenAIUpstreamConfig) -> None:
        self.model_id = model_id
        self._config = config
        self._deployments: list[Deployment] = []
        self._upstreams: dict[Deployment, Upstream] = {}
        for number, deployment in enumerate(config.deployment_list(), start=1):
            key = None
            if deployment.api_key_env is not None:
                key = os.environ.get(deployment.api_key_env)
                if not key:
                    raise ValueError(
                        f"model {model_id!r}: the environment variable "
                        f"{deployment.api_key_env} (api_key_env) is not set"
                    )
            state = Deployment(
                model=model_id,
                name=deployment.name or _header_safe(f"{model_id}/{number}"),
                config=deployment,
                upstream_model=deployment.upstream_model or model_id,
                allowed_fails=config.allowed_fails,
                failure_window=config.failure_window,
                cooldown=config.cooldown,
            )
            self._deployments.append(state)
            self._upstreams[state] = Upstream(deployment, key)
        self._fallbacks: tuple[OpenAIUpstreamProvider, ...] = ()
        self._context_fallbacks: tuple[OpenAIUpstreamProvider, ...] = ()

    def link(self, providers: Mapping[str, Provider]) -> None:
        """Find the models named as fallbacks (at start-up, once every model is built)."""
        self._fallbacks = self._resolve(providers, self._config.fallbacks, "fallbacks")
        self._context_fallbacks = self._resolve(
            providers, self._config.context_window_fallbacks, "context_window_fallbacks"
        )

    def _resolve(
        self, providers: Mapping[str, Provider], names: list[str], key: str
    ) -> tuple[OpenAIUpstreamProvider, ...]:
        found = []
        for name in names:
            provider = providers.get(name)
            if not isinstance(provider, OpenAIUpstreamProvider) or name == self.model_id:
                raise ValueError(
                    f"model {self.model_id!r}: {key} names {name!r}, which is not another "
                    "model of provider 'openai'"
                )
            found.append(provider)
        return tuple(found)

    def problem(self) -> str | None:
        # An upstream outage is not this server's: it answers 502 (or falls back) for the
        # model and stays ready, for its other models. ``unavailable`` reports it.
        return None

    def unavailable(self) -> str | None:
        """Why no deployment can serve now (all cooling down or backing off), else None."""
        if any(deployment.serves() for deployment in self._deployments):
            return None
        return f"none of its {len(self._deployments)} deployment(s) can serve now"

    async def aclose(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.aclose()

    # --- relaying -----------------------------------------------------------------------

    async def relay_answer(self, body: dict[str, Any]) -> RelayedAnswer:
        body = _outgoing(body, stream=False)
        return await self._through_fallbacks(body, OpenAIUpstreamProvider._answer)

    async def relay_stream(self, body: dict[str, Any]) -> RelayedStream:
        body = _outgoing(body, stream=True)
        return await self._through_fallbacks(body, OpenAIUpstreamProvider._stream)

    async def _through_fallbacks(self, body: dict[str, Any], attempt: Attempt[T]) -> T:
        """``attempt(model, deployment, body)`` on this model, then on each fallback."""
        models: list[OpenAIUpstreamProvider] = [self, *self._fallbacks]
        last: ChatbotAPIError | None = None
        position = 0
        while position < len(models):
            model = models[position]
            try:
                return await model._attempts(body, attempt)
            except _ExhaustedError as exhausted:
                last = exhausted.error
            except DeploymentError as failure:  # the request itself was refused
                if model is not self or not _too_long(failure.error):
                    raise failure.error from None
                last = failure.error
                models = [self, *self._context_fallbacks]
            position += 1
            if position < len(models):
                logger.warning(
                    "model %s cannot serve this request (%s); falling back to %s",
                    model.model_id,
                    last.code,
                    models[position].model_id,
                    extra={"model": model.model_id},
                )
        assert last is not None  # every model was tried
        raise last

    async def _attempts(self, body: dict[str, Any], attempt: Attempt[T]) -> T:
        """Up to ``1 + max_retries`` attempts on this model's deployments."""
        tried: set[Deployment] = set()
        last: ChatbotAPIError | None = None
        for number in range(self._config.max_retries + 1):
            deployment = self._pick(tried)
            if deployment in tried:  # no other to turn to: the same again, after a pause
                await asyncio.sleep(_BACKOFF_SECONDS * 2 ** (number - 1))
                deployment = self._pick(tried)  # what it could take may have changed meanwhile
            if deployment is None:
                break
            tried.add(deployment)
            body["model"] = deployment.upstream_model
            try:
                return await attempt(self, deployment, _encode(body))
            except DeploymentError as failure:
                if failure.kind is None:
                    raise
                deployment.failed(failure.kind, retry_after=failure.retry_after)
                last = failure.error
        raise _ExhaustedError(last if last is not None else self._none_available())

    def _pick(self, tried: set[Deployment]) -> Deployment | None:
        """The deployment for the next attempt: one not yet tried if any can take it, else
        one already tried, else None."""
        now = time.monotonic()
        ready = [d for d in self._deployments if d.refusal(now) is None]
        fresh = [d for d in ready if d not in tried] or ready
        if not fresh:
            return None
        if len(fresh) == 1:
            return fresh[0]
        routing = self._config.routing
        if routing == "weighted":
            return random.choices(fresh, [d.config.weight for d in fresh])[0]
        if routing == "latency":
            unmeasured = [d for d in fresh if d.latency is None]
            if unmeasured:
                return random.choice(unmeasured)
            fastest = min(d.latency or 0.0 for d in fresh)
            return random.choice([d for d in fresh if d.latency == fastest])
        fewest = min(d.in_flight for d in fresh)
        return random.choice([d for d in fresh if d.in_flight == fewest])

    def _none_available(self) -> ChatbotAPIError:
        """Why no deployment can take the request: the soonest any may, as Retry-After."""
        now = time.monotonic()
        waits: dict[Refusal, float] = {}
        for deployment in self._deployments:
            refusal = deployment.refusal(now)
            if refusal is not None:
                wait = deployment.wait(now, refusal)
                waits[refusal] = min(waits.get(refusal, wait), wait)
        soonest = max(0.001, min(waits.values(), default=1.0))
        what = ", ".join(sorted(refusal.value for refusal in waits))
        message = f"Every deployment of the model '{self.model_id}' is busy ({what})."
        if Refusal.FULL in waits or Refusal.PROBING in waits:
            return ServerOverloadedError(
                message + " Please retry shortly.", headers={"Retry-After": "1"}
            )
        if Refusal.RATE_LIMITED in waits or Refusal.BACKING_OFF in waits:
            return RateLimitError(message + " Please retry later.", retry_after=soonest)
        return ServerOverloadedError(
            f"Every deployment of the model '{self.model_id}' is cooling down after failures. "
            "Please retry later.",
            headers={"Retry-After": str(max(1, round(soonest)))},
        )

    async def _answer(self, deployment: Deployment, payload: bytes) -> RelayedAnswer:
        started = time.perf_counter()
        deployment.begin()
        try:
            body, document = await self._upstreams[deployment].answer(payload)
        finally:
            deployment.end()
        _served_by(deployment, time.perf_counter() - started)
        usage = usage_of(document)
        if usage is not None:
            deployment.used(usage.prompt_tokens + usage.completion_tokens)
        return RelayedAnswer(self.model_id, deployment.name, body, document)

    async def _stream(self, deployment: Deployment, payload: bytes) -> RelayedStream:
        started = time.perf_counter()
        deployment.begin()
        chunks = self._upstreams[deployment].stream(payload)
        try:
            first = await anext(aiter(chunks))
        except BaseException:
            deployment.end()
            await chunks.aclose()
            raise
        _served_by(deployment, time.perf_counter() - started)
        flight = _Flight(deployment, chunks)
        return RelayedStream(
            self.model_id, deployment.name, _passing(flight, first, chunks), flight.aclose
        )

    # --- events, for callers that build their own answers ---------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        wire = request.request
        body = wire.model_dump(mode="json", exclude_unset=True)
        if not wire.stream:
            answer = await self.relay_answer(body)
            for event in completion_events(answer.document):
                yield event
            return
        stream = await self.relay_stream(body)
        try:
            async for _, document in stream.chunks:
                for event in chunk_events(document):
                    yield event
        finally:
            await stream.chunks.aclose()
            await stream.aclose()


def _header_safe(name: str) -> str:
    """``name`` as it may travel in a response header (a model id may hold any character)."""
    return quote(name, safe="/:._-@+")


def _served_by(deployment: Deployment, seconds: float) -> None:
    deployment.answered(seconds)
    context = current_request()  # for the access log
    if context is not None:
        context.deployment = deployment.name


def _too_long(error: ChatbotAPIError) -> bool:
    """Whether the upstream refused the prompt as longer than the model's context (OpenAI's
    code, or the words vLLM and llama.cpp's server use)."""
    if error.code == "context_length_exceeded":
        return True
    message = error.message.lower()
    return "context length" in message or "context window" in message or "context size" in message


def _outgoing(body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The client's body as the upstream gets it: without our own fields, streamed with
    usage (which the accounting needs; the chat service drops it when not asked for)."""
    sent = {key: value for key, value in body.items() if key not in _OURS}
    options = sent.pop("stream_options", None)
    if stream:
        sent["stream"] = True
        sent["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    else:
        sent.pop("stream", None)
    return sent


class _Flight:
    """A stream's request to its deployment, ended once however it ends."""

    def __init__(self, deployment: Deployment, chunks: AsyncGenerator[RelayedChunk, None]) -> None:
        self.deployment = deployment
        self._chunks: AsyncGenerator[RelayedChunk, None] | None = chunks

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            self.deployment.end()
            await chunks.aclose()


async def _passing(
    flight: _Flight, first: RelayedChunk, chunks: AsyncGenerator[RelayedChunk, None]
) -> AsyncGenerator[RelayedChunk, None]:
    """The stream's chunks, its deployment told of the tokens and of a failure part-way."""
    deployment = flight.deployment
    try:
        chunk = first
        while True:
            usage = usage_of(chunk[1])
            if usage is not None:
                deployment.used(usage.prompt_tokens + usage.completion_tokens)
            yield chunk
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except DeploymentError as failure:
                if failure.kind is not None:
                    deployment.failed(failure.kind)
                raise failure.error from None
    finally:
        await flight.aclose()
