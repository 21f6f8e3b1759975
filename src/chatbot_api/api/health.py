"""``GET /health`` (liveness) and ``GET /ready`` (readiness), for load balancers and
orchestrators. Both are public."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from chatbot_api.errors import NotReadyError
from chatbot_api.schemas.errors import ErrorResponse
from chatbot_api.state import AppServices

__all__ = ["router"]

router = APIRouter(tags=["operations"])

#: How long ``/ready`` waits for the database before calling it unavailable.
_DATABASE_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


@router.get("/health", summary="Liveness")
async def health() -> Health:
    """Answers 200 while the process serves requests."""
    return Health()


@router.get(
    "/ready",
    summary="Readiness",
    responses={
        503: {
            "model": ErrorResponse,
            "description": (
                "Not ready (`not_ready`): still starting, shutting down, a model that cannot "
                "serve, or a database that does not answer; the message says which."
            ),
        }
    },
)
async def ready(request: Request) -> Ready:
    """200 once every model is loaded and the database answers; route traffic here then."""
    services = getattr(request.app.state, "services", None)
    if not isinstance(services, AppServices):
        raise NotReadyError("The server is starting.", headers={"Retry-After": "1"})
    problems = services.registry.problems()
    try:
        await asyncio.wait_for(services.database.ping(), _DATABASE_TIMEOUT_SECONDS)
    except Exception:
        problems.append("the database does not answer")
    if problems:
        raise NotReadyError("Not ready: " + "; ".join(problems) + ".")
    return Ready()
