"""One deployment's HTTP side: a pooled ``httpx2`` client (HTTP/1.1 keep-alive) that posts a
chat-completion body and hands back the upstream's bytes, or a :class:`DeploymentError` that says
what the client would be told and how the deployment's health counts it.

Upstream faults become our errors, never quoting the upstream's answer where it could hold
our key:

    upstream                          ours                                    counted as
    400, 422                          400 with the upstream's message         (the client's)
    401, 403, 404, other 4xx          502 upstream_error                      refused
    429                               429 with its retry-after-ms/Retry-After rate_limited
    5xx                               502 upstream_error                      server_error
    no connection, a drop             502 upstream_error                      unreachable/dropped
    no chat completion (a web page)   502 upstream_error                      bad_answer
    a timeout                         504 upstream_timeout                    timeout

``timeout`` bounds a whole JSON answer, and a stream's wait for its first chunk and then for
each next one: an upstream that trickles bytes or sends only keep-alive comments is cut there.
An upstream's message passed on is first cleared of our key for it, should it quote it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import msgspec

from chatbot_api.errors import (
    ChatbotAPIError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from chatbot_api.providers.gateway.config import DeploymentConfig

__all__ = ["DeploymentError", "Upstream", "failure_of"]

logger = logging.getLogger(__name__)

#: Most bytes of an upstream's error answer read (for its message); the rest is dropped.
_ERROR_BODY_LIMIT = 64 * 1024
#: Keep-alive connections kept per deployment: enough for the concurrency one process serves.
_KEEPALIVE = 256
#: The longest an upstream's 429 may keep a deployment out (a Retry-After of years is a bug).
_LONGEST_WAIT_SECONDS = 3600.0
#: What an upstream's answer may fail to decode with (bad UTF-8, nesting past the parser).
_UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)

_decode = msgspec.json.decode


class DeploymentError(Exception):
    """A deployment's failure. ``kind`` is its label in the metrics, None when the request
    itself was at fault (a 400), which no other deployment would answer otherwise."""

    def __init__(
        self, error: ChatbotAPIError, kind: str | None, *, retry_after: float | None = None
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.kind = kind
        self.retry_after = retry_after


class Upstream:
    def __init__(self, config: DeploymentConfig, key: str | None) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        self._key = key
        self._timeout = config.timeout
        # No cap on connections: the deployment's max_concurrency is enforced before a request
        # is sent, and a pool that queued would make a refused request wait instead.
        self._client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            limits=httpx2.Limits(
                max_connections=None,
                max_keepalive_connections=min(config.max_concurrency or _KEEPALIVE, _KEEPALIVE),
                keepalive_expiry=30.0,
            ),
        )
        self._url = config.base_url.rstrip("/") + "/chat/completions"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def answer(self, payload: bytes) -> tuple[bytes, dict[str, Any]]:
        """The ``chat.completion`` the upstream answers ``payload`` with, read whole."""
        with _faults():
            async with asyncio.timeout(self._timeout):
                response = await self._open(payload)
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        document = _completion(body, "choices")
        if document is None:
            logger.warning("the upstream did not answer with a chat completion")
            raise DeploymentError(UpstreamError(None, answered=True), "bad_answer")
        return body, document

    async def stream(self, payload: bytes) -> AsyncGenerator[tuple[bytes, dict[str, Any]], None]:
        """The ``data`` payloads of the upstream's event stream, up to its ``[DONE]``. A stream
        that ends without a chunk, or holds something else, fails with ``bad_answer``."""
        received = False
        with _faults(dropped=lambda: received):
            async with asyncio.timeout(self._timeout):
                response = await self._open(payload)
            try:
                events = _data(response.aiter_bytes())
                while True:
                    async with asyncio.timeout(self._timeout):
                        data = await anext(events, b"[DONE]")
                    if data == b"[DONE]":
                        break
                    document = _completion(data, "choices")
                    if document is None:
                        if received:
                            logger.warning("the upstream's stream failed part-way")
                            raise DeploymentError(UpstreamError(None), "dropped")
                        break
                    received = True
                    yield data, document
            finally:
                await response.aclose()
        if not received:
            logger.warning("the upstream did not answer with a chat completion stream")
            raise DeploymentError(UpstreamError(None, answered=True), "bad_answer")

    async def _open(self, payload: bytes) -> httpx2.Response:
        """Send ``payload``; the response once its status is a success, its body unread."""
        client = self._client
        response = await client.send(
            client.build_request("POST", self._url, content=payload), stream=True
        )
        if response.status_code < 300:
            return response
        try:
            body = b""
            async for piece in response.aiter_bytes():  # decompressed, unlike aiter_raw
                body += piece
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        except Exception:
            body = b""  # the status says enough
        finally:
            await response.aclose()
        raise _refused(response.status_code, response.headers, body, self._key)


async def _data(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data:`` lines of an event stream, as bytes: nothing is decoded but the JSON."""
    pending = b""
    async for piece in pieces:
        pending += piece
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):  # else a blank line, a comment, an event name
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


@contextmanager
def _faults(*, dropped: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Every way a call to the upstream can fail, as the :class:`DeploymentError` it is
    (``dropped()``: whether the answer had begun to reach the client)."""
    try:
        yield
    except TimeoutError:
        raise _timed_out() from None
    except DeploymentError:
        raise
    except Exception as exc:
        raise failure_of(exc, dropped=dropped()) from None


def _timed_out() -> DeploymentError:
    logger.warning("the upstream timed out")
    return DeploymentError(UpstreamTimeoutError(), "timeout")


def failure_of(exc: BaseException, *, dropped: bool = False) -> DeploymentError:
    """The failure an exception of the HTTP client stands for (anything else is ours)."""
    if isinstance(exc, httpx2.TimeoutException):
        return _timed_out()
    if isinstance(exc, httpx2.HTTPError):
        logger.warning("the upstream failed: %s", type(exc).__name__)
        return DeploymentError(UpstreamError(None), "dropped" if dropped else "unreachable")
    raise exc


def _refused(status: int, headers: httpx2.Headers, body: bytes, key: str | None) -> DeploymentError:
    logger.warning("the upstream answered %s", status, extra={"upstream_status": status})
    if status in (400, 422):
        document = _completion(body, "error")
        document = document if document is not None else {}
        error = document.get("error")
        # OpenAI nests the error; vLLM's and others' are the body itself.
        error = error if isinstance(error, dict) else document
        message = error.get("message")
        param, code = error.get("param"), error.get("code")
        if not isinstance(message, str) or not message:
            message = f"The upstream answered {status}: it refused the request."
        return DeploymentError(
            InvalidRequestError(
                _cleared(message, key),
                param=_cleared(param, key) if isinstance(param, str) else None,
                code=_cleared(code, key) if isinstance(code, str) else None,
            ),
            None,
        )
    if status == 429:
        wait = _retry_after(headers)
        error = RateLimitError(
            "The upstream model service is rate limiting us; please retry later.",
            retry_after=wait if wait is not None else 1.0,
        )
        return DeploymentError(error, "rate_limited", retry_after=wait)
    return DeploymentError(UpstreamError(status), "server_error" if status >= 500 else "refused")


def _cleared(text: str, key: str | None) -> str:
    """``text`` without our key for the upstream, should the upstream quote it."""
    return text.replace(key, "[redacted]") if key else text


def _completion(data: bytes, key: str) -> dict[str, Any] | None:
    """``data`` as a JSON object holding ``key`` (a list of choices, an error), else None."""
    try:
        document = _decode(data)
    except _UNDECODABLE:
        return None
    if not isinstance(document, dict):
        return None
    found = document.get(key)
    if key == "choices" and not isinstance(found, list):
        return None
    return document


def _retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds the upstream asks us to wait: ``retry-after-ms``, else ``Retry-After``; None
    when neither holds a finite number of seconds (an HTTP date is not read)."""
    for name, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            seconds = float(headers.get(name, "")) / per_second
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, _LONGEST_WAIT_SECONDS)
    return None
