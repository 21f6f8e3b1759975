"""OpenAI's error envelope (``ErrorResponse`` in the spec)."""

from pydantic import BaseModel

__all__ = ["ErrorBody", "ErrorResponse"]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
