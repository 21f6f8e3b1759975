"""OpenAI's Conversations API: conversations and their items, scoped to the caller's key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from chatbot_api.api.deps import CountedDep, PrincipalDep, ServicesDep
from chatbot_api.api.error_docs import error_responses
from chatbot_api.api.json_body import JSONBodyRoute
from chatbot_api.api.paging import After, Limit, Order
from chatbot_api.schemas.response_objects import (
    ConversationDeleted,
    ConversationItemList,
    ConversationList,
    ConversationObject,
    CreateConversationRequest,
    CreateItemsRequest,
    UpdateConversationRequest,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/conversations",
    tags=["conversations"],
    route_class=JSONBodyRoute,
    # Every route reads or changes the database.
    responses=error_responses(503),
)

ConversationId = Annotated[str, Path(description="The id of a conversation.")]
ItemId = Annotated[str, Path(description="The id of an item of the conversation.")]


@router.post(
    "",
    summary="Create a conversation",
    response_model=ConversationObject,
    responses=error_responses(400, 408, 413),
)
async def create_conversation(
    body: CreateConversationRequest,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """A new conversation, with up to 20 initial `items` and `metadata` (`{}` for neither)."""
    created = await services.responses.create_conversation(
        principal.owner, body.metadata or {}, body.items or []
    )
    return JSONResponse(created, headers=limits)


@router.get(
    "",
    summary="List your conversations",
    response_model=ConversationList,
    responses=error_responses(400),
)
async def list_conversations(
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
    after: After = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> JSONResponse:
    """The calling key's conversations, paged, newest first unless `order=asc`.

    Not in OpenAI's API, which cannot list conversations: an extension, so that a client
    (the playground's sidebar) finds a key's conversations from any browser."""
    page = await services.responses.conversations.list_owned(
        principal.owner, after=after, limit=limit, order=order
    )
    wire: dict[str, Any] = page.to_wire()
    return JSONResponse(wire, headers=limits)


@router.get(
    "/{conversation_id}",
    summary="Retrieve a conversation",
    response_model=ConversationObject,
    responses=error_responses(404),
)
async def retrieve_conversation(
    conversation_id: ConversationId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """The conversation (its `metadata` and `created_at`); its items are listed apart."""
    return JSONResponse(
        await services.responses.conversations.get(principal.owner, conversation_id), headers=limits
    )


@router.post(
    "/{conversation_id}",
    summary="Update a conversation's metadata",
    response_model=ConversationObject,
    responses=error_responses(400, 404, 408, 413),
)
async def update_conversation(
    conversation_id: ConversationId,
    body: UpdateConversationRequest,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """Replaces `metadata`."""
    updated = await services.responses.conversations.update(
        principal.owner, conversation_id, body.metadata
    )
    return JSONResponse(updated, headers=limits)


@router.delete(
    "/{conversation_id}",
    summary="Delete a conversation",
    response_model=ConversationDeleted,
    responses=error_responses(404),
)
async def delete_conversation(
    conversation_id: ConversationId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """Deletes the conversation and its items; items of stored responses stay with them."""
    deleted = await services.responses.conversations.delete(principal.owner, conversation_id)
    return JSONResponse(deleted, headers=limits)


@router.get(
    "/{conversation_id}/items",
    summary="List a conversation's items",
    response_model=ConversationItemList,
    responses=error_responses(400, 404),
)
async def list_items(
    conversation_id: ConversationId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
    after: After = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> JSONResponse:
    """The conversation's items, paged; newest first unless `order=asc`, as OpenAI's."""
    page = await services.responses.conversations.list_items(
        principal.owner, conversation_id, after=after, limit=limit, order=order
    )
    wire: dict[str, Any] = page.to_wire()
    return JSONResponse(wire, headers=limits)


@router.post(
    "/{conversation_id}/items",
    summary="Add items to a conversation",
    response_model=ConversationItemList,
    responses=error_responses(400, 404, 408, 413),
)
async def create_items(
    conversation_id: ConversationId,
    body: CreateItemsRequest,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """Appends up to 20 items; the answer lists them as stored, with their ids."""
    added = await services.responses.add_conversation_items(
        principal.owner, conversation_id, body.items
    )
    return JSONResponse(added, headers=limits)


@router.get(
    "/{conversation_id}/items/{item_id}",
    summary="Retrieve an item of a conversation",
    responses=error_responses(404),
)
async def retrieve_item(
    conversation_id: ConversationId,
    item_id: ItemId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """One item of the conversation, as it was stored."""
    item = await services.responses.conversations.get_item(
        principal.owner, conversation_id, item_id
    )
    return JSONResponse(item, headers=limits)


@router.delete(
    "/{conversation_id}/items/{item_id}",
    summary="Delete an item from a conversation",
    response_model=ConversationObject,
    responses=error_responses(404),
)
async def delete_item(
    conversation_id: ConversationId,
    item_id: ItemId,
    services: ServicesDep,
    principal: PrincipalDep,
    limits: CountedDep,
) -> JSONResponse:
    """Takes the item out of the conversation; the conversation is returned."""
    conversation = await services.responses.conversations.delete_item(
        principal.owner, conversation_id, item_id
    )
    return JSONResponse(conversation, headers=limits)
