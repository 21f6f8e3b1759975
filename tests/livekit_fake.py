"""A small fake of LiveKit's RoomService (Twirp over HTTP with protobuf bodies), for the
voice tests: LiveKit's server is not installable here. It checks the caller's token with
``livekit-api``'s own verifier, as LiveKit does, keeps the rooms it was asked to make, and
can be told to refuse, fail or stall."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from livekit import api as livekit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["LIVEKIT_KEY", "LIVEKIT_SECRET", "FakeLiveKit"]

LIVEKIT_KEY = "APIfakekey0123"
LIVEKIT_SECRET = "fake-livekit-secret-never-to-be-shown-0123456789abcdef"


def _twirp_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "msg": message}, status_code=status)


@dataclass
class FakeLiveKit:
    """``behaviour``: ``ok``, ``refuse`` (a Twirp 403), ``fail`` (a 500), ``junk`` (a web
    page with status 200) or ``stall``."""

    behaviour: str = "ok"
    rooms: dict[str, livekit.CreateRoomRequest] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/twirp/livekit.RoomService/{method}", self._room_service, methods=["POST"])
            ]
        )

    async def _room_service(self, request: Request) -> Response:
        method = request.path_params["method"]
        self.calls.append(method)
        authorization = request.headers.get("authorization", "")
        try:
            claims = livekit.TokenVerifier(LIVEKIT_KEY, LIVEKIT_SECRET).verify(
                authorization.removeprefix("Bearer ")
            )
        except Exception:
            return _twirp_error(401, "unauthenticated", "invalid token")
        if self.behaviour == "refuse":
            return _twirp_error(403, "permission_denied", f"no permission for {LIVEKIT_KEY}")
        if self.behaviour == "fail":
            return _twirp_error(500, "internal", "the fake exploded")
        if self.behaviour == "junk":  # a captive portal, a misrouted proxy
            return Response(b"<html>Welcome to the hotel network</html>", media_type="text/html")
        if self.behaviour == "stall":
            await asyncio.sleep(5)  # past the 1 s the tests' servers wait
        body = await request.body()
        if method == "ListRooms":
            assert claims.video is not None
            assert claims.video.room_list
            asked = livekit.ListRoomsRequest.FromString(body)
            rooms = [livekit.Room(name=name) for name in asked.names if name in self.rooms]
            return _protobuf(livekit.ListRoomsResponse(rooms=rooms))
        if method == "CreateRoom":
            assert claims.video is not None
            assert claims.video.room_create
            create = livekit.CreateRoomRequest.FromString(body)
            self.rooms.setdefault(create.name, create)
            return _protobuf(livekit.Room(name=create.name, metadata=create.metadata))
        return _twirp_error(404, "bad_route", f"no method {method}")


def _protobuf(message: object) -> Response:
    serialized = message.SerializeToString()  # type: ignore[attr-defined]
    return Response(serialized, media_type="application/protobuf")
