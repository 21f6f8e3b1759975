"""The resources the lifespan opens, in one typed object instead of loose ``app.state`` keys."""

from __future__ import annotations

from dataclasses import dataclass

from chatbot_api.config import Settings
from chatbot_api.db.engine import Database
from chatbot_api.providers.registry import ModelRegistry
from chatbot_api.security.auth import Authenticator
from chatbot_api.security.keys import KeyStore
from chatbot_api.security.rate_limit import RateLimiter
from chatbot_api.services.background import BackgroundResponses
from chatbot_api.services.chat import ChatService
from chatbot_api.services.responses import ResponseService
from chatbot_api.services.voice import VoiceService
from chatbot_api.store.completions import CompletionStore
from chatbot_api.store.writer import StoreWriter

__all__ = ["AppServices"]


@dataclass(frozen=True, slots=True)
class AppServices:
    settings: Settings
    registry: ModelRegistry
    chat: ChatService
    responses: ResponseService
    background: BackgroundResponses
    database: Database
    writer: StoreWriter
    store: CompletionStore
    keys: KeyStore
    auth: Authenticator
    limiter: RateLimiter
    voice: VoiceService
