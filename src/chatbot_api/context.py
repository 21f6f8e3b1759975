"""What the current request has learned about itself, for its log lines and its access-log line."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatbot_api.security.auth import Principal

__all__ = ["RequestContext", "current_owner", "current_request", "request_context"]


@dataclass(slots=True)
class RequestContext:
    """Mutable on purpose: the route and service fill in what the access log reports."""

    request_id: str
    #: Whose data this request may see: the API key's id once keys exist; "" when anonymous.
    owner: str = ""
    principal: Principal | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool | None = None


request_context: ContextVar[RequestContext | None] = ContextVar("chatbot_api_request", default=None)


def current_request() -> RequestContext | None:
    return request_context.get()


def current_owner() -> str:
    context = request_context.get()
    return context.owner if context else ""
