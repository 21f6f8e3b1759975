"""Every failure the API reports, and the one place that turns them into OpenAI's error envelope.

    ChatbotAPIError                       status  type
    ├── InvalidRequestError                 400   invalid_request_error
    │   ├── UnsupportedParameterError       400   (code unsupported_parameter)
    │   └── ContextLengthExceededError      400   (code context_length_exceeded)
    ├── AuthenticationError                 401   invalid_request_error (code invalid_api_key)
    ├── PermissionDeniedError               403   invalid_request_error (code permission_denied)
    ├── NotFoundError                       404   invalid_request_error
    │   └── ModelNotFoundError              404   invalid_request_error (code model_not_found)
    ├── MethodNotAllowedError               405   invalid_request_error
    ├── RequestTooLargeError                413   invalid_request_error (code request_too_large)
    ├── RateLimitError                      429   requests / tokens (code rate_limit_exceeded)
    ├── InternalServerError                 500   server_error
    ├── ServerOverloadedError               503   server_error (code server_overloaded)
    ├── NotReadyError                       503   server_error (code not_ready)
    ├── UpstreamError                       502   server_error (code upstream_error)
    ├── UpstreamTimeoutError                504   server_error (code upstream_timeout)
    ├── ServerShuttingDownError             503   server_error (code server_shutting_down)
    └── DatabaseUnavailableError            503   server_error (code database_unavailable)

Services raise these; :func:`install_exception_handlers` maps them, FastAPI's validation
errors and Starlette's HTTP errors onto ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from chatbot_api.schemas.errors import ErrorBody, ErrorResponse

__all__ = [
    "AuthenticationError",
    "ChatbotAPIError",
    "ContextLengthExceededError",
    "DatabaseUnavailableError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "NotReadyError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerOverloadedError",
    "ServerShuttingDownError",
    "UnsupportedParameterError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "error_response",
    "install_exception_handlers",
    "internal_error",
    "param_from_location",
    "validation_error",
]

logger = logging.getLogger(__name__)


class ChatbotAPIError(Exception):
    """Base of every error the API reports to a client."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        )


class InvalidRequestError(ChatbotAPIError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    """A parameter the chosen model's provider cannot honour: refused, never silently dropped."""

    default_code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(ChatbotAPIError):
    """No key, or not a valid one. Never echoes what was sent."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="chatbot-api"'})


class PermissionDeniedError(ChatbotAPIError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(ChatbotAPIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = None) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param=param
        )


class MethodNotAllowedError(ChatbotAPIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTooLargeError(ChatbotAPIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"

    def __init__(self) -> None:
        super().__init__(
            "The request body is larger than this server accepts (see CHATBOT_MAX_BODY_BYTES)."
        )


class RateLimitError(ChatbotAPIError):
    """Over a per-minute limit. ``Retry-After`` and ``retry-after-ms`` say when to come back;
    the openai SDKs wait that long before their automatic retry."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        limit: Literal["requests", "tokens"] = "requests",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.error_type = limit  # OpenAI names the exhausted limit in `type`
        super().__init__(
            message,
            code=code,
            headers={
                **(headers or {}),
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
            },
        )


class InternalServerError(ChatbotAPIError):
    status_code = 500
    error_type = "server_error"


class ServerOverloadedError(ChatbotAPIError):
    """No capacity now (every slot and queue place taken, or shutting down): retry later."""

    status_code = 503
    error_type = "server_error"
    default_code = "server_overloaded"


class ServerShuttingDownError(ChatbotAPIError):
    """A stream still running when the shutdown grace period ran out."""

    status_code = 503
    error_type = "server_error"
    default_code = "server_shutting_down"

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down and ended this stream before it finished. Please "
            "retry the request."
        )


class UpstreamError(ChatbotAPIError):
    """The upstream model service failed or refused our own credentials. Its message (which
    may quote our key) is logged, never passed on."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"

    def __init__(self, upstream_status: int | None) -> None:
        what = f"answered {upstream_status}" if upstream_status else "could not be reached"
        super().__init__(f"The upstream model service {what}. Please retry later.")


class UpstreamTimeoutError(ChatbotAPIError):
    status_code = 504
    error_type = "server_error"
    default_code = "upstream_timeout"

    def __init__(self) -> None:
        super().__init__("The upstream model service did not answer in time.")


class NotReadyError(ChatbotAPIError):
    """``/ready`` while something the API needs is missing; the message says what."""

    status_code = 503
    error_type = "server_error"
    default_code = "not_ready"


class DatabaseUnavailableError(ChatbotAPIError):
    """Stored completions cannot be read or changed while the database does not answer."""

    status_code = 503
    error_type = "server_error"
    default_code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The database is not answering; stored completions cannot be read or changed right "
            "now. Please retry shortly.",
            headers={"Retry-After": "1"},
        )


def internal_error(request_id: str | None) -> InternalServerError:
    """The error a client sees for an unexpected failure: the request id, never a stack trace."""
    suffix = f" Please include the request ID {request_id} in your report." if request_id else ""
    return InternalServerError(
        "The server had an error while processing your request. Sorry about that!" + suffix
    )


def error_response(error: ChatbotAPIError) -> JSONResponse:
    return JSONResponse(
        error.to_body().model_dump(),
        status_code=error.status_code,
        headers=error.headers or None,
    )


def param_from_location(loc: Sequence[int | str]) -> str | None:
    """Turn a Pydantic error location into OpenAI's parameter path: ``messages[0].content``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    path = ""
    for part in parts:
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
    error = validation_error(exc.errors())
    logger.info("request rejected: %s", error.message, extra={"param": error.param})
    return error_response(error)


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error: ChatbotAPIError
    if exc.status_code == 404:
        error = NotFoundError(
            f"Invalid URL ({request.method} {request.url.path})", code="unknown_url"
        )
    elif exc.status_code == 413:
        error = RequestTooLargeError()
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
