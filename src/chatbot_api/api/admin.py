"""Admin endpoints for API keys; only the master key may call them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from chatbot_api.api.deps import PrincipalDep, ServicesDep
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.errors import InvalidRequestError, NotFoundError
from chatbot_api.security.keys import parse_duration

__all__ = ["router"]

router = APIRouter(
    prefix="/admin/keys",
    tags=["admin"],
    route_class=JSONBodyRoute,
    responses=error_responses(403),  # any caller but the master key
)


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"name": "web", "models": ["gemma-3-270m"], "rpm": 60, "tpm": 20000},
                {"name": "ci", "expires_in": "12h"},
            ]
        },
    )
    name: str = Field(min_length=1, max_length=128, examples=["ci"])
    models: list[str] | None = Field(default=None, description="Allowed model ids; all if null.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    expires_in: str | None = Field(default=None, examples=["30d"], description="e.g. 12h, 30d.")


@router.post(
    "", summary="Create an API key", status_code=201, responses=error_responses(400, 408, 413)
)
async def create_key(
    body: CreateKeyRequest, services: ServicesDep, principal: PrincipalDep
) -> JSONResponse:
    """Makes a key and returns it in `key`: the only time it is shown."""
    principal.require_admin()
    expires_in = None
    if body.expires_in is not None:
        try:
            expires_in = parse_duration(body.expires_in)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="expires_in") from None
    key, record = await services.keys.create(
        body.name, models=body.models, rpm=body.rpm, tpm=body.tpm, expires_in=expires_in
    )
    return JSONResponse({**record.public(), "key": key}, status_code=201)


@router.get("", summary="List API keys")
async def list_keys(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every key's details; never the keys themselves."""
    principal.require_admin()
    return {"object": "list", "data": [key.public() for key in await services.keys.list()]}


@router.delete("/{key_id}", summary="Revoke an API key", responses=error_responses(404))
async def revoke_key(
    key_id: Annotated[str, Path()], services: ServicesDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Revoked at once: the key's next request, in any worker, gets 401."""
    principal.require_admin()
    record = await services.keys.revoke(key_id)
    if record is None:
        raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
    return record.public()
