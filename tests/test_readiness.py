"""``/ready``: 200 only when every model can serve and the database answers."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.servers import LiveServer


def test_a_started_server_is_ready(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


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
