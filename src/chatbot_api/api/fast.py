"""The hot path: chat completions served without FastAPI's per-request machinery.

FastAPI, for every request, runs its own middleware (exceptions, an exit stack), matches the
path against every route of every included router, builds a request, parses the
``Content-Type`` with the email package, solves the route's dependencies and validates the
body. Measured on ``echo`` chat completions, that was about a third of the server's time per
request (docs/benchmarks.md). :class:`FastRoutes`, the innermost of our ASGI layers, serves the
routes it is given itself when the request is the common one: a JSON body (or no
``Content-Type``) that reads and validates cleanly. It authenticates as the router's dependency
does, calls the very endpoint function FastAPI would, and answers errors in the same envelope.

Every other request (another content type, malformed JSON, a client gone mid-body) goes on
to FastAPI with the body it sent, so that its answer is exactly FastAPI's; a body the strict
reader or validation refuses is answered here as FastAPI's handlers answer it, without
reading it twice. The routes stay declared with
FastAPI as before, which is where the OpenAPI document comes from.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, get_type_hints

from fastapi import Request, Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_api.api.deps import authenticate, get_services
from chatbot_api.api.error_handlers import (
    BodyReadError,
    error_response,
    refusal_response,
    validation_error,
)
from chatbot_api.api.json_body import read_json
from chatbot_api.errors import ChatbotAPIError
from chatbot_api.security.auth import Principal
from chatbot_api.state import AppServices

__all__ = ["FastEndpoint", "FastRoutes"]

#: An endpoint :class:`FastRoutes` may call: ``(body, request, services, principal)``.
FastEndpoint = Callable[[Any, Request, AppServices, Principal], Awaitable[Response]]
_PARAMETERS = ("body", "request", "services", "principal")
_JSON = (None, b"application/json")


class _Route:
    """One route served here: its path (the access log and metrics read ``scope["route"]``
    as routing would have set it), the body's model and the endpoint."""

    __slots__ = ("endpoint", "model", "path")

    def __init__(self, path: str, endpoint: FastEndpoint) -> None:
        names = tuple(inspect.signature(endpoint).parameters)
        if names != _PARAMETERS:
            raise TypeError(f"{endpoint.__name__} must take {_PARAMETERS}, not {names}")
        model = get_type_hints(endpoint)["body"]
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        self.path = path
        self.model: type[BaseModel] = model
        self.endpoint = endpoint


class FastRoutes:
    """Serve ``routes`` (path -> endpoint, each also declared on the app as a ``POST`` route
    with a JSON body) here."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, FastEndpoint]) -> None:
        self.app = app
        self._routes = {path: _Route(path, endpoint) for path, endpoint in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
                break
        if content_type not in _JSON:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except BodyReadError as exc:  # the body's cap or deadline (HardeningMiddleware)
            await refusal_response(exc.error)(scope, receive, send)
            return
        if body is None:  # a client gone part-way through its body: FastAPI's 400, as it
            await self.app(scope, receive, send)  # finds the disconnect again
            return
        # The endpoint reads the body again (a relay forwards its bytes): from here, once.
        request = Request(scope, _replay(body, receive), send)
        # In FastAPI's order: the JSON is read, then the caller authenticated, then the body
        # validated, so that a caller without a key costs no validation.
        try:
            document = read_json(body)
        except ChatbotAPIError as error:  # the strict reader's refusal, as FastAPI answers it
            await refusal_response(error)(scope, receive, send)
            return
        except ValueError:  # malformed JSON: FastAPI's answer, from the body already read
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            services = await get_services(request)
            principal = await authenticate(request, services)
        except ChatbotAPIError as error:
            await error_response(error)(scope, receive, send)
            return
        try:
            validated = route.model.model_validate(document)
        except ValidationError as exc:  # located in the body, as FastAPI locates it
            errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            await refusal_response(validation_error(errors))(scope, receive, send)
            return
        try:
            response = await route.endpoint(validated, request, services, principal)
        except ChatbotAPIError as error:
            response = error_response(error)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client disconnected before it ended."""
    pieces = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        pieces.append(message.get("body", b""))
        if not message.get("more_body", False):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` as it was before the body was read here: the body once, then the rest."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
