"""FastAPI's /docs and /openapi.json describe every route, with OpenAI's error envelope."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.servers import LiveServer


def test_openapi_describes_every_route(server: LiveServer) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").json()

    paths = document["paths"]
    assert set(paths) >= {"/health", "/v1/models", "/v1/models/{model_id}", "/v1/chat/completions"}
    for path in paths.values():
        for operation in path.values():
            assert operation["summary"]
            assert operation["description"]
    chat = paths["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "400" in chat["responses"]
    assert "422" not in chat["responses"]
    schemas = document["components"]["schemas"]
    for path in paths.values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:  # every JSON body comes with an example to try
                reference = content["application/json"]["schema"]["$ref"]
                assert schemas[reference.rsplit("/", 1)[-1]]["examples"], reference


def test_docs_page_is_served(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/docs")

    assert response.status_code == 200
    assert "swagger" in response.text.lower()


def test_every_status_a_route_can_answer_is_declared(server: LiveServer) -> None:
    """Statuses that come from layers around the routes: any route (431, the last-resort
    500), the key check (401, 429), reading a body (400, 408, 413), the database or the
    models' capacity (503), the admin check (403); each error with the envelope's schema."""
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = operation["responses"]
            expected = {"431", "500"}
            if path.startswith(("/v1/", "/admin/")):
                expected |= {"401", "429"}
            if "requestBody" in operation:
                expected |= {"400", "408", "413"}
            if path.startswith("/v1/chat/completions"):  # chat (no capacity) and the store
                expected |= {"503"}
            if path.startswith("/v1/chat/completions/"):
                expected |= {"404"}
            if path.startswith("/admin/"):
                expected |= {"403"}
            assert expected <= set(declared), (method, path, expected - set(declared))
            for status, response in declared.items():
                if method == "head":
                    assert "content" not in response, (path, status)  # headers only
                elif status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == envelope


def test_head_works_wherever_get_does_on_the_probes(server: LiveServer) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").json()

    for path in ("/health", "/ready"):
        got = httpx.get(f"{server.base_url}{path}")
        head = httpx.head(f"{server.base_url}{path}")

        assert (head.status_code, head.content) == (200, b"")
        assert _comparable(head.headers) == _comparable(got.headers)
        assert int(head.headers["content-length"]) == len(got.content)
        assert document["paths"][path]["head"]["responses"]["200"]["description"]


def _comparable(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "x-request-id")}


def test_head_on_an_unready_server_is_503(start_server: ServerFactory, tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.upstream]\nprovider = "broken"\nproblem = "unreachable"\n')
    server = start_server(models_file=models)

    head = httpx.head(f"{server.base_url}/ready")

    assert (head.status_code, head.content) == (503, b"")
    assert head.headers["content-type"] == "application/json"
