"""Voice sessions through LiveKit: tokens checked with ``livekit-api``'s own verifier, rooms
made through a fake of LiveKit's RoomService (the only fake: LiveKit's server is not
installable here), webhooks signed with ``livekit-api`` accepted and tampered ones refused."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api as livekit

from chatbot_api.app import create_app
from tests.clients import MASTER, make_key
from tests.conftest import make_settings
from tests.livekit_fake import LIVEKIT_KEY, LIVEKIT_SECRET, FakeLiveKit
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import LiveServer, free_port
from tests.spec import validate
from tests.test_response_state import BACKENDS, database_for

AGENT = "chatbot-voice"


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeLiveKit, LiveServer]]:
    livekit_fake = FakeLiveKit()
    with LiveServer(livekit_fake.app()) as live:
        yield livekit_fake, live


@pytest.fixture
def livekit_server(fake: tuple[FakeLiveKit, LiveServer]) -> FakeLiveKit:
    """The module's fake LiveKit, answering normally and with no calls recorded yet."""
    state, _ = fake
    state.behaviour = "ok"
    state.calls.clear()
    state.rooms.clear()
    return state


def _voice_settings(url: str, directory: Path, models_file: Path, **extra: Any) -> Any:
    return make_settings(
        master_key=MASTER,
        data_dir=directory,
        models_file=models_file,
        livekit_url=url,
        livekit_api_key=LIVEKIT_KEY,
        livekit_api_secret=LIVEKIT_SECRET,
        livekit_agent_name=AGENT,
        livekit_timeout_seconds=1.0,
        rate_limit_rpm=1000,  # counted, as chat completions are
        **extra,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest,
    fake: tuple[FakeLiveKit, LiveServer],
    tmp_path_factory: pytest.TempPathFactory,
    models_file: Path,
) -> Iterator[LiveServer]:
    """Ours, on SQLite and on PostgreSQL (a room is claimed by each in its own dialect)."""
    _, live = fake
    directory = tmp_path_factory.mktemp("voice")
    with database_for(request.param, directory) as url:
        settings = _voice_settings(live.base_url, directory, models_file, database_url=url)
        with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as ours:
            yield ours


def _client(server: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    """A caller with a key of its own."""
    with _client(server, str(make_key(server)["key"])) as caller:
        yield caller


def _error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    validate("ErrorResponse", answer.json())
    error: dict[str, Any] = answer.json()["error"]
    return error


def test_a_session_is_a_room_with_the_agent_and_a_token_for_that_room_only(
    http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    answer = http.post(
        "/v1/voice/sessions",
        json={"model": "echo", "instructions": "Answer briefly.", "participant_name": "Ada"},
    )
    assert answer.status_code == 201, answer.text
    session = answer.json()
    assert set(session) == {
        "server_url",
        "participant_token",
        "room_name",
        "participant_identity",
        "expires_at",
    }
    assert "x-ratelimit-limit-requests" in answer.headers  # counted like any request

    claims = livekit.TokenVerifier(LIVEKIT_KEY, LIVEKIT_SECRET).verify(session["participant_token"])
    assert claims.identity == session["participant_identity"]
    assert claims.name == "Ada"
    assert claims.video is not None
    assert claims.video.room == session["room_name"]
    assert claims.video.room_join
    assert claims.video.can_publish
    assert claims.video.can_subscribe
    assert not claims.video.room_create
    assert not claims.video.room_admin
    decoded = json.loads(
        base64.urlsafe_b64decode(session["participant_token"].split(".")[1] + "==")
    )
    assert decoded["exp"] == session["expires_at"]
    assert 590 <= session["expires_at"] - time.time() <= 600  # the default ten minutes
    assert claims.room_config is not None
    [dispatch] = claims.room_config.agents
    assert dispatch.agent_name == AGENT
    assert json.loads(dispatch.metadata) == {"model": "echo", "instructions": "Answer briefly."}
    # A token signed with another secret is not LiveKit's.
    with pytest.raises(Exception, match="Signature"):
        livekit.TokenVerifier(
            LIVEKIT_KEY, "another-secret-of-the-same-length-0123456789abc"
        ).verify(session["participant_token"])

    # The room was made through RoomService, empty-timed, with the agent dispatched into it.
    assert livekit_server.calls == ["ListRooms", "CreateRoom"]
    made = livekit_server.rooms[session["room_name"]]
    assert made.empty_timeout > 0
    [room_dispatch] = made.agents
    assert room_dispatch.agent_name == AGENT
    assert json.loads(room_dispatch.metadata)["model"] == "echo"

    # And the session is recorded, for this key.
    recorded = http.get(f"/v1/voice/sessions/{session['room_name']}").json()
    assert recorded["model"] == "echo"
    assert (recorded["started_at"], recorded["ended_at"], recorded["participants"]) == (
        None,
        None,
        [],
    )


def test_a_room_that_exists_is_joined_not_made_again(
    http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    body = {"model": "echo", "room_name": "standup-7", "metadata": {"team": "core"}}
    first = http.post("/v1/voice/sessions", json={**body, "participant_identity": "ada"})
    second = http.post("/v1/voice/sessions", json={**body, "participant_identity": "bob"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert livekit_server.calls == ["ListRooms", "CreateRoom", "ListRooms"]
    assert [first.json()["participant_identity"], second.json()["participant_identity"]] == [
        "ada",
        "bob",
    ]
    made = livekit_server.rooms["standup-7"]
    # Every participant can read the room's metadata: it names the model, nothing private.
    assert json.loads(made.metadata) == {"model": "echo"}
    # The dispatch (the agent's job) carries the rest, the session's metadata included.
    assert json.loads(made.agents[0].metadata)["metadata"] == {"team": "core"}
    # The same room for another model is refused: its agent answers with the first.
    other = http.post("/v1/voice/sessions", json={**body, "model": "echo-slow"})
    assert _error(other, 400)["param"] == "model"
    recorded = http.get("/v1/voice/sessions/standup-7").json()
    assert (recorded["model"], recorded["metadata"]) == ("echo", {"team": "core"})


def test_a_room_this_api_did_not_make_is_not_handed_out(
    http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    """A LiveKit project may serve other applications: their rooms are not ours to join."""
    livekit_server.rooms["other-app"] = livekit.CreateRoomRequest(name="other-app")
    answer = http.post("/v1/voice/sessions", json={"model": "echo", "room_name": "other-app"})
    assert _error(answer, 409)["code"] == "room_taken"
    assert "other-app" not in [
        s["room_name"] for s in http.get("/v1/voice/sessions").json()["data"]
    ]


def test_another_keys_room_is_refused(
    server: LiveServer, http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    assert http.post("/v1/voice/sessions", json={"model": "echo", "room_name": "mine"}).is_success
    with _client(server, str(make_key(server)["key"])) as mallory:
        refused = mallory.post("/v1/voice/sessions", json={"model": "echo", "room_name": "mine"})
        error = _error(refused, 409)
        assert (error["code"], error["param"]) == ("room_taken", "room_name")
        assert _error(mallory.get("/v1/voice/sessions/mine"), 404)["param"] == "room_name"


def test_a_model_the_key_may_not_use_is_not_found_and_no_key_is_refused(
    server: LiveServer, livekit_server: FakeLiveKit
) -> None:
    with _client(server, str(make_key(server, models=["echo"])["key"])) as limited:
        for model in ("echo-slow", "no-such-model"):  # served but not allowed; not served
            answer = limited.post("/v1/voice/sessions", json={"model": model})
            assert _error(answer, 404)["code"] == "model_not_found"
    anonymous = httpx.post(f"{server.base_url}/v1/voice/sessions", json={"model": "echo"})
    assert _error(anonymous, 401)["code"] == "invalid_api_key"
    assert livekit_server.calls == []  # nothing was asked of LiveKit


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "echo", "room_name": "a room with spaces"},
        {"model": "echo", "room_name": "../admin"},
        {"model": "echo", "participant_identity": ""},
        {"model": "echo", "instructions": "x" * 3999},  # 4,001 bytes with its quotes
        {"model": "echo", "instructions": "\U0001f600" * 1000},  # 4,002 bytes of UTF-8
        {"model": "echo", "instructions": "\u0001" * 700},  # 4,202 bytes of escapes
        {"model": "echo", "room_name": ".."},
        {"model": "echo", "surprise": True},
        {"model": "echo", "metadata": {"k": 1}},
    ],
)
def test_a_bad_request_is_a_400(
    http: httpx.Client, livekit_server: FakeLiveKit, body: dict[str, Any]
) -> None:
    _error(http.post("/v1/voice/sessions", json=body), 400)
    assert livekit_server.calls == []


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [
        ("refuse", "refused"),
        ("fail", "refused"),
        ("junk", "not LiveKit's"),
        ("stall", "did not answer"),
    ],
)
def test_a_livekit_server_that_refuses_or_does_not_answer_is_a_502(
    http: httpx.Client, livekit_server: FakeLiveKit, behaviour: str, said: str
) -> None:
    livekit_server.behaviour = behaviour
    room = f"failing-{behaviour}"
    answer = http.post("/v1/voice/sessions", json={"model": "echo", "room_name": room})
    error = _error(answer, 502)
    assert error["code"] == "voice_server_error"
    assert said in error["message"]
    assert LIVEKIT_SECRET not in answer.text
    assert LIVEKIT_KEY not in answer.text
    # A room that could not be made is no session.
    assert room not in [s["room_name"] for s in http.get("/v1/voice/sessions").json()["data"]]
    livekit_server.behaviour = "ok"
    assert http.post("/v1/voice/sessions", json={"model": "echo", "room_name": room}).is_success


def test_a_livekit_server_that_is_not_there_is_a_502(tmp_path: Path, models_file: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    settings = _voice_settings(nowhere, tmp_path, models_file)
    with LiveServer(create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)) as ours:
        answer = httpx.post(
            f"{ours.base_url}/v1/voice/sessions",
            headers={"Authorization": f"Bearer {MASTER}"},
            json={"model": "echo"},
        )
    assert "did not answer" in _error(answer, 502)["message"]


def test_without_livekit_settings_voice_is_a_503_and_the_rest_works(
    tmp_path: Path, models_file: Path
) -> None:
    settings = make_settings(master_key=MASTER, data_dir=tmp_path, models_file=models_file)
    app = create_app(settings, provider_kinds=TEST_PROVIDER_KINDS)
    with LiveServer(app) as ours, _client(ours, MASTER) as master:
        for answer in (
            master.post("/v1/voice/sessions", json={"model": "echo"}),
            master.get("/v1/voice/sessions"),
            master.get("/v1/voice/sessions/any"),
            master.post("/v1/voice/webhooks", content=b"{}"),
        ):
            assert _error(answer, 503)["code"] == "voice_not_configured"
        chat = master.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "still here"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "still here"


def _webhook(event: livekit.WebhookEvent, *, secret: str = LIVEKIT_SECRET) -> tuple[bytes, str]:
    """A webhook as LiveKit sends it: the event's JSON, and a token over its SHA-256."""
    body = MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return body, livekit.AccessToken(LIVEKIT_KEY, secret).with_sha256(digest).to_jwt()


def _send(server: LiveServer, body: bytes, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/webhook+json"}
    if token is not None:
        headers["Authorization"] = token
    return httpx.post(f"{server.base_url}/v1/voice/webhooks", content=body, headers=headers)


def test_signed_webhooks_record_the_session_and_others_change_nothing(
    server: LiveServer, http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    room = http.post("/v1/voice/sessions", json={"model": "echo"}).json()["room_name"]

    def event(kind: str, at: int, identity: str | None = None) -> livekit.WebhookEvent:
        made = livekit.WebhookEvent(event=kind, room=livekit.Room(name=room), created_at=at)
        if identity is not None:
            made.participant.identity = identity
        return made

    # Tampered with, unsigned, signed with another secret, or signed over another body:
    # refused, and nothing changes.
    started, token = _webhook(event("room_started", 1_800_000_000))
    other_body, other_token = _webhook(event("room_finished", 1_800_000_999))
    for body, signature in [
        (started.replace(b"room_started", b"room_finished"), token),
        (started, None),
        (started, "not-a-token"),
        (
            started,
            _webhook(
                event("room_started", 1_800_000_000),
                secret="a-guessed-secret-long-enough-for-hmac-0123456789",
            )[1],
        ),
        (started, other_token),
    ]:
        assert _error(_send(server, body, signature), 401)["code"] == "invalid_signature"
    assert http.get(f"/v1/voice/sessions/{room}").json()["started_at"] is None

    assert _send(server, started, token).json() == {"received": True, "recorded": True}
    for identity in ("ada", "agent-1", "ada"):  # a rejoin is not a second participant
        body, signature = _webhook(event("participant_joined", 1_800_000_005, identity))
        assert _send(server, body, signature).status_code == 200
    assert _send(server, other_body, f"Bearer {other_token}").status_code == 200

    recorded = http.get(f"/v1/voice/sessions/{room}").json()
    assert recorded["started_at"] == 1_800_000_000
    assert recorded["ended_at"] == 1_800_000_999
    assert recorded["participants"] == ["ada", "agent-1"]
    # Late, repeated or out-of-order news changes nothing: a start older than the end, the
    # same start again, an end before the start.
    for late in (
        event("room_started", 1_800_000_500),
        event("room_started", 1_800_000_000),
        event("room_finished", 1_700_000_000),
    ):
        body, signature = _webhook(late)
        assert _send(server, body, signature).status_code == 200
    assert http.get(f"/v1/voice/sessions/{room}").json() == recorded
    # A room started again under its name, later, is a session running again.
    body, signature = _webhook(event("room_started", 1_800_001_000))
    _send(server, body, signature)
    again = http.get(f"/v1/voice/sessions/{room}").json()
    assert (again["started_at"], again["ended_at"]) == (1_800_001_000, None)

    # A room that is not ours is taken and ignored; a signed body that is no event is a 400.
    body, signature = _webhook(event("room_started", 1).__class__(event="room_started"))
    assert _send(server, body, signature).json() == {"received": True, "recorded": False}
    garbage = b"not json at all"
    digest = base64.b64encode(hashlib.sha256(garbage).digest()).decode()
    signed = livekit.AccessToken(LIVEKIT_KEY, LIVEKIT_SECRET).with_sha256(digest).to_jwt()
    _error(_send(server, garbage, signed), 400)
    latin1 = "caf\u00e9".encode("latin-1")  # not UTF-8: a 400, not a failed signature
    digest = base64.b64encode(hashlib.sha256(latin1).digest()).decode()
    signed = livekit.AccessToken(LIVEKIT_KEY, LIVEKIT_SECRET).with_sha256(digest).to_jwt()
    _error(_send(server, latin1, signed), 400)


def test_a_key_lists_its_own_sessions_in_pages(
    server: LiveServer, http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    rooms = [
        http.post("/v1/voice/sessions", json={"model": "echo"}).json()["room_name"]
        for _ in range(3)
    ]
    with _client(server, str(make_key(server)["key"])) as other:
        assert other.post("/v1/voice/sessions", json={"model": "echo"}).is_success
        theirs = other.get("/v1/voice/sessions").json()["data"][0]["room_name"]

    page = http.get("/v1/voice/sessions", params={"limit": 2}).json()
    assert [s["room_name"] for s in page["data"]] == rooms[::-1][:2]
    assert (page["has_more"], page["last_id"]) == (True, rooms[1])
    rest = http.get("/v1/voice/sessions", params={"after": page["last_id"]}).json()
    assert [s["room_name"] for s in rest["data"]] == [rooms[0]]
    oldest = http.get("/v1/voice/sessions", params={"order": "asc"}).json()["data"]
    assert [s["room_name"] for s in oldest] == rooms
    assert theirs not in [s["room_name"] for s in oldest]
    assert http.get("/v1/voice/sessions", params={"after": theirs}).json()["data"] == []
    _error(http.get("/v1/voice/sessions", params={"limit": 101}), 400)


def test_joins_arriving_together_are_all_recorded(
    server: LiveServer, http: httpx.Client, livekit_server: FakeLiveKit
) -> None:
    room = http.post("/v1/voice/sessions", json={"model": "echo"}).json()["room_name"]
    identities = [f"caller-{n}" for n in range(20)]
    signed = []
    for identity in identities:
        joined = livekit.WebhookEvent(
            event="participant_joined", room=livekit.Room(name=room), created_at=1_800_000_000
        )
        joined.participant.identity = identity
        signed.append(_webhook(joined))

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda webhook: _send(server, *webhook), signed))

    assert {answer.status_code for answer in answers} == {200}
    recorded = http.get(f"/v1/voice/sessions/{room}").json()["participants"]
    assert sorted(recorded) == sorted(identities)
