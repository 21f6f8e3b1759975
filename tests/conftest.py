"""Shared fixtures: a real server on loopback and the official openai SDK pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from chatbot_api.app import create_app
from chatbot_api.config import Settings
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from tests.providers import TEST_PROVIDER_KINDS
from tests.servers import AnyServer, LiveServer

MODELS_TOML = """
[models."echo-slow"]
provider = "echo"
owned_by = "tests"
token_delay = 0.05

[models."echo-silent"]
provider = "echo"
owned_by = "tests"
token_delay = 5

[models."broken-at-start"]
provider = "broken"

[models."broken-mid-stream"]
provider = "broken"
fail_after = 2

[models."overloaded-mid-stream"]
provider = "broken"
fail_after = 1
failure = "overloaded"
"""


def make_settings(**overrides: Any) -> Settings:
    """Settings from the arguments alone: no ``.env`` file, defaults for the rest.

    The bundled model is left out unless a test asks for it: most tests need only ``echo``.
    """
    overrides.setdefault("bundled_model", False)
    overrides.setdefault("bundled_chat_model", False)
    # The shared servers take far more requests a minute from 127.0.0.1 than any one client
    # of a deployment would; the rate-limit tests set the limits they exercise.
    overrides.setdefault("rate_limit_rpm", 0)
    overrides.setdefault("rate_limit_tpm", 0)
    return Settings(_env_file=None, **overrides)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the session, so the bundled model is prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "models.toml"
    path.write_text(MODELS_TOML)
    return path


ServerFactory = Callable[..., LiveServer]
SdkFactory = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[SdkFactory]:
    """``sdk(server, key, **options)``: an openai client for ``server``, closed after the test."""
    clients: list[openai.OpenAI] = []

    def make(server: AnyServer, key: str, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def start_server(models_file: Path, data_dir: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start a server of its own for a test that needs particular settings."""
    servers: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        overrides.setdefault("models_file", models_file)
        overrides.setdefault("data_dir", data_dir)
        overrides.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path / 'own.db'}")
        app = create_app(make_settings(**overrides), provider_kinds=TEST_PROVIDER_KINDS)
        server = LiveServer(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


#: A ``logit_bias`` under which the bundled Gemma never ends an answer before its limit: end
#: of text (1), end of turn (106), "</s>" (212, which llama.cpp also ends on) and every token
#: that holds a newline (107 to 137 are runs of one to 31 newlines, 248 another "\n"), where a
#: transcript's stop strings begin. A sampled answer under it runs to ``max_tokens``.
GEMMA_NEVER_STOP = {str(token): -100 for token in (1, 106, 212, *range(107, 138), 248)}


#: Local models of the shared llama server, besides the bundled one: the same GGUF declared
#: by path, as a user declares any GGUF file. ``tiny-slot``: one sequence and no queue (to see
#: the overload answer), a small context (to exceed it), sampling without top-k or min-p, room
#: for two compiled grammars, and no prefix reuse (seeded repeats are exact only without it).
#: ``hasty-grammar``: a millisecond to compile a schema, one schema compiling at a time.
LLAMA_MODELS_TOML = """
[models."tiny-slot"]
provider = "llama_cpp"
path = "{gguf}"
parallel = 1
queue_size = 0
context_size = 128
prompt_format = "transcript"
top_k = 0
min_p = 0
grammar_cache_size = 2
cache_prompt = false

[models."hasty-grammar"]
provider = "llama_cpp"
path = "{gguf}"
parallel = 1
context_size = 256
grammar_compile_seconds = 0.001
grammar_compile_queue = 1
"""


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    """One server with the bundled model (and the models above) for every test that reads."""
    config = tmp_path_factory.mktemp("llama") / "models.toml"
    gguf = prepare_bundled_model(data_dir, show_progress=False)
    config.write_text(LLAMA_MODELS_TOML.format(gguf=gguf))
    settings = make_settings(bundled_model=True, data_dir=data_dir, models_file=config)
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="session")
def server(models_file: Path) -> Iterator[LiveServer]:
    app = create_app(make_settings(models_file=models_file), provider_kinds=TEST_PROVIDER_KINDS)
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def async_client(server: LiveServer) -> Any:
    sdk = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
