"""Typed dependencies that keep route signatures short.

One ``async def`` dependency per route: FastAPI runs a plain ``def`` dependency in a worker
thread, and every extra level of dependencies is solved per request, both costing more than
the lookups themselves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from chatbot_api.errors import AuthenticationError
from chatbot_api.middleware import REQUEST_ID_STATE
from chatbot_api.security.auth import Principal
from chatbot_api.state import AppServices

__all__ = [
    "CountedDep",
    "PrincipalDep",
    "ServicesDep",
    "authenticate",
    "client_address",
    "count_request",
    "request_id",
]


async def get_services(request: Request) -> AppServices:
    services = request.app.state.services
    assert isinstance(services, AppServices), "the lifespan has not run"
    return services


ServicesDep = Annotated[AppServices, Depends(get_services)]


def request_id(request: Request) -> str | None:
    """The id ``RequestContextMiddleware`` gave this request (stored with its completion)."""
    found = getattr(request.state, REQUEST_ID_STATE, None)
    return found if isinstance(found, str) else None


def client_address(request: Request) -> str:
    """The caller's address (the proxy's, unless uvicorn is told to trust its headers)."""
    return request.client.host if request.client is not None else "unknown"


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    """Who is calling; 401 when authentication is on and the key is missing or wrong.

    An address that keeps failing gets 429 instead of 401 for the rest of the minute. The key
    is checked first, so that a valid one is never refused for what others behind the same
    address (a NAT, an office) tried; a guesser is slowed by the 429 and stopped by the keys'
    randomness, and a malformed key costs no lookup.
    """
    try:
        return await services.auth.authenticate(request.headers.get("authorization"))
    except AuthenticationError:
        await services.limiter.throttle_auth_failure(client_address(request))
        raise


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def count_request(
    request: Request, services: ServicesDep, principal: PrincipalDep
) -> Headers:
    """One request against the caller's requests per minute (it uses no tokens); 429 over
    the limit. For the routes that generate nothing (reading and changing stored responses
    and conversations); they answer with the ``x-ratelimit-*`` headers returned."""
    quota = await services.limiter.admit(principal, client_address(request), tokens=0)
    await quota.settle(0)
    return quota.headers


Headers = dict[str, str]
#: The rate-limit headers of a request counted by :func:`count_request`.
CountedDep = Annotated[Headers, Depends(count_request)]
