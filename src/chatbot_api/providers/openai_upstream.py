"""The ``openai`` provider: any OpenAI-compatible service (OpenAI, vLLM, Ollama, llama.cpp's
server, another chatbot-api) behind our API, through the official ``openai`` SDK.

The client's request goes upstream as sent (tools, response_format, logprobs, n, seed...),
streamed when the client streams (with usage, so that our own framing holds: role first, the
usage chunk when asked, ``[DONE]``), as one JSON answer when it does not; either way it
becomes the same events. Tool-call pieces keep the ``index`` and ``id`` the upstream gave
them. Upstream faults become our errors, never leaking
the upstream's key:

    upstream                          ours
    400, 422                          400 with the upstream's message
    401, 403, 404                     502 upstream_error (our configuration is wrong)
    429                               429 with the upstream's retry-after-ms or Retry-After
    5xx, a dropped connection         502 upstream_error
    no chat completion (a web page)   502 upstream_error
    a timeout                         504 upstream_timeout

A client that disconnects closes the upstream response at once.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.errors import (
    ChatbotAPIError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from chatbot_api.providers.base import (
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

__all__ = ["OpenAIUpstreamConfig", "OpenAIUpstreamProvider"]

logger = logging.getLogger(__name__)

#: Fields of the client's request that are ours, not the upstream's.
_OURS = frozenset({"model", "stream", "stream_options", "store", "metadata"})


class OpenAIUpstreamConfig(BaseModel):
    """Keys of a ``provider = "openai"`` entry in the models file."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The upstream's API root, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the upstream's API key."
    )
    upstream_model: str | None = Field(
        default=None, description="The model's name upstream; the entry's id when unset."
    )
    timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for the upstream.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    max_retries: int = Field(
        default=2, ge=0, description="Retries of connection errors, 429s and 5xx before the answer."
    )


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
        key = "unused"
        if config.api_key_env is not None:
            found = os.environ.get(config.api_key_env)
            if not found:
                raise ValueError(
                    f"model {model_id!r}: the environment variable {config.api_key_env} "
                    "(api_key_env) is not set"
                )
            key = found
        self._model = config.upstream_model or model_id
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=key,
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            max_retries=config.max_retries,
        )

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        wire = request.request
        body = wire.model_dump(mode="json", exclude_unset=True, exclude=set(_OURS))
        messages = {"messages": body.pop("messages")}
        if not wire.stream:
            # One JSON answer parses in a fraction of the time of a stream of chunks.
            try:
                completion = await self._client.chat.completions.create(
                    model=self._model, messages=messages["messages"], extra_body=body
                )
            except openai.OpenAIError as exc:
                raise _ours(exc) from None
            if not isinstance(completion, ChatCompletion):  # e.g. an event stream regardless
                logger.warning("the upstream did not answer with a chat completion")
                raise UpstreamError(None)
            for event in _completion_events(completion):
                yield event
            return
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=messages["messages"],
                stream=True,
                stream_options={"include_usage": True},
                extra_body=body,
            )
        except openai.OpenAIError as exc:
            raise _ours(exc) from None
        received = False
        try:
            async for chunk in stream:
                received = True
                for event in _events(chunk):
                    yield event
        except openai.OpenAIError as exc:
            raise _ours(exc) from None
        finally:
            await stream.close()
        if not received:  # e.g. a web page, which parses as an event stream of nothing
            logger.warning("the upstream did not answer with a chat completion stream")
            raise UpstreamError(None)


def _logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    if logprobs is None or not logprobs.content:
        return None
    return tuple(
        TokenLogprob(
            token=item.token,
            logprob=item.logprob,
            bytes=tuple(item.bytes or ()),
            top_logprobs=tuple(
                TopLogprob(top.token, top.logprob, tuple(top.bytes or ()))
                for top in item.top_logprobs
            ),
        )
        for item in logprobs.content
    )


def _finish(reason: str) -> FinishReason:
    return "stop" if reason == "function_call" else cast(FinishReason, reason)


def _completion_events(completion: ChatCompletion) -> list[GenerationEvent]:
    events: list[GenerationEvent] = []
    for choice in completion.choices:
        message = choice.message
        if message.content:
            events.append(TextDelta(message.content, choice.index, _logprobs(choice.logprobs)))
        for number, call in enumerate(message.tool_calls or ()):
            piece = {"index": number, **call.model_dump(exclude_none=True)}
            events.append(ToolCallDelta(piece, choice.index))
        events.append(Finish(_finish(choice.finish_reason), choice.index))
    if completion.usage is not None:
        events.append(Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens))
    return events


def _events(chunk: ChatCompletionChunk) -> list[GenerationEvent]:
    events: list[GenerationEvent] = []
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content:
            events.append(TextDelta(delta.content, choice.index, _logprobs(choice.logprobs)))
        for call in delta.tool_calls or ():
            events.append(ToolCallDelta(call.model_dump(exclude_none=True), choice.index))
        if choice.finish_reason is not None:
            events.append(Finish(_finish(choice.finish_reason), choice.index))
    if chunk.usage is not None:
        events.append(Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
    return events


def _ours(exc: openai.OpenAIError) -> ChatbotAPIError:
    """The error our client sees for an upstream failure (logged with what we know)."""
    if isinstance(exc, openai.APITimeoutError):
        logger.warning("the upstream timed out")
        return UpstreamTimeoutError()
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        logger.warning("the upstream answered %s", status, extra={"upstream_status": status})
        if status in (400, 422):
            body = exc.body if isinstance(exc.body, dict) else {}
            return InvalidRequestError(
                str(body.get("message") or exc.message),
                param=body.get("param") if isinstance(body.get("param"), str) else None,
                code=body.get("code") if isinstance(body.get("code"), str) else None,
            )
        if status == 429:
            return RateLimitError(
                "The upstream model service is rate limiting us; please retry later.",
                retry_after=_retry_after(exc.response),
            )
        return UpstreamError(status)
    logger.warning("the upstream failed: %s", type(exc).__name__)
    return UpstreamError(None)


def _retry_after(response: httpx2.Response) -> float:
    """Seconds the upstream asks us to wait: ``retry-after-ms``, else ``Retry-After``; 1 when
    neither holds a finite number of seconds (an HTTP date is not read)."""
    for name, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            seconds = float(response.headers.get(name, "")) / per_second
        except ValueError:
            continue
        if math.isfinite(seconds):  # "inf" and "nan" parse too, and cannot be rounded
            return seconds
    return 1.0
