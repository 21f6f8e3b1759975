"""Voice sessions through LiveKit: ``/v1/voice/sessions`` for callers with a key, and
``/v1/voice/webhooks`` for LiveKit itself (signed by LiveKit, not by an API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from chatbot_api.api.deps import CountedDep, PrincipalDep, ServicesDep, client_address
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.api.paging import Limit, Order
from chatbot_api.errors import AuthenticationError
from chatbot_api.schemas.voice import (
    CreateVoiceSessionRequest,
    VoiceSession,
    VoiceSessionList,
    VoiceSessionToken,
    WebhookReceipt,
)

__all__ = ["router", "webhooks"]

router = APIRouter(
    prefix="/v1/voice",
    tags=["voice"],
    route_class=JSONBodyRoute,
    responses=error_responses(503),
)
#: Not under the API-key dependency: LiveKit signs what it sends with our LiveKit secret.
webhooks = APIRouter(prefix="/v1/voice", tags=["voice"], responses=error_responses(503))

RoomName = Annotated[str, Path(description="The session's room name.")]
AfterRoom = Annotated[str | None, Query(description="The last room name of the previous page.")]


@router.post(
    "/sessions",
    summary="Start a voice session",
    status_code=201,
    response_model=VoiceSessionToken,
    responses=error_responses(400, 404, 408, 409, 413, 502),
)
async def create_voice_session(
    body: CreateVoiceSessionRequest,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """A LiveKit room with the voice agent dispatched into it (the agent's LLM is this
    server, with `model`), and a token that joins that room only, for `expires_at`.

    Connect a LiveKit client to `server_url` with `participant_token`. A room named by
    another key's session is a 409; a LiveKit server that does not answer or refuses, 502.
    """
    created = await services.voice.create_session(principal, body)
    return JSONResponse(created, status_code=201, headers=limits)


@router.get(
    "/sessions",
    summary="List your voice sessions",
    response_model=VoiceSessionList,
    responses=error_responses(400),
)
async def list_voice_sessions(
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
    after: AfterRoom = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> JSONResponse:
    """The calling key's voice sessions, newest first unless `order=asc`."""
    services.voice.require()
    page = await services.voice.sessions.list_owned(
        principal.owner, after=after, limit=limit, order=order
    )
    wire: dict[str, Any] = page.to_wire()
    return JSONResponse(wire, headers=limits)


@router.get(
    "/sessions/{room_name}",
    summary="Retrieve a voice session",
    response_model=VoiceSession,
    responses=error_responses(404),
)
async def retrieve_voice_session(
    room_name: RoomName, services: ServicesDep, principal: PrincipalDep, limits: CountedDep
) -> JSONResponse:
    """One session: its model, when LiveKit said it started and ended, who joined."""
    services.voice.require()
    return JSONResponse(
        await services.voice.sessions.get(principal.owner, room_name), headers=limits
    )


@webhooks.post(
    "/webhooks",
    summary="Receive LiveKit's webhooks",
    response_model=WebhookReceipt,
    responses=error_responses(400, 401, 408, 413, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/webhook+json": {
                    "schema": {"type": "object", "description": "LiveKit's WebhookEvent."}
                }
            },
        }
    },
)
async def receive_webhook(request: Request, services: ServicesDep) -> JSONResponse:
    """Point LiveKit's webhook at this URL. Each request must carry LiveKit's signed token
    in `Authorization` (a missing or wrong one is a 401 and changes nothing);
    `room_started`, `participant_joined` and `room_finished` update the session's record
    (late or repeated events change nothing). An address that keeps failing gets 429."""
    try:
        recorded = await services.voice.webhook(
            await request.body(), request.headers.get("authorization")
        )
    except AuthenticationError:
        await services.limiter.throttle_auth_failure(client_address(request))
        raise
    return JSONResponse({"received": True, "recorded": recorded})
