"""What the current request has learned about itself, for its log lines and access-log line.

For log correlation only: who is calling, what they may use and what they consumed travel as
arguments (``ChatService.prepare(body, principal, ...)``, a completion's ``usage``), never
through this context.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["RequestContext", "current_request", "request_context"]


@dataclass(slots=True)
class RequestContext:
    """Mutable on purpose: the route and service fill in what the access log reports."""

    request_id: str
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool | None = None
    #: The upstream deployment that served the request (``openai`` models).
    deployment: str | None = None


request_context: ContextVar[RequestContext | None] = ContextVar("chatbot_api_request", default=None)


def current_request() -> RequestContext | None:
    return request_context.get()
