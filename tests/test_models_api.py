"""GET /v1/models and /v1/models/{id} through the official SDK, checked against the spec."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.servers import LiveServer
from tests.spec import validate


def test_list_models_names_the_built_in_and_configured_models(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}

    assert {"echo", "echo-slow"} <= set(models)
    assert models["echo"].owned_by == "chatbot-api"
    assert models["echo-slow"].owned_by == "tests"


def test_list_models_matches_the_spec(server: LiveServer) -> None:
    body = httpx.get(f"{server.base_url}/v1/models").json()

    validate("ListModelsResponse", body)


def test_retrieve_model(client: openai.OpenAI, server: LiveServer) -> None:
    model = client.models.retrieve("echo-slow")

    assert (model.id, model.object, model.owned_by) == ("echo-slow", "model", "tests")
    validate("Model", httpx.get(f"{server.base_url}/v1/models/echo").json())


def test_unknown_model_is_a_404_in_the_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-nothing")

    error = caught.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert "gpt-nothing" in error.message
    validate("ErrorResponse", error.response.json())
