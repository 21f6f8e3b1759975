"""The app factory. ``create_app(settings)`` builds the app; its lifespan owns every resource."""

from __future__ import annotations

import gc
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chatbot_api import __version__
from chatbot_api.api import (
    admin,
    chat,
    conversations,
    health,
    metrics,
    models,
    playground,
    responses,
    stored,
    voice,
)
from chatbot_api.api.deps import authenticate
from chatbot_api.api.error_docs import drop_validation_422, error_responses
from chatbot_api.api.error_handlers import install_exception_handlers
from chatbot_api.api.fast import FastRoutes
from chatbot_api.config import Settings
from chatbot_api.db.engine import Database, default_database_url
from chatbot_api.logs import configure_logging, reset_logging
from chatbot_api.middleware import RequestContextMiddleware
from chatbot_api.providers.registry import (
    PROVIDER_KINDS,
    ModelRegistry,
    ProviderKind,
    load_model_specs,
)
from chatbot_api.security.auth import Authenticator
from chatbot_api.security.hardening import HardeningMiddleware
from chatbot_api.security.keys import KeyStore
from chatbot_api.security.rate_limit import RateLimiter
from chatbot_api.services.background import BackgroundResponses
from chatbot_api.services.chat import ChatService
from chatbot_api.services.responses import ResponseService
from chatbot_api.services.voice import VoiceService
from chatbot_api.state import AppServices
from chatbot_api.store.completions import CompletionStore
from chatbot_api.store.conversations import ConversationStore
from chatbot_api.store.responses import ResponseStore
from chatbot_api.store.voice import VoiceSessionStore
from chatbot_api.store.writer import UNSTORED_FILE_NAME, StoreWriter

__all__ = ["create_app", "create_app_from_env"]

logger = logging.getLogger(__name__)

#: Response headers a browser client may read across origins.
EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "retry-after-ms",
    *(
        f"x-ratelimit-{part}-{kind}"
        for kind in ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    ),
]

_DESCRIPTION = """
A self-hosted chatbot API that speaks the OpenAI Chat Completions protocol: point any OpenAI
client (the official SDKs, LangChain's `ChatOpenAI`, curl) at it unchanged.

Errors always come in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`
with OpenAI's status codes. Every response carries an `X-Request-ID` header.
"""


def _say_where(settings: Settings, model_ids: list[str]) -> None:
    """The one start-up line a person needs: where everything is, and which models serve."""
    host = settings.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name
        address = None
    if address is not None and address.is_unspecified:
        host = "localhost"  # every address: this machine's own is one of them
    elif address is not None and address.version == 6:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}"
    places = {"api": f"{base}/v1", "docs": f"{base}/docs"}
    if settings.playground:
        places["playground"] = f"{base}/"
    # Each address stands alone between spaces, so that a terminal's link ends where it does.
    logger.info(
        "serving %s · %s",
        ", ".join(model_ids) or "no models",
        " · ".join(f"{name} {url}" for name, url in places.items()),
        extra={"models": model_ids, **places},
    )


def settle_the_heap() -> None:
    """Keep the garbage collector's full passes off everything loaded at start.

    Some hundred thousand objects (FastAPI, Pydantic's schemas, SQLAlchemy, the OpenAPI
    document) live as long as the process. Each full collection walked them all: at
    concurrency 64 on ``echo`` that was a pause every few seconds long enough to hold every
    request in flight, the p99 stalls of docs/benchmarks.md. Frozen, they are never walked
    again; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    *,
    provider_kinds: Mapping[str, ProviderKind] = PROVIDER_KINDS,
) -> FastAPI:
    """Build the ASGI app. Nothing is opened until the lifespan starts.

    ``provider_kinds`` names the backends a models file may use; an embedding application
    (or a test) can add its own :class:`~chatbot_api.providers.base.Provider` here.
    """
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        async with AsyncExitStack() as resources:
            resources.callback(reset_logging)
            database = Database(
                settings.database_url or default_database_url(settings.data_dir),
                busy_timeout_ms=settings.database_busy_timeout_ms,
            )
            resources.push_async_callback(database.dispose)
            await database.migrate()
            writer = StoreWriter(
                database,
                queue_size=settings.store_queue_size,
                batch_size=settings.store_batch_size,
                unstored_file=settings.data_dir / UNSTORED_FILE_NAME,
            )
            writer.start()
            resources.push_async_callback(writer.close, settings.store_flush_seconds)
            store = CompletionStore(database, writer)
            keys = KeyStore(database)
            resources.callback(keys.close)
            auth = Authenticator(settings, keys)
            if not await auth.required():
                logger.warning(
                    "authentication is off: no master key and no API keys. Anyone who can "
                    "reach this server can use it; set CHATBOT_MASTER_KEY or create a key."
                )
            specs = load_model_specs(settings, provider_kinds)
            registry = await ModelRegistry.open(specs, settings, provider_kinds)
            resources.push_async_callback(registry.aclose)
            limiter = RateLimiter.from_settings(settings)
            if settings.workers > 1 and settings.redis_url is None:
                logger.warning(
                    "rate limits are counted in each of the %d workers separately; set "
                    "CHATBOT_REDIS_URL so that they share one count",
                    settings.workers,
                )
            resources.push_async_callback(limiter.aclose)
            chat_service = ChatService(
                registry,
                store,
                store_by_default=settings.store_by_default,
                reserve_tokens=settings.rate_limit_reserve_tokens,
            )
            lease = settings.background_lease_seconds
            response_store = ResponseStore(database, lease_seconds=lease)
            resources.push_async_callback(response_store.close)
            response_service = ResponseService(
                chat_service,
                response_store,
                ConversationStore(database),
                max_context_chars=settings.max_context_chars,
            )
            background = BackgroundResponses(response_service, renew_seconds=lease / 5)
            resources.push_async_callback(background.close)
            voice_service = VoiceService(settings, registry, VoiceSessionStore(database))
            voice_service.open()
            resources.push_async_callback(voice_service.aclose)
            app.state.services = AppServices(
                settings=settings,
                registry=registry,
                chat=chat_service,
                responses=response_service,
                background=background,
                database=database,
                writer=writer,
                store=store,
                keys=keys,
                auth=auth,
                limiter=limiter,
                voice=voice_service,
            )
            _say_where(settings, [spec.id for spec in registry])
            settle_the_heap()
            yield
            logger.info("shutting down")

    app = FastAPI(
        title="chatbot-api",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        # A body without a Content-Type is read as JSON, as OpenAI's API does.
        strict_content_type=False,
        # Any route: headers over the cap (HardeningMiddleware), the last-resort 500.
        responses=error_responses(431, 500),
    )
    install_exception_handlers(app)
    drop_validation_422(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Every /v1 route and the admin routes need a key once authentication is on.
    secured = [Depends(authenticate)]
    refusals = error_responses(401, 429)
    app.include_router(models.router, dependencies=secured, responses=refusals)
    app.include_router(chat.router, dependencies=secured, responses=refusals)
    app.include_router(stored.router, dependencies=secured, responses=refusals)
    app.include_router(responses.router, dependencies=secured, responses=refusals)
    app.include_router(conversations.router, dependencies=secured, responses=refusals)
    app.include_router(admin.router, dependencies=secured, responses=refusals)
    app.include_router(voice.router, dependencies=secured, responses=refusals)
    app.include_router(voice.webhooks)
    if settings.playground:
        playground.install_playground(app)
    # Innermost of ours: the hot path, served past FastAPI's per-request machinery.
    app.add_middleware(FastRoutes, routes={"/v1/chat/completions": chat.create_chat_completion})
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            # Any header: the openai SDKs send their own (x-stainless-*); Starlette echoes the
            # preflight's list, which, unlike a literal `*`, also covers Authorization.
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(
        HardeningMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    # Outermost, so that every answer, refusals by the layers above included, has an id.
    app.add_middleware(RequestContextMiddleware)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and for each worker process of ``serve --workers``."""
    return create_app(Settings())
