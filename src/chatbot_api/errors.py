"""Every failure the API reports: one exception class per kind, with OpenAI's status and type.

    ChatbotAPIError                       status  type
    ├── InvalidRequestError                 400   invalid_request_error
    │   ├── UnsupportedParameterError       400   (code unsupported_parameter)
    │   └── ContextLengthExceededError      400   (code context_length_exceeded)
    ├── AuthenticationError                 401   invalid_request_error (code invalid_api_key)
    ├── PermissionDeniedError               403   invalid_request_error (code permission_denied)
    ├── NotFoundError                       404   invalid_request_error
    │   └── ModelNotFoundError              404   invalid_request_error (code model_not_found)
    ├── ConflictError                       409   invalid_request_error (code room_taken)
    ├── MethodNotAllowedError               405   invalid_request_error
    ├── RequestTimeoutError                 408   invalid_request_error (code request_timeout)
    ├── RequestTooLargeError                413   invalid_request_error (code request_too_large)
    ├── RequestHeadersTooLargeError         431   invalid_request_error (code headers_too_large)
    ├── RateLimitError                      429   requests / tokens (code rate_limit_exceeded)
    ├── ClientClosedRequestError            499   invalid_request_error (never sent: logged)
    ├── InternalServerError                 500   server_error
    ├── ServerOverloadedError               503   server_error (code server_overloaded)
    ├── NotReadyError                       503   server_error (code not_ready)
    ├── UpstreamError                       502   server_error (code upstream_error)
    ├── UpstreamTimeoutError                504   server_error (code upstream_timeout)
    ├── DeadlineExceededError               504   server_error (code deadline_exceeded)
    ├── ServerShuttingDownError             503   server_error (code server_shutting_down)
    ├── EngineUnavailableError              503   server_error (code engine_unavailable)
    ├── DatabaseUnavailableError            503   server_error (code database_unavailable)
    ├── VoiceNotConfiguredError             503   server_error (code voice_not_configured)
    └── VoiceServerError                    502   server_error (code voice_server_error)

Services, providers and the model engine raise these; nothing here knows about HTTP
frameworks, so the engine process raises them too. ``api.error_handlers`` turns them (and
FastAPI's validation errors and Starlette's HTTP errors) into OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from chatbot_api.schemas.errors import ErrorBody, ErrorResponse

__all__ = [
    "AuthenticationError",
    "ChatbotAPIError",
    "ClientClosedRequestError",
    "ConflictError",
    "ContextLengthExceededError",
    "DatabaseUnavailableError",
    "DeadlineExceededError",
    "EngineUnavailableError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "NotReadyError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestHeadersTooLargeError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ServerOverloadedError",
    "ServerShuttingDownError",
    "UnsupportedParameterError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "VoiceNotConfiguredError",
    "VoiceServerError",
    "as_api_error",
    "internal_error",
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

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(
            message, code=code, headers={"WWW-Authenticate": 'Bearer realm="chatbot-api"'}
        )


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


class ConflictError(ChatbotAPIError):
    """What the request names is someone else's (a voice room another key made)."""

    status_code = 409
    error_type = "invalid_request_error"


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


class RequestTimeoutError(ChatbotAPIError):
    """The body did not arrive in time: a client that trickles it in holds a connection and a
    task for as long as it likes otherwise. The connection is closed after the answer."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"

    def __init__(self, part: str = "body") -> None:
        super().__init__(
            f"The request {part} did not arrive in time (see CHATBOT_BODY_TIMEOUT_SECONDS).",
            headers={"Connection": "close"},
        )


class RequestHeadersTooLargeError(ChatbotAPIError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "headers_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request headers are larger than this server accepts ({limit} bytes in all).",
            headers={"Connection": "close"},
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
        retry_after = min(max(retry_after, 0.0), 86400.0) if math.isfinite(retry_after) else 1.0
        super().__init__(
            message,
            code=code,
            headers={
                **(headers or {}),
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
            },
        )


class ClientClosedRequestError(ChatbotAPIError):
    """The client went away before its answer was ready; generation was stopped.

    Nobody receives it: the status (nginx's 499) is for the access log and the metrics.
    """

    status_code = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


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


class EngineUnavailableError(ChatbotAPIError):
    """A local model's engine process is not running (it died and is being restarted)."""

    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"

    def __init__(self, model: str, why: str | None = None) -> None:
        super().__init__(
            f"The model '{model}' cannot serve right now: {why or 'its engine is not running'}. "
            "Please retry shortly.",
            headers={"Retry-After": "1"},
        )


class UpstreamError(ChatbotAPIError):
    """The upstream model service failed or refused our own credentials. Its message (which
    may quote our key) is logged, never passed on."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"

    def __init__(self, upstream_status: int | None, *, answered: bool = False) -> None:
        if upstream_status:
            what = f"answered {upstream_status}"
        elif answered:
            what = "did not answer with a chat completion"
        else:
            what = "could not be reached"
        super().__init__(f"The upstream model service {what}. Please retry later.")


class UpstreamTimeoutError(ChatbotAPIError):
    status_code = 504
    error_type = "server_error"
    default_code = "upstream_timeout"

    def __init__(self) -> None:
        super().__init__("The upstream model service did not answer in time.")


class DeadlineExceededError(ChatbotAPIError):
    """A request still running ``CHATBOT_REQUEST_TIMEOUT_SECONDS`` after it arrived."""

    status_code = 504
    error_type = "server_error"
    default_code = "deadline_exceeded"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The request did not finish within this server's limit of {seconds:g} seconds "
            "and was stopped. Ask for fewer tokens, or retry when the server is less busy."
        )


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

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        super().__init__(
            message
            or "The database is not answering; stored data (completions, responses, "
            "conversations) cannot be read or changed right now. Please retry shortly.",
            param=param,
            headers={"Retry-After": "1"},
        )


def internal_error(request_id: str | None) -> InternalServerError:
    """The error a client sees for an unexpected failure: the request id, never a stack trace."""
    suffix = f" Please include the request ID {request_id} in your report." if request_id else ""
    return InternalServerError(
        "The server had an error while processing your request. Sorry about that!" + suffix
    )


def as_api_error(exc: BaseException, request_id: str | None) -> ChatbotAPIError:
    """What a client is told of ``exc``: the error itself when it is one of ours; otherwise,
    with its trace logged, the 500 that carries the request id."""
    if isinstance(exc, ChatbotAPIError):
        return exc
    logger.error("unexpected failure", exc_info=exc, extra={"request_id": request_id})
    return internal_error(request_id)


class VoiceNotConfiguredError(ChatbotAPIError):
    """The voice routes need a LiveKit server; the rest of the API does not."""

    status_code = 503
    error_type = "server_error"
    default_code = "voice_not_configured"

    def __init__(self) -> None:
        super().__init__(
            "Voice sessions are not configured on this server: set CHATBOT_LIVEKIT_URL, "
            "CHATBOT_LIVEKIT_API_KEY and CHATBOT_LIVEKIT_API_SECRET."
        )


class VoiceServerError(ChatbotAPIError):
    """The LiveKit server did not answer, or refused. Its own message is logged, not sent:
    it is about our credentials, not the caller's request."""

    status_code = 502
    error_type = "server_error"
    default_code = "voice_server_error"

    def __init__(self, what: str) -> None:
        super().__init__(f"The LiveKit server {what}. Please retry later.")
