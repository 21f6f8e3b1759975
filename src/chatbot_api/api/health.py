"""``GET /health`` (liveness) and ``GET /ready`` (readiness), for load balancers and
orchestrators, and ``HEAD`` on both for probes that read the status alone. All are public."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from chatbot_api.api.error_docs import bodiless_responses, error_responses
from chatbot_api.errors import NotReadyError
from chatbot_api.state import AppServices

__all__ = ["router"]

router = APIRouter(tags=["operations"])

#: How long ``/ready`` waits for the database before calling it unavailable.
_DATABASE_TIMEOUT_SECONDS = 2.0

_NOT_READY = (
    "Not ready (`not_ready`): still starting, shutting down, a model that cannot serve, or a "
    "database that does not answer; the message says which."
)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="Models that cannot serve now for a reason outside this server (every "
        "upstream deployment failing or cooling down), each with why. They leave the server "
        "ready: its other models, and these models' fallbacks, still serve.",
        examples=[{"gpt-fleet": "none of its 3 deployment(s) can serve now"}],
    )


@router.get("/health", summary="Liveness")
async def health() -> Health:
    """Answers 200 while the process serves requests."""
    return Health()


# A HEAD answer is the GET answer, headers and all, whose body the server leaves out; the
# document says so with a `Response` class, which has no content, and bodiless errors.
@router.head(
    "/health",
    summary="Liveness, headers only",
    response_class=Response,
    responses=bodiless_responses(431, 500),
)
async def health_head() -> Response:
    """`GET /health` without the body: 200 while the process serves requests."""
    return JSONResponse(Health().model_dump())


@router.get(
    "/ready",
    summary="Readiness",
    responses={503: {**error_responses(503)[503], "description": _NOT_READY}},
)
async def ready(request: Request) -> Ready:
    """200 once every model is loaded and the database answers; route traffic here then.
    `unavailable` names the models none of whose upstream deployments can serve now."""
    return await _check_ready(request)


@router.head(
    "/ready",
    summary="Readiness, headers only",
    response_class=Response,
    responses={**bodiless_responses(431, 500), 503: {"description": _NOT_READY}},
)
async def ready_head(request: Request) -> Response:
    """`GET /ready` without the body: 200 once every model is loaded and the database
    answers, 503 before."""
    return JSONResponse((await _check_ready(request)).model_dump())


async def _check_ready(request: Request) -> Ready:
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
    return Ready(unavailable=services.registry.unavailable())
