"""Requests and tokens per minute, per API key (per client address when anonymous).

Built on the ``limits`` library's storage: in memory for one process, Redis when
``CHATBOT_REDIS_URL`` is set, so that every worker and replica counts against one limit.
Windows are fixed and aligned to the wall-clock minute, and the window is part of the
counter's key: a settlement after the window turned over lands on the old, unread counter
instead of wrongly crediting the new one, and the reset time needs no round trip.

A chat completion reserves its tokens before generation (the prompt's estimate plus the
requested maximum, the way OpenAI's own limiter counts) and settles them against real usage
after, handing back what it did not use.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.storage import storage_from_string

from chatbot_api.config import Settings
from chatbot_api.context import current_request
from chatbot_api.errors import RateLimitError
from chatbot_api.security.auth import Principal

__all__ = [
    "Quota",
    "RateLimiter",
    "format_reset",
    "settle_after",
    "used_tokens",
]

logger = logging.getLogger(__name__)

_WINDOW_SECONDS = 60
# Names the counters in storage; the amounts live in the settings and the keys.
_ITEM = RateLimitItemPerMinute(1, namespace="chatbot")
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
class _Window:
    """One counter (requests or tokens) of one caller in the current minute."""

    name: str
    limit: int
    used: int
    reset: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(slots=True)
class Quota:
    """What one admitted request took; its headers, and the settlement of its tokens."""

    limiter: RateLimiter | None = None
    token_key: str | None = None
    reserved_tokens: int = 0
    windows: list[_Window] = field(default_factory=list)
    settled: bool = False

    @property
    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for window in self.windows:
            headers[f"x-ratelimit-limit-{window.name}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{window.name}"] = str(window.remaining)
            headers[f"x-ratelimit-reset-{window.name}"] = format_reset(window.reset)
        return headers

    async def settle(self, used_tokens: int | None) -> None:
        """Hand back the reserved tokens that were not used. ``None``: usage unknown, keep all."""
        if self.settled:
            return
        self.settled = True
        if self.limiter is None or self.token_key is None or used_tokens is None:
            return
        unused = self.reserved_tokens - used_tokens
        if unused > 0:
            await self.limiter.give_back(self.token_key, unused)


UNLIMITED = Quota()


class RateLimiter:
    """Fixed one-minute windows of requests and tokens, in ``limits`` storage."""

    def __init__(
        self, storage: Storage, *, rpm: int, tpm: int, auth_failures_per_minute: int
    ) -> None:
        self._storage = storage
        self._rpm = rpm
        self._tpm = tpm
        self._auth_failures = auth_failures_per_minute

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """Counters in Redis when ``CHATBOT_REDIS_URL`` is set, else in this process."""
        if settings.redis_url is None:
            storage: Storage = MemoryStorage()
        else:
            scheme, _, rest = settings.redis_url.get_secret_value().partition("://")
            created = storage_from_string(f"async+{scheme}://{rest}", key_prefix="chatbot-api")
            assert isinstance(created, Storage)
            storage = created
        return cls(
            storage,
            rpm=settings.rate_limit_rpm,
            tpm=settings.rate_limit_tpm,
            auth_failures_per_minute=settings.auth_failures_per_minute,
        )

    async def admit(self, principal: Principal, address: str, *, tokens: int) -> Quota:
        """Admit one chat completion of ``principal``; the master key is never limited."""
        if principal.kind == "master":
            return UNLIMITED
        key = principal.key
        if key is None:
            return await self.acquire(
                f"address:{address}", rpm=self._rpm, tpm=self._tpm, tokens=tokens
            )
        rpm = self._rpm if key.rpm is None else key.rpm
        tpm = self._tpm if key.tpm is None else key.tpm
        return await self.acquire(f"key:{key.id}", rpm=rpm, tpm=tpm, tokens=tokens)

    async def check(self) -> bool:
        """Whether the storage answers (a Redis that is down does not)."""
        return await self._storage.check()

    async def aclose(self) -> None:
        if isinstance(self._storage, MemoryStorage):
            if self._storage.timer is not None:
                self._storage.timer.cancel()
            return
        # limits keeps its Redis client (coredis) on the storage's bridge and offers no close.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    @staticmethod
    def _window() -> tuple[int, float]:
        now = time.time()
        index = int(now // _WINDOW_SECONDS)
        return index, (index + 1) * _WINDOW_SECONDS - now

    def _key(self, kind: str, identity: str, window: int) -> str:
        return _ITEM.key_for(kind, identity, str(window))

    async def acquire(self, identity: str, *, rpm: int, tpm: int, tokens: int) -> Quota:
        """Count one request and reserve ``tokens``; 429 when either limit would be passed.

        A limit of 0 is no limit. A refused request takes nothing from either window. When the
        counters' storage (Redis) does not answer, the request is let through and the outage
        logged: a limiter that is down should not take the API down with it.
        """
        if rpm <= 0 and tpm <= 0:
            return UNLIMITED
        window, reset = self._window()
        quota = Quota(limiter=self)
        taken: list[tuple[str, int, _Window]] = []
        try:
            for name, limit, cost in (("requests", rpm, 1), ("tokens", tpm, tokens)):
                if limit <= 0:
                    continue
                key = self._key(name, identity, window)
                counter = _Window(name, limit, await self._count(key, cost), reset)
                taken.append((key, cost, counter))
                quota.windows.append(counter)
                if name == "tokens":
                    quota.token_key, quota.reserved_tokens = key, cost
                if counter.used > limit:
                    for key, cost, each in taken:
                        await self.give_back(key, cost)
                        each.used -= cost
                    raise _refusal(counter, tokens, quota.headers)
        except self._storage.base_exceptions:
            _storage_failed()
            return UNLIMITED
        return quota

    async def _count(self, key: str, amount: int) -> int:
        return await self._storage.incr(key, _COUNTER_TTL, amount=amount)

    async def give_back(self, key: str, amount: int) -> None:
        try:
            await self._count(key, -amount)
        except self._storage.base_exceptions:
            _storage_failed()

    async def refuse_if_failing_auth(self, address: str) -> None:
        """429 while ``address`` has failed authentication too often this minute."""
        if self._auth_failures <= 0:
            return
        window, reset = self._window()
        try:
            failures = await self._storage.get(self._key("auth-failures", address, window))
        except self._storage.base_exceptions:
            _storage_failed()
            return
        if failures >= self._auth_failures:
            raise RateLimitError(
                "Too many requests with an invalid API key from your address. Please retry "
                f"after {format_reset(reset)}.",
                retry_after=reset,
                code="too_many_auth_failures",
            )

    async def count_auth_failure(self, address: str) -> None:
        if self._auth_failures > 0:
            window, _ = self._window()
            try:
                await self._count(self._key("auth-failures", address, window), 1)
            except self._storage.base_exceptions:
                _storage_failed()


def _storage_failed() -> None:
    logger.error("rate-limit storage unavailable; letting the request through", exc_info=True)


def _refusal(window: _Window, tokens: int, headers: dict[str, str]) -> RateLimitError:
    if window.name == "tokens" and tokens > window.limit:
        # No wait helps: the request alone is larger than a whole minute's allowance.
        return RateLimitError(
            f"Request too large: the limit is {window.limit} tokens per minute and this "
            f"request needs {tokens} (prompt plus max_completion_tokens). Lower "
            "max_completion_tokens or shorten the messages.",
            retry_after=window.reset,
            limit="tokens",
            headers={**headers, "x-should-retry": "false"},
        )
    return RateLimitError(
        f"Rate limit reached for {window.name} per minute: limit {window.limit}, used "
        f"{window.used}. Please try again in {format_reset(window.reset)}.",
        retry_after=window.reset,
        limit="tokens" if window.name == "tokens" else "requests",
        headers=headers,
    )


async def settle_after(stream: AsyncIterator[str], quota: Quota) -> AsyncIterator[str]:
    """Pass a completion's SSE payloads through, settling its tokens once the stream ends."""
    try:
        async for payload in stream:
            yield payload
    finally:
        await quota.settle(used_tokens())


def used_tokens() -> int | None:
    """The current request's real usage, once its provider has reported it."""
    context = current_request()
    if context is None or context.prompt_tokens is None or context.completion_tokens is None:
        return None
    return context.prompt_tokens + context.completion_tokens
