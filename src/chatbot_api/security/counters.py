"""Where the rate limiter keeps its counters: in this process, or in Redis for every worker.

The Redis side is the ``limits`` library's storage (coredis underneath), with one Lua script
of ours for admission: it reads a request's two counters, admits only if both stay within
their limits, and only then adds to both, so that nobody ever reads a count inflated by a
request that is then refused, and two workers cannot both take the last place. The
in-process counters do the same in a dict: ``limits``' own in-memory storage sweeps every
counter it holds on every increment, which at a thousand live counters costs more than the
rest of a request (see docs/benchmarks.md).

Every Redis call is bounded by a timeout; after a failure the counters report themselves
unavailable, without asking, for a second, then let one call find out whether Redis is back.
A Redis that hangs thus costs one request a timeout a second, not every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from limits.aio.storage import Storage
from limits.storage import storage_from_string

__all__ = [
    "Admission",
    "Counters",
    "CountersUnavailableError",
    "InProcessCounters",
    "RedisCounters",
]

_T = TypeVar("_T")


class CountersUnavailableError(Exception):
    """The counters cannot answer now: Redis timed out, failed a moment ago, or is probed."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The two counters after an admission, and whether it was granted (if not, they are
    as they were)."""

    requests: int
    tokens: int
    admitted: bool


class Counters(Protocol):
    #: What a storage that cannot answer raises.
    errors: tuple[type[Exception], ...]

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        """Add ``amount`` (which may be negative) and return the new value."""
        ...

    async def admit(
        self,
        requests_key: str,
        tokens_key: str,
        *,
        requests: int,
        tokens: int,
        request_limit: int,
        token_limit: int,
        expiry: int,
    ) -> Admission:
        """Add ``requests`` and ``tokens`` to their counters only if both then stay within
        their limits (a limit of 0 is none), as one atomic step."""
        ...

    async def aclose(self) -> None: ...


def _within(value: int, cost: int, limit: int) -> bool:
    return limit <= 0 or value + cost <= limit


class InProcessCounters:
    """Counters in a dict, each dropped ``expiry`` seconds after it was made."""

    errors: tuple[type[Exception], ...] = ()
    _SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._swept = time.monotonic()

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        return self._add(key, amount, expiry, time.monotonic())

    def _add(self, key: str, amount: int, expiry: int, now: float) -> int:
        if now - self._swept >= self._SWEEP_SECONDS:
            self._sweep(now)
        value = self._values.get(key, 0) + amount
        self._values[key] = value
        self._expires.setdefault(key, now + expiry)
        return value

    async def admit(
        self,
        requests_key: str,
        tokens_key: str,
        *,
        requests: int,
        tokens: int,
        request_limit: int,
        token_limit: int,
        expiry: int,
    ) -> Admission:
        # No await between reading and adding: atomic on the event loop.
        now = time.monotonic()
        if now - self._swept >= self._SWEEP_SECONDS:
            self._sweep(now)
        used_requests = self._values.get(requests_key, 0)
        used_tokens = self._values.get(tokens_key, 0)
        if not (
            _within(used_requests, requests, request_limit)
            and _within(used_tokens, tokens, token_limit)
        ):
            return Admission(used_requests, used_tokens, admitted=False)
        return Admission(
            self._add(requests_key, requests, expiry, now),
            self._add(tokens_key, tokens, expiry, now),
            admitted=True,
        )

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [key for key, at in self._expires.items() if at <= now]:
            del self._expires[key]
            del self._values[key]

    async def aclose(self) -> None:
        self._values.clear()
        self._expires.clear()


# KEYS: the requests and the tokens counter. ARGV: their costs, their limits (0: none), expiry.
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local request_cost, token_cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local request_limit, token_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if (request_limit > 0 and requests + request_cost > request_limit)
    or (token_limit > 0 and tokens + token_cost > token_limit) then
  return {requests, tokens, 0}
end
requests = redis.call('INCRBY', KEYS[1], request_cost)
tokens = redis.call('INCRBY', KEYS[2], token_cost)
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, tonumber(ARGV[5])) end
end
return {requests, tokens, 1}
"""

#: After a failure, how long the counters answer "unavailable" without asking Redis.
_DOWN_SECONDS = 1.0


class RedisCounters:
    """Counters in Redis through ``limits``' storage (coredis underneath)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        scheme, _, rest = url.partition("://")
        # coredis' own timeouts keep a hung connection from holding waiters; ours (below)
        # bounds the whole call, a wait for a pooled connection included.
        storage = storage_from_string(
            f"async+{scheme}://{rest}",
            key_prefix="chatbot-api",
            connect_timeout=timeout,
            stream_timeout=timeout,
        )
        assert isinstance(storage, Storage)
        self._storage = storage
        self._timeout = timeout
        errors = storage.base_exceptions
        self.errors: tuple[type[Exception], ...] = (
            *(errors if isinstance(errors, tuple) else (errors,)),
            CountersUnavailableError,
        )
        self._down_until = 0.0
        self._probing = False
        # limits' storage runs no script of ours; its client (coredis) does.
        bridge: Any = storage.bridge  # type: ignore[attr-defined]  # limits' Redis storages
        self._bridge = bridge
        self._admit: Any = bridge.storage.register_script(_ADMIT)

    async def _bounded(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()`` within the timeout, unless Redis failed a moment ago."""
        now = time.monotonic()
        if now < self._down_until or self._probing:
            raise CountersUnavailableError("Redis failed a moment ago; not asked")
        # The first call after a failure finds out alone whether Redis is back.
        self._probing = self._down_until > 0
        try:
            async with asyncio.timeout(self._timeout):
                result = await call()
        except TimeoutError:
            self._down_until = time.monotonic() + _DOWN_SECONDS
            raise CountersUnavailableError(
                f"Redis did not answer within {self._timeout} s"
            ) from None
        except self.errors:
            self._down_until = time.monotonic() + _DOWN_SECONDS
            raise
        except Exception as exc:
            # Not every failure of a lost connection is a RedisError: coredis lets uvloop's
            # RuntimeError ("the handler is closed") through when it writes to a dropped one.
            self._down_until = time.monotonic() + _DOWN_SECONDS
            raise CountersUnavailableError(f"Redis client failed: {exc!r}") from exc
        finally:
            self._probing = False
        self._down_until = 0.0
        return result

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        return await self._bounded(lambda: self._storage.incr(key, expiry, amount=amount))

    async def admit(
        self,
        requests_key: str,
        tokens_key: str,
        *,
        requests: int,
        tokens: int,
        request_limit: int,
        token_limit: int,
        expiry: int,
    ) -> Admission:
        """One round trip and one atomic step for both counters (see ``_ADMIT``)."""
        keys = [self._bridge.prefixed_key(requests_key), self._bridge.prefixed_key(tokens_key)]
        args = [requests, tokens, request_limit, token_limit, expiry]
        used_requests, used_tokens, admitted = await self._bounded(
            lambda: self._admit(keys=keys, args=args)
        )
        return Admission(int(used_requests), int(used_tokens), admitted=bool(admitted))

    async def aclose(self) -> None:
        # limits keeps its Redis client on the storage's bridge and offers no close; every
        # coredis client (plain, sentinel, cluster) has a connection pool.
        self._bridge.storage.connection_pool.disconnect()
