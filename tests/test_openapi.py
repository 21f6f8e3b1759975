"""FastAPI's /docs and /openapi.json describe every route, with OpenAI's error envelope."""

from __future__ import annotations

import httpx

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
            body = operation.get("requestBody")
            if body is not None:  # every request body comes with an example to try
                reference = body["content"]["application/json"]["schema"]["$ref"]
                assert schemas[reference.rsplit("/", 1)[-1]]["examples"], reference


def test_docs_page_is_served(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/docs")

    assert response.status_code == 200
    assert "swagger" in response.text.lower()
