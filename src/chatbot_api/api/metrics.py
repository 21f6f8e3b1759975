"""``GET /metrics``: Prometheus' text format, every worker's values added up."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from chatbot_api.api.deps import ServicesDep, authenticate
from chatbot_api.api.error_docs import error_responses
from chatbot_api.metrics import exposition

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        # Only with CHATBOT_METRICS_REQUIRE_KEY.
        **error_responses(401, 429),
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Requests, latency, time to first token, tokens, streams, model queues, rate-limit
    refusals and the store writer. Public unless `CHATBOT_METRICS_REQUIRE_KEY` is set."""
    if services.settings.metrics_require_key:
        await authenticate(request, services)
    body, content_type = exposition()
    return Response(body, media_type=content_type)
