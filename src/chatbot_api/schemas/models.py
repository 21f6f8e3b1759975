"""``Model`` and ``ListModelsResponse`` as the OpenAI spec defines them."""

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["ListModelsResponse", "Model"]


class Model(BaseModel):
    id: str = Field(examples=["echo"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time (seconds) when the model was registered.")
    owned_by: str = Field(examples=["chatbot-api"])


class ListModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
