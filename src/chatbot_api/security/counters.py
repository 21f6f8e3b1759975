"""Where the rate limiter keeps its counters: in this process, or in Redis for every worker.

The Redis side is the ``limits`` library's storage (its atomic increment-with-expiry script,
and ours doing the same for several counters in one round trip), so that several workers and
replicas count against one limit. In one process a dict does:
``limits``' own in-memory storage sweeps every counter it holds on every increment, which at
a thousand live counters costs more than the rest of a request (see docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from limits.aio.storage import Storage
from limits.storage import storage_from_string

__all__ = ["Counters", "InProcessCounters", "RedisCounters"]


class Counters(Protocol):
    #: What a storage that cannot answer raises.
    errors: tuple[type[Exception], ...]

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        """Add ``amount`` (which may be negative) and return the new value."""
        ...

    async def incr_many(self, amounts: Sequence[tuple[str, int]], expiry: int) -> tuple[int, ...]:
        """:meth:`incr` for each ``(key, amount)``, in order."""
        ...

    async def aclose(self) -> None: ...


class InProcessCounters:
    """Counters in a dict, each dropped ``expiry`` seconds after it was made."""

    errors: tuple[type[Exception], ...] = ()
    _SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._swept = time.monotonic()

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        now = time.monotonic()
        if now - self._swept >= self._SWEEP_SECONDS:
            self._sweep(now)
        value = self._values.get(key, 0) + amount
        self._values[key] = value
        self._expires.setdefault(key, now + expiry)
        return value

    async def incr_many(self, amounts: Sequence[tuple[str, int]], expiry: int) -> tuple[int, ...]:
        return tuple([await self.incr(key, amount, expiry=expiry) for key, amount in amounts])

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [key for key, at in self._expires.items() if at <= now]:
            del self._expires[key]
            del self._values[key]

    async def aclose(self) -> None:
        self._values.clear()
        self._expires.clear()


_INCR_MANY = """
local values = {}
local expiry = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  local value = redis.call('INCRBY', key, ARGV[i])
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, expiry) end
  values[i] = value
end
return values
"""


class RedisCounters:
    """Counters in Redis through ``limits``' storage (coredis underneath)."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        storage = storage_from_string(f"async+{scheme}://{rest}", key_prefix="chatbot-api")
        assert isinstance(storage, Storage)
        self._storage = storage
        errors = storage.base_exceptions
        self.errors = errors if isinstance(errors, tuple) else (errors,)
        # limits' storage has no call for several counters; its client (coredis) runs ours,
        # the same INCRBY-then-EXPIRE as limits' own script, for each key.
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        register = getattr(client, "register_script", None)
        self._incr_many: Any = register(_INCR_MANY) if register is not None else None

    async def incr(self, key: str, amount: int, *, expiry: int) -> int:
        return await self._storage.incr(key, expiry, amount=amount)

    async def incr_many(self, amounts: Sequence[tuple[str, int]], expiry: int) -> tuple[int, ...]:
        """Every counter in one round trip: a request's admission is one call, not two."""
        if self._incr_many is None:
            return tuple([await self.incr(key, amount, expiry=expiry) for key, amount in amounts])
        bridge = self._storage.bridge  # type: ignore[attr-defined]  # limits' Redis storages
        values = await self._incr_many(
            keys=[bridge.prefixed_key(key) for key, _ in amounts],
            args=[*(amount for _, amount in amounts), expiry],
        )
        return tuple(int(value) for value in values)

    async def aclose(self) -> None:
        # limits keeps its Redis client on the storage's bridge and offers no close.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
