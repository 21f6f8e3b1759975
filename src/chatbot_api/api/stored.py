"""OpenAI's stored chat completions: list, retrieve, update metadata, delete, list messages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from chatbot_api.api.deps import PrincipalDep, ServicesDep
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.api.paging import After, Limit, Order
from chatbot_api.errors import InvalidRequestError
from chatbot_api.schemas.stored import (
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessageList,
    StoredChatCompletion,
    UpdateMetadataRequest,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/chat/completions",
    tags=["stored completions"],
    route_class=JSONBodyRoute,
    # Every route reads or changes the database.
    responses=error_responses(503),
)

CompletionId = Annotated[str, Path(description="The id of a completion created with `store`.")]


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query parameters, as the openai SDK writes them."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
        elif name == "metadata":
            raise InvalidRequestError(
                "Filter on metadata as metadata[key]=value.", param="metadata"
            )
    return found


@router.get(
    "",
    summary="List stored chat completions",
    response_model=ChatCompletionList,
    responses=error_responses(400),
)
async def list_completions(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    model: Annotated[str | None, Query(description="Only completions of this model.")] = None,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> JSONResponse:
    """Completions created with `store: true` by the caller, filtered by `model` and
    `metadata[key]=value`, paged with `after` and `limit`."""
    page = await services.store.list(
        principal.owner,
        model=model,
        metadata=_metadata_filter(request),
        after=after,
        limit=limit,
        order=order,
    )
    return JSONResponse(page.to_wire())


@router.get(
    "/{completion_id}",
    summary="Retrieve a stored chat completion",
    response_model=StoredChatCompletion,
    responses=error_responses(404),
)
async def retrieve_completion(
    completion_id: CompletionId, services: ServicesDep, principal: PrincipalDep
) -> JSONResponse:
    """One stored completion, with its current metadata."""
    return JSONResponse(await services.store.get(principal.owner, completion_id))


@router.post(
    "/{completion_id}",
    summary="Update a stored chat completion's metadata",
    response_model=StoredChatCompletion,
    responses=error_responses(400, 404, 408, 413),
)
async def update_completion(
    completion_id: CompletionId,
    body: UpdateMetadataRequest,
    services: ServicesDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Replaces `metadata`; nothing else of a stored completion can change."""
    updated = await services.store.update_metadata(principal.owner, completion_id, body.metadata)
    return JSONResponse(updated)


@router.delete(
    "/{completion_id}",
    summary="Delete a stored chat completion",
    response_model=ChatCompletionDeleted,
    responses=error_responses(404),
)
async def delete_completion(
    completion_id: CompletionId, services: ServicesDep, principal: PrincipalDep
) -> JSONResponse:
    """Deletes it for good."""
    return JSONResponse(await services.store.delete(principal.owner, completion_id))


@router.get(
    "/{completion_id}/messages",
    summary="List a stored chat completion's messages",
    response_model=ChatCompletionMessageList,
    responses=error_responses(400, 404),
)
async def list_messages(
    completion_id: CompletionId,
    services: ServicesDep,
    principal: PrincipalDep,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> JSONResponse:
    """The request messages of a stored completion, paged."""
    page = await services.store.messages(
        principal.owner, completion_id, after=after, limit=limit, order=order
    )
    wire: dict[str, Any] = page.to_wire()
    return JSONResponse(wire)
