"""API keys: made, listed, revoked and checked. Only a key's SHA-256 is stored.

A key reads ``sk-cb-<prefix><secret>``: the 12-character prefix is not secret and finds the
row; the whole key's hash is compared in constant time. A key is shown once, when made.

A revocation or expiry counts on the very next request, in every worker. Expiry is checked
on each request. For revocation, PostgreSQL is asked on each request; on SQLite, whose
readers share one machine, each process keeps the keys it has seen in memory, and a
revocation writes fresh random bytes into a small marker file beside the database
(``<database>-keys``) that every process has mapped into memory: a request compares those
bytes with the ones its cache was filled under, without a system call, and reads the
database again when they differ. Reading the row on every request through aiosqlite was the
largest cost of authentication under load (see docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import mmap
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update

from chatbot_api.db.engine import Database
from chatbot_api.db.tables import ApiKey

__all__ = ["KEY_PATTERN", "KeyRecord", "KeyStore", "parse_duration"]

_SCHEME = "sk-cb-"
_MARKER_BYTES = 16
_PREFIX_LENGTH = 12
KEY_PATTERN = re.compile(r"^sk-cb-([0-9a-f]{12})[A-Za-z0-9_-]{32,64}$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    created: int
    expires_at: int | None
    revoked_at: int | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "prefix": f"{_SCHEME}{self.prefix}",
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created": self.created,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _record(row: Mapping[Any, Any]) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        models=tuple(models) if models is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        created=row["created"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    def __init__(self, database: Database) -> None:
        self._database = database
        sqlite_file = database.sqlite_file
        self._marker_path = (
            sqlite_file.with_name(f"{sqlite_file.name}-keys") if sqlite_file else None
        )
        self._marker: mmap.mmap | None = None
        #: prefix -> (secret hash, record), valid while the marker holds ``_stamp``.
        self._cache: dict[str, tuple[str, KeyRecord]] = {}
        self._stamp = b""

    def _mapped_marker(self) -> mmap.mmap | None:
        """The marker, mapped shared: a write by any process is seen by all at once."""
        if self._marker is None and self._marker_path is not None:
            descriptor = os.open(self._marker_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(descriptor).st_size < _MARKER_BYTES:
                    os.ftruncate(descriptor, _MARKER_BYTES)
                self._marker = mmap.mmap(descriptor, _MARKER_BYTES)
            finally:
                os.close(descriptor)
        return self._marker

    def _mark_revoked(self) -> None:
        marker = self._mapped_marker()
        if marker is not None:
            marker[:] = secrets.token_bytes(_MARKER_BYTES)
        self._cache.clear()

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None

    async def create(
        self,
        name: str,
        *,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_in: int | None = None,
    ) -> tuple[str, KeyRecord]:
        """Make a key; return it (the only time it is seen) and its record."""
        prefix = secrets.token_hex(_PREFIX_LENGTH // 2)
        key = f"{_SCHEME}{prefix}{secrets.token_urlsafe(30)}"
        clock = time.time()
        now = int(clock)
        row = {
            "id": f"key_{secrets.token_hex(8)}",
            "name": name,
            "prefix": prefix,
            "secret_hash": _digest(key),
            "models": models,
            "rpm": rpm,
            "tpm": tpm,
            "created": now,
            # Rounded up: a key never lives shorter than asked.
            "expires_at": math.ceil(clock + expires_in) if expires_in is not None else None,
            "revoked_at": None,
        }
        async with self._database.write() as connection:
            await connection.execute(insert(ApiKey), [row])
        return key, _record(row)

    async def list(self) -> list[KeyRecord]:
        async with self._database.read() as connection:
            rows = (await connection.execute(select(ApiKey).order_by(ApiKey.created))).all()
        return [_record(row._mapping) for row in rows]

    async def revoke(self, key_id: str) -> KeyRecord | None:
        async with self._database.write() as connection:
            await connection.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values({ApiKey.revoked_at: int(time.time())})
            )
            row = (await connection.execute(select(ApiKey).where(ApiKey.id == key_id))).first()
        self._mark_revoked()
        return _record(row._mapping) if row is not None else None

    async def any(self) -> bool:
        async with self._database.read() as connection:
            count = (await connection.execute(select(func.count()).select_from(ApiKey))).scalar()
        return bool(count)

    async def authenticate(self, key: str) -> KeyRecord | None:
        """The usable key this string is, or None."""
        match = KEY_PATTERN.match(key)
        if match is None:
            return None
        found = await self._find(match.group(1))
        if found is None or not hmac.compare_digest(found[0], _digest(key)):
            return None
        record = found[1]
        return record if record.usable(time.time()) else None

    async def _find(self, prefix: str) -> tuple[str, KeyRecord] | None:
        marker = self._mapped_marker()
        if marker is not None:
            stamp = marker[:]
            if stamp != self._stamp:
                self._cache.clear()
                self._stamp = stamp  # before reading: a revocation meanwhile changes it again
            elif (cached := self._cache.get(prefix)) is not None:
                return cached
        async with self._database.read() as connection:
            row = (await connection.execute(select(ApiKey).where(ApiKey.prefix == prefix))).first()
        if row is None:
            return None
        found = (row.secret_hash, _record(row._mapping))
        if marker is not None:
            self._cache[prefix] = found
        return found
