"""OpenAPI descriptions of the error answers routes share."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from chatbot_api.schemas.errors import ErrorResponse

__all__ = ["drop_validation_422", "error_responses"]

_DESCRIPTIONS = {
    400: "Invalid request: a field is missing, malformed or out of range (`param` names it).",
    401: "Missing or invalid API key (`invalid_api_key`).",
    404: "Unknown model (`model_not_found`) or URL.",
    429: (
        "Over the caller's requests or tokens per minute (`rate_limit_exceeded`); "
        "`Retry-After` and `retry-after-ms` say when to retry."
    ),
    500: "Unexpected failure; the message carries the request id.",
    503: "No capacity right now (`server_overloaded`); `Retry-After` says when to retry.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


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
