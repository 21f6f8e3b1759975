"""``GET /health``: liveness, for load balancers and container health checks."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

__all__ = ["router"]

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/health", summary="Liveness")
async def health() -> Health:
    """Answers 200 while the process serves requests."""
    return Health()
