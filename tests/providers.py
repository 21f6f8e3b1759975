"""Fake model backends for the failure paths: stand-ins for the world outside our code.

They implement the public :class:`~chatbot_api.providers.base.Provider` protocol, the seam an
embedding application uses to add its own backend, and are handed to ``create_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict

from chatbot_api.config import Settings
from chatbot_api.errors import ServerOverloadedError
from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    Provider,
    TextDelta,
    Usage,
)
from chatbot_api.providers.registry import PROVIDER_KINDS, ModelSpec, ProviderKind

__all__ = ["TEST_PROVIDER_KINDS", "BrokenBackendConfig", "ReaderConfig"]


class BrokenBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Pieces of text produced before the backend fails.
    fail_after: int = 0
    #: ``crash`` raises an unexpected error; ``overloaded`` an API error with a status.
    failure: str = "crash"
    #: What it tells ``/ready`` is wrong, as an upstream that is unreachable would.
    problem: str | None = None


class BrokenBackend:
    """A backend that dies part-way, as a crashed model server or a dropped connection would."""

    supported_parameters: frozenset[str] = frozenset()

    def __init__(self, config: BrokenBackendConfig) -> None:
        self._config = config

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        for number in range(self._config.fail_after):
            yield TextDelta(f"piece{number} ")
        if self._config.failure == "overloaded":
            raise ServerOverloadedError("The backend is overloaded.")
        raise RuntimeError("backend crashed: secret internal detail")

    def problem(self) -> str | None:
        return self._config.problem

    async def aclose(self) -> None:
        return None


def _build_broken(spec: ModelSpec, settings: Settings) -> Provider:
    assert isinstance(spec.config, BrokenBackendConfig)
    return BrokenBackend(spec.config)


class ReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The optional parameters and content-part types it honours (``image_url``, ``tools``...).
    supports: list[str] = []


class ReaderBackend:
    """A backend of an embedding application (a vision model, a tool-calling service) that
    answers with what it was handed: the text of the last user message, and how many images
    came with it."""

    def __init__(self, config: ReaderConfig) -> None:
        self.supported_parameters = frozenset(config.supports)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        text = next(m.text for m in reversed(request.messages) if m.role == "user")
        content = request.request.messages[-1].content
        parts = content if isinstance(content, list) else []
        images = sum(1 for part in parts if part.type == "image_url")
        yield TextDelta(f"read {text!r} and {images} image(s)")
        yield Finish("stop")
        yield Usage(prompt_tokens=1, completion_tokens=1)

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


def _build_reader(spec: ModelSpec, settings: Settings) -> Provider:
    assert isinstance(spec.config, ReaderConfig)
    return ReaderBackend(spec.config)


TEST_PROVIDER_KINDS = {
    **PROVIDER_KINDS,
    "broken": ProviderKind(config=BrokenBackendConfig, build=_build_broken),
    "reader": ProviderKind(config=ReaderConfig, build=_build_reader),
}
