"""Voice sessions through LiveKit: rooms, participant tokens, agent dispatch, webhooks.

A caller asks for a session; we make the LiveKit room (with the agent dispatched into it,
carrying the model and instructions), mint a token that joins that room only, and keep a
record of the session, which LiveKit's webhooks then fill in. The voice agent itself is a
LiveKit Agents worker whose LLM is this server's own ``/v1`` (``examples/voice_agent.py``).
Everything of LiveKit's protocol (tokens, Twirp calls, webhook checks) is ``livekit-api``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

import aiohttp
from google.protobuf.json_format import ParseError
from google.protobuf.message import DecodeError
from livekit import api as livekit

from chatbot_api.config import Settings
from chatbot_api.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    VoiceNotConfiguredError,
    VoiceServerError,
)
from chatbot_api.providers.registry import ModelRegistry
from chatbot_api.schemas.voice import CreateVoiceSessionRequest
from chatbot_api.security.auth import Principal
from chatbot_api.store.voice import VoiceSessionStore

__all__ = ["VoiceService"]

logger = logging.getLogger(__name__)

#: How long LiveKit keeps a room we made before anyone joins, or after everyone left.
ROOM_EMPTY_TIMEOUT_SECONDS = 300
#: The webhook events that change a session's record.
_RECORDED = frozenset({"room_started", "participant_joined", "room_finished"})


def _compact(brief: dict[str, Any]) -> str:
    """A brief as JSON, non-ASCII text as UTF-8 rather than six-byte escapes (it rides in a
    token, which clients put in a URL)."""
    return json.dumps(brief, ensure_ascii=False, separators=(",", ":"))


class VoiceService:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, sessions: VoiceSessionStore
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.sessions = sessions
        self._api: livekit.LiveKitAPI | None = None
        self._secret = ""
        self._webhooks: livekit.WebhookReceiver | None = None

    @property
    def configured(self) -> bool:
        settings = self.settings
        return bool(
            settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret
        )

    def open(self) -> None:
        """Make the LiveKit client (its HTTP session needs the running loop)."""
        if not self.configured:
            return
        settings = self.settings
        assert settings.livekit_api_secret is not None
        secret = self._secret = settings.livekit_api_secret.get_secret_value()
        self._api = livekit.LiveKitAPI(
            settings.livekit_url,
            settings.livekit_api_key,
            secret,
            timeout=aiohttp.ClientTimeout(total=settings.livekit_timeout_seconds),
        )
        self._webhooks = livekit.WebhookReceiver(
            livekit.TokenVerifier(settings.livekit_api_key, secret)
        )

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    def _client(self) -> livekit.LiveKitAPI:
        if self._api is None:
            raise VoiceNotConfiguredError()
        return self._api

    def require(self) -> None:
        """503 unless LiveKit is configured: for the routes that only read our records."""
        self._client()

    async def create_session(
        self, principal: Principal, body: CreateVoiceSessionRequest
    ) -> dict[str, Any]:
        client = self._client()
        self.registry.get(body.model, param="model")  # 404 for a model that is not served
        if not principal.may_use(body.model):
            raise ModelNotFoundError(body.model, param="model")
        room_name = body.room_name or f"voice-{secrets.token_hex(8)}"
        identity = body.participant_identity or f"user-{secrets.token_hex(6)}"
        metadata = body.metadata or {}
        new, model = await self.sessions.claim(principal.owner, room_name, body.model, metadata)
        if model != body.model:
            raise InvalidRequestError(
                f"The room '{room_name}' serves the model '{model}': ask for that model, or "
                "for another room.",
                param="model",
            )

        # What the agent needs to answer goes in the dispatch of the room we make: the job's
        # metadata, which only the agent's worker sees. The room's own metadata, which every
        # participant can read, names the model alone. The token's room configuration carries
        # the brief too (for a room its first participant creates): the caller sent it, and
        # whoever holds the token can read it.
        brief = _compact({"model": body.model, "instructions": body.instructions})
        dispatch = {"model": body.model, "instructions": body.instructions, "metadata": metadata}
        try:
            existed = await self._ensure_room(
                client,
                room_name,
                dispatch=_compact(dispatch),
                public=_compact({"model": body.model}),
            )
            if new and existed:
                raise ConflictError(
                    f"A room '{room_name}' exists on the LiveKit server and this API did not "
                    "make it; choose another room_name.",
                    param="room_name",
                    code="room_taken",
                )
        except BaseException:
            if new:  # nothing of this session exists: it is not listed
                await self.sessions.forget(principal.owner, room_name)
            raise
        ttl = self.settings.livekit_token_ttl
        token = (
            livekit.AccessToken(self.settings.livekit_api_key, self._secret)
            .with_identity(identity)
            .with_name(body.participant_name or identity)
            .with_ttl(timedelta(seconds=ttl))
            .with_grants(
                livekit.VideoGrants(
                    room_join=True,
                    room=room_name,
                    can_publish=True,
                    can_subscribe=True,
                    can_publish_data=True,
                )
            )
        )
        if self.settings.livekit_agent_name:
            token = token.with_room_config(livekit.RoomConfiguration(agents=self._dispatch(brief)))
        return {
            "server_url": self.settings.livekit_url,
            "participant_token": token.to_jwt(),
            "room_name": room_name,
            "participant_identity": identity,
            "expires_at": int(time.time()) + ttl,
        }

    def _dispatch(self, metadata: str) -> list[livekit.RoomAgentDispatch]:
        name = self.settings.livekit_agent_name
        return [livekit.RoomAgentDispatch(agent_name=name, metadata=metadata)] if name else []

    async def _ensure_room(
        self, client: livekit.LiveKitAPI, room_name: str, *, dispatch: str, public: str
    ) -> bool:
        """Make the room unless LiveKit has it; True when it was there already."""
        # Our own deadline: livekit-api hands aiohttp `timeout=None` on every call, which
        # turns off the session's timeout, and a LiveKit that never answers would hold the
        # request for ever.
        try:
            async with asyncio.timeout(self.settings.livekit_timeout_seconds):
                found = await client.room.list_rooms(livekit.ListRoomsRequest(names=[room_name]))
                if any(room.name == room_name for room in found.rooms):
                    return True
                await client.room.create_room(
                    livekit.CreateRoomRequest(
                        name=room_name,
                        empty_timeout=ROOM_EMPTY_TIMEOUT_SECONDS,
                        metadata=public,
                        agents=self._dispatch(dispatch),
                    )
                )
                return False
        except livekit.TwirpError as exc:
            # Its message may be about our credentials: logged, never sent.
            logger.warning(
                "LiveKit refused a room",
                extra={
                    "room": room_name,
                    "status": exc.status,
                    "code": exc.code,
                    "error": exc.message,
                },
            )
            raise VoiceServerError(f"refused to make the room ({exc.code})") from None
        except DecodeError:
            logger.warning("LiveKit answered with something else", extra={"room": room_name})
            raise VoiceServerError("answered with something that is not LiveKit's") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            logger.warning(
                "LiveKit did not answer", extra={"room": room_name, "error": type(exc).__name__}
            )
            raise VoiceServerError("did not answer") from None

    async def webhook(self, body: bytes, authorization: str | None) -> bool:
        """Check a webhook's signature and record what it says; False when it is about a
        room that is not ours (answered 200 all the same: LiveKit only needs it taken)."""
        self._client()
        assert self._webhooks is not None
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise AuthenticationError(
                "A LiveKit webhook must carry its signed token in the Authorization header.",
                code="invalid_signature",
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("A LiveKit webhook's body is UTF-8 JSON.") from None
        try:
            event = self._webhooks.receive(text, token)
        except ParseError:
            raise InvalidRequestError("The webhook's body is not a LiveKit event.") from None
        except Exception:
            raise AuthenticationError(
                "The webhook's signature does not verify.", code="invalid_signature"
            ) from None
        if event.event not in _RECORDED or not event.room.name:
            return False
        at = int(event.created_at) if event.created_at > 0 else int(time.time())
        participant = event.participant.identity if event.HasField("participant") else None
        return await self.sessions.record(
            event.room.name, event.event, at=at, participant=participant
        )
