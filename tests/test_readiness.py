"""``/ready``: 200 only once the app has started, every model can serve and the database answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message

from chatbot_api.app import create_app
from tests.conftest import ServerFactory, make_settings
from tests.servers import LiveServer


def test_a_started_server_is_ready(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "unavailable": {}}


def test_a_model_that_cannot_serve_makes_the_server_unready(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.upstream]\nprovider = "broken"\nproblem = "unreachable"\n')
    server = start_server(models_file=models)

    response = httpx.get(f"{server.base_url}/ready")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert "model upstream: unreachable" in error["message"]
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # alive, not ready


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start and stop ``app`` as an ASGI server does: lifespan messages through the whole app."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await running  # and the app's lifespan call returns


@pytest.mark.anyio
async def test_the_server_is_not_ready_until_its_lifespan_has_started(tmp_path: Path) -> None:
    app = create_app(
        make_settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    )
    # Requests only: nothing has started the app yet, as before a server's start-up is done.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        starting = await client.get("/ready")
        starting_head = await client.head("/ready")
        async with _lifespan(app):
            started = await client.get("/ready")

    assert starting.status_code == 503
    assert starting.json()["error"]["code"] == "not_ready"
    assert starting.json()["error"]["message"] == "The server is starting."
    assert starting.headers["retry-after"] == "1"
    assert starting_head.status_code == 503
    assert started.status_code == 200
