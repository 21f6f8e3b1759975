"""OpenAI's Responses API: create (JSON, SSE or in the background), retrieve, delete, cancel,
list input items, count input tokens."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from chatbot_api.api.connection import event_stream, while_connected
from chatbot_api.api.deps import (
    CountedDep,
    PrincipalDep,
    ServicesDep,
    client_address,
    request_id,
)
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.api.paging import After, Limit, Order
from chatbot_api.errors import UnsupportedParameterError
from chatbot_api.schemas.response_objects import (
    InputTokens,
    ResponseDeleted,
    ResponseItemList,
    ResponseObject,
)
from chatbot_api.schemas.responses import CreateResponseRequest, InputTokensRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1/responses", tags=["responses"], route_class=JSONBodyRoute)

ResponseId = Annotated[str, Path(description="The id of a stored response.")]

_STREAM_DOC = {
    "description": (
        "With `stream: true`: Server-Sent Events, each `event: <type>` and `data: <event "
        "JSON>` with a `sequence_number`: `response.created`, `response.in_progress`, then per "
        "output item `response.output_item.added`, `response.content_part.added`, "
        "`response.output_text.delta`... (`response.function_call_arguments.delta`... for a "
        "function call), their `.done` events, and last `response.completed`, "
        "`response.incomplete` (cut at `max_output_tokens`) or `response.failed`."
    ),
    "content": {
        "text/event-stream": {
            "example": (
                'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
                '"response":{"id":"resp_1","object":"response","status":"in_progress"}}\n\n'
            )
        }
    },
}


@router.post(
    "",
    summary="Create a model response",
    response_model=ResponseObject,
    responses={200: _STREAM_DOC, **error_responses(400, 404, 408, 413, 502, 503, 504)},
)
async def create_response(
    body: CreateResponseRequest, request: Request, services: ServicesDep, principal: PrincipalDep
) -> Response:
    """A `response` object, a stream of its events, or (`background: true`) the response
    `queued`, generated while the client is free to go.

    The context is read from the store: the chain behind `previous_response_id`, or the
    items of `conversation`. The turn is stored (unless `store: false`) before the answer is
    sent, so it can be continued at once from any worker or server sharing the database.
    """
    settings = services.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_seconds
    responses = services.responses
    prepared = await responses.prepare(body, principal, request_id=request_id(request))
    quota = await services.limiter.admit(
        principal, client_address(request), tokens=prepared.chat.reserved_tokens
    )
    try:
        if body.background:
            queued = await services.background.start(prepared, quota.settle)
            return JSONResponse(queued, headers=quota.headers)
        if body.stream:
            # Until its first event a stream is watched as a JSON answer is: a client that
            # leaves while it waits for a slot, its prompt or its grammar stops it there.
            stream = await while_connected(
                request,
                responses.open_stream(prepared),
                deadline=deadline,
                timeout_seconds=settings.request_timeout_seconds,
            )
            return event_stream(stream, quota, settings, deadline=deadline)
        built = await while_connected(
            request,
            responses.complete(prepared),
            deadline=deadline,
            timeout_seconds=settings.request_timeout_seconds,
        )
    except Exception:
        await quota.settle(0)  # refused before generating: nothing was used
        raise
    await quota.settle(built.input_tokens + built.output_tokens)
    return JSONResponse(built.response(), headers=quota.headers)


@router.post(
    "/input_tokens",
    summary="Count a response's input tokens",
    response_model=InputTokens,
    responses=error_responses(400, 404, 408, 413, 502, 503),
)
async def count_input_tokens(
    body: InputTokensRequest, services: ServicesDep, principal: PrincipalDep, limits: CountedDep
) -> JSONResponse:
    """How many tokens the model would read for this input (with its instructions, tools and
    the stored context it names), counted with the model's own tokenizer where it has one."""
    count = await services.responses.count_input_tokens(body, principal)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": count}, headers=limits)


@router.get(
    "/{response_id}",
    summary="Retrieve a model response",
    response_model=ResponseObject,
    responses=error_responses(400, 404, 503),
)
async def retrieve_response(
    response_id: ResponseId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
    stream: Annotated[
        bool, Query(description="Replaying a response's events is not offered here.")
    ] = False,
) -> JSONResponse:
    """A stored response as it stands: a background one shows its progress."""
    if stream:
        raise UnsupportedParameterError(
            "Unsupported parameter: 'stream'. This server does not keep a response's events "
            "to replay them; retrieve the response as JSON.",
            param="stream",
        )
    return JSONResponse(
        await services.responses.responses.get(principal.owner, response_id), headers=limits
    )


@router.delete(
    "/{response_id}",
    summary="Delete a model response",
    response_model=ResponseDeleted,
    responses=error_responses(404, 503),
)
async def delete_response(
    response_id: ResponseId, services: ServicesDep, principal: PrincipalDep, limits: CountedDep
) -> JSONResponse:
    """Deletes the response and its items; items that a conversation holds stay there."""
    return JSONResponse(
        await services.responses.responses.delete(principal.owner, response_id), headers=limits
    )


@router.post(
    "/{response_id}/cancel",
    summary="Cancel a background response",
    response_model=ResponseObject,
    responses=error_responses(400, 404, 503),
)
async def cancel_response(
    response_id: ResponseId, services: ServicesDep, principal: PrincipalDep, limits: CountedDep
) -> JSONResponse:
    """Stops a `background` response that is still queued or in progress (`cancelled`); a
    finished one is returned as it is."""
    return JSONResponse(
        await services.background.cancel(principal.owner, response_id), headers=limits
    )


@router.get(
    "/{response_id}/input_items",
    summary="List a response's input items",
    response_model=ResponseItemList,
    responses=error_responses(400, 404, 503),
)
async def list_input_items(
    response_id: ResponseId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
    after: After = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> JSONResponse:
    """The items this response's request sent (not the earlier turns it continued), paged;
    newest first unless `order=asc`, as OpenAI's."""
    page = await services.responses.responses.input_items(
        principal.owner, response_id, after=after, limit=limit, order=order
    )
    wire: dict[str, Any] = page.to_wire()
    return JSONResponse(wire, headers=limits)
