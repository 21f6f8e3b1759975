"""Requests and tokens per minute, per API key (per client address when anonymous).

The counters live in this process, or in Redis through the ``limits`` library when
``CHATBOT_REDIS_URL`` is set, so that every worker and replica counts against one limit
(``security.counters``). Windows are fixed and aligned to the wall-clock minute, and the
window is part of the counter's key: a settlement after the window turned over lands on the
old, unread counter instead of wrongly crediting the new one, and the reset time needs no
round trip.

A chat completion reserves its tokens before generation (the prompt's estimate plus the
requested maximum, the way OpenAI's own limiter counts) and settles them against real usage
after, handing back what it did not use. Admission checks both limits and takes from both
counters in one atomic step, so a refused request never shows in anybody's count.

Failed authentications are counted per client address; once an address is over its limit for
the minute, its failures are answered 429 instead of 401. Only failures are: a valid key is
let in whatever others sharing its address (a NAT, an office) have tried.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from chatbot_api import metrics
from chatbot_api.config import Settings
from chatbot_api.errors import RateLimitError
from chatbot_api.security.auth import Principal
from chatbot_api.security.counters import (
    Counters,
    CountersUnavailableError,
    InProcessCounters,
    RedisCounters,
)

__all__ = [
    "Quota",
    "RateLimiter",
    "format_reset",
    "settle_after",
]

logger = logging.getLogger(__name__)

_WINDOW_SECONDS = 60
# A counter outlives its window a little so a late settlement finds it.
_COUNTER_TTL = _WINDOW_SECONDS + 10


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes:
        hours, minutes = divmod(int(minutes), 60)
        text = f"{minutes}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return text


@dataclass(slots=True)
class Quota:
    """What one admitted request took: its headers, and the settlement of its tokens.

    A limit of 0 is no limit: its three headers are left out.
    """

    limiter: RateLimiter | None = None
    rpm: int = 0
    tpm: int = 0
    used_requests: int = 0
    used_tokens: int = 0
    #: Seconds until the window (of both counters) ends.
    reset: float = 0.0
    token_key: str = ""
    reserved_tokens: int = 0
    settled: bool = False

    @property
    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.limiter is None:
            return headers
        reset = format_reset(self.reset)
        if self.rpm > 0:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - self.used_requests))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm > 0:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self.used_tokens))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    async def settle(self, used_tokens: int | None) -> None:
        """Hand back the reserved tokens that were not used. ``None``: usage unknown, keep all."""
        if self.limiter is None or self.settled:
            return
        self.settled = True
        if used_tokens is None:
            return
        unused = self.reserved_tokens - used_tokens
        if unused > 0:
            await self.limiter.give_back(self.token_key, unused)


UNLIMITED = Quota()


class RateLimiter:
    """Fixed one-minute windows of requests and tokens, in ``limits`` storage."""

    def __init__(
        self, counters: Counters, *, rpm: int, tpm: int, auth_failures_per_minute: int
    ) -> None:
        self._counters = counters
        self._rpm = rpm
        self._tpm = tpm
        self._auth_failures = auth_failures_per_minute
        #: Addresses at the failed-authentication limit in the minute ``_blocked_window``.
        #: Learnt from this process's own failures (the count itself is shared), so that
        #: their next failures are refused without a round trip to Redis; forgotten together
        #: when the minute ends, so that it never holds more than one minute's addresses.
        self._blocked: set[str] = set()
        self._blocked_window = -1

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """Counters in Redis when ``CHATBOT_REDIS_URL`` is set, else in this process."""
        counters: Counters = (
            InProcessCounters()
            if settings.redis_url is None
            else RedisCounters(
                settings.redis_url.get_secret_value(), timeout=settings.redis_timeout_seconds
            )
        )
        return cls(
            counters,
            rpm=settings.rate_limit_rpm,
            tpm=settings.rate_limit_tpm,
            auth_failures_per_minute=settings.auth_failures_per_minute,
        )

    def limits_for(self, principal: Principal, address: str) -> tuple[str, int, int]:
        """Whose counters a request of ``principal`` counts on, and their limits per minute.

        A key's own ``rpm``/``tpm`` win over the defaults; anonymous callers count per
        address; the master key is never limited.
        """
        key = principal.key
        if key is not None:
            rpm = self._rpm if key.rpm is None else key.rpm
            tpm = self._tpm if key.tpm is None else key.tpm
            return f"key:{key.id}", rpm, tpm
        if principal.kind == "master":
            return "master", 0, 0
        return f"address:{address}", self._rpm, self._tpm

    async def aclose(self) -> None:
        await self._counters.aclose()

    @staticmethod
    def _window() -> tuple[int, float]:
        now = time.time()
        index = int(now // _WINDOW_SECONDS)
        return index, (index + 1) * _WINDOW_SECONDS - now

    @staticmethod
    def _key(kind: str, identity: str, window: int) -> str:
        # The braces are a Redis Cluster hash tag: one admission's two counters share a slot.
        return f"{kind}/{{{identity}/{window}}}"

    async def admit(self, principal: Principal, address: str, *, tokens: int) -> Quota:
        """Count one request and reserve ``tokens``; 429 when either limit would be passed.

        A limit of 0 is no limit. A refused request takes nothing from either window. When the
        counters' storage (Redis) does not answer in time, the request is let through and the
        outage logged: a limiter that is down should not take the API down with it.
        """
        identity, rpm, tpm = self.limits_for(principal, address)
        if rpm <= 0 and tpm <= 0:
            return UNLIMITED
        window, reset = self._window()
        token_key = self._key("tokens", identity, window)
        request_cost = 1 if rpm > 0 else 0
        token_cost = tokens if tpm > 0 else 0
        try:
            admission = await self._counters.admit(
                self._key("requests", identity, window),
                token_key,
                requests=request_cost,
                tokens=token_cost,
                request_limit=rpm,
                token_limit=tpm,
                expiry=_COUNTER_TTL,
            )
        except self._counters.errors as exc:
            _storage_failed(exc)
            return UNLIMITED
        quota = Quota(
            self, rpm, tpm, admission.requests, admission.tokens, reset, token_key, token_cost
        )
        if not admission.admitted:
            over_requests = 0 < rpm < admission.requests + request_cost
            limit: Literal["requests", "tokens"] = "requests" if over_requests else "tokens"
            metrics.RATE_LIMITED.labels(limit).inc()
            raise _refusal(quota, limit, tokens)
        return quota

    async def give_back(self, key: str, amount: int) -> None:
        try:
            await self._counters.incr(key, -amount, expiry=_COUNTER_TTL)
        except self._counters.errors as exc:
            _storage_failed(exc)

    async def throttle_auth_failure(self, address: str) -> None:
        """Count a failed authentication from ``address``: 429 ``too_many_auth_failures``
        once the address is over its limit this minute (the caller answers 401 otherwise).

        Called for failures only, so that a valid key is never refused for what others
        sharing its address did.
        """
        if self._auth_failures <= 0:
            return
        window, reset = self._window()
        if window != self._blocked_window:  # a new minute: last minute's blocks are over
            self._blocked, self._blocked_window = set(), window
        # This minute's set, even if the minute turns while Redis counts the failure.
        blocked = self._blocked
        if address in blocked:
            raise _auth_refusal(reset)
        try:
            failures = await self._counters.incr(
                self._key("auth-failures", address, window), 1, expiry=_COUNTER_TTL
            )
        except self._counters.errors as exc:
            _storage_failed(exc)
            return
        if failures >= self._auth_failures:
            blocked.add(address)
        if failures > self._auth_failures:
            raise _auth_refusal(reset)


def _auth_refusal(wait: float) -> RateLimitError:
    metrics.RATE_LIMITED.labels("auth_failures").inc()
    return RateLimitError(
        "Too many requests with an invalid API key from your address. Please retry "
        f"after {format_reset(wait)}.",
        retry_after=wait,
        code="too_many_auth_failures",
    )


def _storage_failed(exc: Exception) -> None:
    # A failure seen now carries its trace; "failed a moment ago, not asked" needs none.
    seen_now = not isinstance(exc, CountersUnavailableError) or exc.__cause__ is not None
    logger.error(
        "rate-limit storage unavailable; letting the request through",
        exc_info=exc if seen_now else None,
        extra={"error": str(exc)},
    )


def _refusal(quota: Quota, limit: Literal["requests", "tokens"], tokens: int) -> RateLimitError:
    headers = quota.headers
    if limit == "tokens" and tokens > quota.tpm:
        # No wait helps: the request alone is larger than a whole minute's allowance.
        return RateLimitError(
            f"Request too large: the limit is {quota.tpm} tokens per minute and this "
            f"request needs {tokens} (prompt plus max_completion_tokens). Lower "
            "max_completion_tokens or shorten the messages.",
            retry_after=quota.reset,
            limit="tokens",
            headers={**headers, "x-should-retry": "false"},
        )
    allowed, used = (
        (quota.rpm, quota.used_requests) if limit == "requests" else (quota.tpm, quota.used_tokens)
    )
    return RateLimitError(
        f"Rate limit reached for {limit} per minute: limit {allowed}, used {used}. Please try "
        f"again in {format_reset(quota.reset)}.",
        retry_after=quota.reset,
        limit=limit,
        headers=headers,
    )


class StreamedUsage(Protocol):
    """A stream whose usage is known once it ends (``services.chat.ChatStream``)."""

    payloads: AsyncIterator[Any]

    @property
    def used_tokens(self) -> int | None: ...

    async def aclose(self) -> None: ...


async def settle_after(stream: StreamedUsage, quota: Quota) -> AsyncIterator[Any]:
    """Pass a completion's SSE payloads through, settling its tokens once the stream ends.

    Closed early (at a ``yield``), it closes the stream too: an async generator left
    suspended in a loop over another is not closed with it, and its generation would run on.
    """
    try:
        async for payload in stream.payloads:
            yield payload
    finally:
        await stream.aclose()
        await quota.settle(stream.used_tokens)
