"""``GET /v1/models`` and ``GET /v1/models/{model_id}``."""

from __future__ import annotations

from fastapi import APIRouter

from chatbot_api.api.deps import PrincipalDep, ServicesDep
from chatbot_api.api.error_docs import error_responses
from chatbot_api.errors import ModelNotFoundError
from chatbot_api.providers.registry import ModelSpec
from chatbot_api.schemas.models import ListModelsResponse, Model

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])


def _to_wire(spec: ModelSpec) -> Model:
    return Model(id=spec.id, created=spec.created, owned_by=spec.owned_by)


@router.get("/models", summary="List models")
async def list_models(services: ServicesDep, principal: PrincipalDep) -> ListModelsResponse:
    """The models this server serves to the caller, as OpenAI's `GET /v1/models` lists them."""
    return ListModelsResponse(
        data=[_to_wire(spec) for spec in services.registry if principal.may_use(spec.id)]
    )


@router.get("/models/{model_id:path}", summary="Retrieve a model", responses=error_responses(404))
async def retrieve_model(model_id: str, services: ServicesDep, principal: PrincipalDep) -> Model:
    """One model by id; an unknown id, or one the key may not use, answers 404
    `model_not_found`."""
    if not principal.may_use(model_id):
        raise ModelNotFoundError(model_id)
    return _to_wire(services.registry.get(model_id).spec)
