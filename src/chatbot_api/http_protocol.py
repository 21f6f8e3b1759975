"""uvicorn's httptools protocol, with bounds on what a client may send before its headers end.

httptools keeps every byte of a request's head until the blank line that ends it, and
uvicorn waits for that line for ever: one connection sending headers that never end grew a
worker by a gigabyte in seconds, and one sending a line every few seconds held its connection
indefinitely. :class:`BoundedHttpToolsProtocol` (given to uvicorn as its ``http`` class)
answers, in OpenAI's envelope, and closes the connection:

* 431 once more than :data:`~chatbot_api.security.hardening.MAX_HEADER_BYTES` have arrived
  without the head ending;
* 408 when a head has not ended ``CHATBOT_BODY_TIMEOUT_SECONDS`` after the connection
  opened or, on a kept-alive connection, after its first byte arrived;
* 431 too for more than as many bytes of trailers after a chunked body, which ASGI has no
  place for and which are dropped (uvicorn would add them to the headers the app was given);
* 400 for what is not HTTP/1.1 at all (a bad chunk size, two ``Content-Length`` headers, a
  TLS handshake), which uvicorn answers in plain text.

Heads within the bounds go on to :class:`~chatbot_api.security.hardening.HardeningMiddleware`,
which counts the headers the app is given exactly.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from functools import cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatbot_api.config import Settings
from chatbot_api.errors import (
    ChatbotAPIError,
    InvalidRequestError,
    RequestHeadersTooLargeError,
    RequestTimeoutError,
)
from chatbot_api.security.hardening import MAX_HEADER_BYTES

__all__ = ["BoundedHttpToolsProtocol"]


@cache
def _head_timeout_seconds() -> float:
    """Read once per worker process: uvicorn builds the protocol without our settings."""
    return Settings().body_timeout_seconds


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _in_head = True
    _head_bytes = 0
    _trailer_bytes = 0
    _head_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_in_head = self._in_head
        super().data_received(data)
        # Counted only when the whole piece belongs to a head: one that also ended a body
        # before it is not, so the bound is passed by at most one piece.
        if was_in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self._refuse_head(RequestHeadersTooLargeError(MAX_HEADER_BYTES))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._start_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)
            return
        # A trailer of a chunked body: dropped, and counted against the headers' bound.
        self._trailer_bytes += len(name) + len(value)
        if self._trailer_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._refuse(RequestHeadersTooLargeError(MAX_HEADER_BYTES))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses: ours is in the envelope."""
        self._refuse(InvalidRequestError("The request is not valid HTTP/1.1.", code="invalid_http"))

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._trailer_bytes = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(_head_timeout_seconds(), self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse_head(RequestTimeoutError("headers"))

    def _refuse_head(self, error: ChatbotAPIError) -> None:
        """Refuse a head. One pipelined behind a request still being answered only closes the
        connection: an answer to it written now would be read as the earlier request's."""
        if self.cycle is not None and not self.cycle.response_complete:
            self._stop_head_timer()
            self.transport.close()
            return
        self._refuse(error)

    def _refuse(self, error: ChatbotAPIError) -> None:
        """Answer ``error`` in the envelope and close: the rest of the request is never read.
        An answer already begun is not interrupted by another: the connection only closes."""
        self._stop_head_timer()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()
            return
        body = json.dumps(error.to_body().model_dump()).encode()
        head = [
            f"HTTP/1.1 {error.status_code} {_REASONS[error.status_code]}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.transport.close()


_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
