"""The HTTP side of errors: OpenAI's envelope for every exception the API can meet.

``install_exception_handlers`` maps our :class:`~chatbot_api.errors.ChatbotAPIError`
hierarchy, FastAPI's validation errors (a 422 by default, OpenAI's 400 here) and Starlette's
HTTP errors onto ``{"error": {"message", "type", "param", "code"}}``.

While FastAPI reads a request body it turns every exception but an ``HTTPException`` into a
generic 400; an error found there (the body cap, the body deadline, the strict JSON reader)
travels as a :class:`BodyReadError`, which carries our error through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from chatbot_api.errors import (
    ChatbotAPIError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
)

__all__ = [
    "BodyReadError",
    "error_response",
    "install_exception_handlers",
    "param_from_location",
    "refusal_response",
    "validation_error",
]

logger = logging.getLogger(__name__)


class BodyReadError(StarletteHTTPException):
    """One of our errors, raised while FastAPI reads the body: it re-raises an
    ``HTTPException`` as it is, where it would turn any other exception into a bare 400."""

    def __init__(self, error: ChatbotAPIError) -> None:
        super().__init__(error.status_code, error.message, error.headers)
        self.error = error


def error_response(error: ChatbotAPIError) -> JSONResponse:
    return JSONResponse(
        error.to_body().model_dump(),
        status_code=error.status_code,
        headers=error.headers or None,
    )


def refusal_response(error: ChatbotAPIError) -> JSONResponse:
    """The answer to a request refused for what it sent (its body, its shape), logged."""
    logger.info("request rejected: %s", error.message, extra={"param": error.param})
    return error_response(error)


def param_from_location(loc: Sequence[int | str]) -> str | None:
    """Turn a FastAPI error location into OpenAI's parameter path: ``messages[0].content``.

    FastAPI starts every location with where the value came from (``body``, ``query``,
    ``path``), which OpenAI's ``param`` leaves out.
    """
    path = ""
    for part in loc[1:]:
        if isinstance(part, str) and (part.startswith("~") or part == "[key]"):
            continue  # a union's tag (see schemas.messages) or Pydantic's mark on a dict key
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = part
    return path or None


# Custom error types of the discriminated unions in schemas.messages, and the field they judge.
_DISCRIMINATOR_FIELDS = {"invalid_role": "role", "invalid_part_type": "type"}


def _describe(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "Invalid value"))
    return message.removeprefix("Value error, ")


def validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    """Map FastAPI's validation errors (a 422 by default) onto OpenAI's 400."""
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    error_type = first.get("type", "")
    if error_type == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
            code="invalid_json",
        )
    loc: tuple[int | str, ...] = tuple(first.get("loc", ()))
    if error_type in _DISCRIMINATOR_FIELDS:
        loc = (*loc, _DISCRIMINATOR_FIELDS[error_type])
    param = param_from_location(loc)
    if error_type == "missing":
        if param is None:
            return InvalidRequestError(
                "We could not parse the JSON body of your request: the body is empty or not a "
                "JSON object.",
                code="invalid_json",
            )
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if param is None:
        hint = ""
        if isinstance(first.get("input"), bytes | str):
            hint = " sent with 'Content-Type: application/json'"
        return InvalidRequestError(
            f"The request body must be a JSON object{hint}.", code="invalid_json"
        )
    return InvalidRequestError(
        f"Invalid value for '{param}': {_describe(first)}.",
        param=param,
        code="invalid_value",
    )


async def _handle_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatbotAPIError)
    return error_response(exc)


async def _handle_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return refusal_response(validation_error(exc.errors()))


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error: ChatbotAPIError
    if isinstance(exc, BodyReadError):
        return refusal_response(exc.error)
    if exc.status_code == 404:
        error = NotFoundError(
            f"Invalid URL ({request.method} {request.url.path})", code="unknown_url"
        )
    elif exc.status_code == 405:
        error = MethodNotAllowedError(
            f"Method {request.method} is not allowed for {request.url.path}.",
            headers=dict(exc.headers or {}),
        )
    else:
        error = ChatbotAPIError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(error)


def install_exception_handlers(app: FastAPI) -> None:
    """Route every expected failure through the envelope; unexpected ones are the middleware's."""
    app.add_exception_handler(ChatbotAPIError, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
