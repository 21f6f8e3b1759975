"""OpenAPI descriptions of the error answers routes share.

The document declares every status a route can answer, so that a client generated from it
(and schemathesis, which checks the server against it) knows them all: each route lists its
own, ``create_app`` adds 401 and 429 to the routes behind a key and 431 and 500 to every one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from chatbot_api.schemas.errors import ErrorResponse
from chatbot_api.security.hardening import MAX_HEADER_BYTES

__all__ = ["bodiless_responses", "drop_validation_422", "error_responses"]

_DESCRIPTIONS = {
    400: (
        "Invalid request: a field or query parameter is missing, malformed or out of range "
        "(`param` names it), or the body is not a JSON object (`invalid_json`)."
    ),
    401: "Missing or invalid API key (`invalid_api_key`).",
    403: "The key may not do this: these endpoints need the master key (`permission_denied`).",
    404: "Unknown model (`model_not_found`), stored completion, API key or URL.",
    408: (
        "The request headers or body did not arrive within `CHATBOT_BODY_TIMEOUT_SECONDS` "
        "(`request_timeout`); the connection is closed."
    ),
    409: (
        "The room is another key's voice session, or a LiveKit room this API did not make "
        "(`room_taken`)."
    ),
    413: "The request body is larger than `CHATBOT_MAX_BODY_BYTES` (`request_too_large`).",
    429: (
        "Over the caller's requests or tokens per minute, or too many failed authentications "
        "from this address (`rate_limit_exceeded`); `Retry-After` and `retry-after-ms` say "
        "when to retry."
    ),
    431: f"The request headers are over {MAX_HEADER_BYTES} bytes in all (`headers_too_large`).",
    500: "Unexpected failure; the message carries the request id.",
    502: (
        "The upstream model service failed (`upstream_error`), or the LiveKit server did not "
        "answer or refused (`voice_server_error`)."
    ),
    503: (
        "Cannot serve right now: no capacity (`server_overloaded`), a model's engine restarting "
        "(`engine_unavailable`), the database not answering (`database_unavailable`), a "
        "stream cut short by a shutdown (`server_shutting_down`) or voice sessions without "
        "LiveKit settings (`voice_not_configured`); `Retry-After` says when to retry."
    ),
    504: "The upstream model service did not answer in time (`upstream_timeout`).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses=`` for these statuses, each with the error envelope's schema."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def bodiless_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same for a ``HEAD`` route, whose answers carry headers only."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


def drop_validation_422(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with a body; ours answers 400 in the envelope."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
