"""Responses created with ``background: true``: generated in a task of this server while
the client is free to leave, read with ``GET``, stopped with ``cancel``.

The response row is written first (``queued``) with a lease this server renews every
``renew_seconds`` while it works. A cancel writes ``cancelled`` from whichever server or
worker takes it; the one running the response sees it at its next renewal (at once when it is
the same process) and stops. A server that stops without finishing (a crash, a kill) stops
renewing: once its lease is over, a reader finds the response ``failed`` with an error that
says so, never ``in_progress`` for ever. A graceful shutdown marks its responses failed itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatbot_api.errors import ChatbotAPIError, internal_error
from chatbot_api.services.response_events import ResponseBuilder
from chatbot_api.services.responses import PreparedResponse, ResponseService, close_events
from chatbot_api.store.responses import ResponseRecord

__all__ = ["BackgroundResponses"]

logger = logging.getLogger(__name__)

Settle = Callable[[int | None], Awaitable[None]]


class BackgroundResponses:
    def __init__(self, service: ResponseService, *, renew_seconds: float = 2.0) -> None:
        self._service = service
        self._store = service.responses
        self._renew_seconds = renew_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._renewer: asyncio.Task[None] | None = None

    def _lease(self) -> int:
        return int(time.time()) + self._store.lease_seconds

    async def start(self, prepared: PreparedResponse, settle: Settle) -> dict[str, Any]:
        """Store the response as ``queued`` and begin generating it; its object now."""
        builder = prepared.builder()
        queued = builder.response("queued")
        record = ResponseRecord(
            id=prepared.id,
            owner=prepared.owner,
            model=prepared.chat.spec.id,
            created_at=prepared.created_at,
            status="queued",
            background=True,
            previous_response_id=prepared.request.previous_response_id,
            conversation_id=prepared.conversation_id,
            request_id=prepared.request_id,
            body=queued,
            input_tokens=0,
            output_tokens=0,
            lease_until=self._lease(),
        )
        await self._store.save(
            record,
            prepared.input_items,
            [],
            owner=prepared.owner,
            conversation_id=prepared.conversation_id,
        )
        task = asyncio.create_task(
            self._run(prepared, builder, settle), name=f"background-{prepared.id}"
        )
        self._tasks[prepared.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(prepared.id, None))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="background-leases")
        return queued

    async def _run(
        self, prepared: PreparedResponse, builder: ResponseBuilder, settle: Settle
    ) -> None:
        used: int | None = None
        try:
            await self._store.set_status(prepared.id, "in_progress", self._lease())
            first, events = await self._service.begin(prepared)
            try:
                if first is not None:
                    builder.add(first)
                    async for event in events:
                        builder.add(event)
            finally:
                await close_events(events)
            builder.finish()
            used = builder.input_tokens + builder.output_tokens
        except ChatbotAPIError as exc:
            logger.warning("background response failed: %s", exc.message, extra={"code": exc.code})
            builder.fail(exc)
        except asyncio.CancelledError:
            logger.info("background response stopped", extra={"response_id": prepared.id})
            raise
        except Exception:
            logger.exception("background response failed unexpectedly")
            builder.fail(internal_error(prepared.request_id))
        finally:
            await settle(used)
        try:
            await self._store.finish(
                prepared.id,
                builder.response(),
                builder.output if builder.status != "failed" else [],
                owner=prepared.owner,
                conversation_id=prepared.conversation_id,
                input_tokens=builder.input_tokens,
                output_tokens=builder.output_tokens,
            )
        except ChatbotAPIError as exc:
            # Its lease runs out and readers find it failed: nothing is left in progress.
            logger.error(
                "a background response could not be stored",
                extra={"response_id": prepared.id, "error": exc.message},
            )

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        body = await self._store.cancel(owner, response_id)
        task = self._tasks.get(response_id)
        if task is not None:
            task.cancel()
        return body

    async def _renew(self) -> None:
        while self._tasks:
            await asyncio.sleep(self._renew_seconds)
            ids = list(self._tasks)
            if not ids:
                break
            try:
                stopped = await self._store.renew(ids, self._lease())
            except ChatbotAPIError:
                continue  # the database is away; the next renewal tries again
            for response_id in stopped:
                task = self._tasks.get(response_id)
                if task is not None:
                    task.cancel()

    async def close(self) -> None:
        """Stop every response still running and record that the server shut down."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if tasks:
            try:
                await self._store.abandon(
                    list(tasks),
                    "The server shut down before this response finished; nothing more will "
                    "be generated. Create the response again.",
                )
            except ChatbotAPIError:
                logger.error("could not record the background responses stopped at shutdown")
