"""Turning an ``Authorization`` header into a principal, and the open mode's rules.

Authentication is on once a master key is set or any API key exists. With neither, the API
is open: ``serve`` allows that only on a loopback address (or with ``CHATBOT_AUTH=disabled``),
and the server says so at start. A key made while a server runs open turns authentication on
within a second, without a restart. A database that does not answer while a key is checked
is a 503 ``database_unavailable``, not a 500: the master key still works, it needs no lookup.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError

from chatbot_api.config import Settings
from chatbot_api.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    PermissionDeniedError,
)
from chatbot_api.security.keys import KeyRecord, KeyStore

__all__ = ["Authenticator", "Principal", "is_loopback"]

logger = logging.getLogger(__name__)

_OPEN_RECHECK_SECONDS = 1.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["open", "master", "key"]
    key: KeyRecord | None = None

    @property
    def owner(self) -> str:
        """Whose stored completions this caller sees."""
        if self.key is not None:
            return self.key.id
        return "master" if self.kind == "master" else ""

    def may_use(self, model: str) -> bool:
        return self.key is None or self.key.may_use(model)

    def require_admin(self) -> None:
        if self.kind != "master":
            raise PermissionDeniedError("This endpoint needs the master key.")


OPEN = Principal("open")
MASTER = Principal("master")


class Authenticator:
    def __init__(self, settings: Settings, keys: KeyStore) -> None:
        self._keys = keys
        self._master = settings.master_key.get_secret_value() if settings.master_key else None
        self._disabled = settings.auth == "disabled"
        self._keys_exist = False
        self._checked_at = float("-inf")

    def _is_master(self, token: str) -> bool:
        return self._master is not None and _compare(token, self._master)

    async def required(self) -> bool:
        if self._disabled:
            return False
        if self._master is not None or self._keys_exist:
            return True
        now = time.monotonic()
        if now - self._checked_at >= _OPEN_RECHECK_SECONDS:
            self._checked_at = now
            try:
                self._keys_exist = await self._keys.any()
            except (SQLAlchemyError, OSError) as exc:
                # No key can be made while the database is away: an open server stays open
                # rather than refusing everybody until it is back.
                logger.warning("could not check whether API keys exist", extra=_failure(exc))
        return self._keys_exist

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        if token is not None and self._is_master(token):
            return MASTER
        if not await self.required():
            return OPEN
        if token is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Authorization: Bearer YOUR_KEY'."
            )
        try:
            record = await self._keys.authenticate(token)
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("API keys could not be read", extra=_failure(exc))
            raise DatabaseUnavailableError(
                "The database is not answering; API keys cannot be checked right now. Please "
                "retry shortly."
            ) from None
        if record is None:
            raise AuthenticationError(
                "Incorrect API key provided, or the key was revoked or has expired."
            )
        return Principal("key", record)


def _failure(exc: BaseException) -> dict[str, str]:
    return {"error": str(exc).split("\n", 1)[0] or type(exc).__name__}


def _compare(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
