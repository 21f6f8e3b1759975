"""Keys of a ``provider = "openai"`` entry in the models file: one upstream (``base_url``
and its keys on the model itself) or several (``[[models.<id>.deployments]]`` tables), the
routing strategy, the health policy and the fallbacks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DeploymentConfig", "OpenAIUpstreamConfig", "Routing"]

Routing = Literal["least_busy", "weighted", "latency"]

#: The keys of one deployment, which a one-upstream model sets on itself.
_DEPLOYMENT_KEYS = (
    "base_url",
    "api_key_env",
    "upstream_model",
    "weight",
    "timeout",
    "connect_timeout",
    "max_concurrency",
    "rpm",
    "tpm",
)


class DeploymentConfig(BaseModel):
    """One OpenAI-compatible service that serves the model."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:/-]+$",
        description="Its name in metrics, logs and the x-chatbot-deployment header "
        "(default: <model>/<n>, counting from 1).",
    )
    base_url: str = Field(description="The upstream's API root, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the upstream's API key."
    )
    upstream_model: str | None = Field(
        default=None, description="The model's name upstream; the entry's id when unset."
    )
    weight: float = Field(
        default=1.0, gt=0, le=1e6, description="Its share under weighted routing."
    )
    timeout: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds for a whole answer, or for a stream's first chunk and each next one.",
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="Seconds to connect."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Most requests in flight to it from one server process."
    )
    rpm: int | None = Field(
        default=None, ge=1, description="Most requests a minute it is sent (per server process)."
    )
    tpm: int | None = Field(
        default=None, ge=1, description="Most tokens a minute it is sent (per server process)."
    )


class OpenAIUpstreamConfig(BaseModel):
    """The model's deployments, how requests are spread over them, and where they go when
    none can serve."""

    model_config = ConfigDict(extra="forbid")

    # One upstream, set on the model itself (the keys of a DeploymentConfig)...
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    weight: float | None = Field(default=None, gt=0, le=1e6)
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    connect_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    # ... or several.
    deployments: list[DeploymentConfig] = Field(default_factory=list, max_length=256)

    routing: Routing = Field(
        default="least_busy",
        description="least_busy: fewest in flight; weighted: at random by weight; latency: "
        "lowest recent time to first token.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Further attempts after a failure before the answer's first byte, each on "
        "another deployment while there is one not yet tried.",
    )
    allowed_fails: int = Field(
        default=3, ge=1, description="Failures within failure_window that cool a deployment down."
    )
    failure_window: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="Seconds failures count for."
    )
    cooldown: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="Seconds a failing deployment rests before one trial.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="openai models tried in order when none of this one's deployments serves.",
    )
    context_window_fallbacks: list[str] = Field(
        default_factory=list,
        description="openai models tried in order when the prompt is too long for this one.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> OpenAIUpstreamConfig:
        if self.deployments:
            extra = [key for key in _DEPLOYMENT_KEYS if getattr(self, key) is not None]
            if extra:
                raise ValueError(
                    f"'{extra[0]}' belongs on each of the model's deployments when it lists them"
                )
        elif self.base_url is None:
            raise ValueError("give the model a base_url, or a list of deployments")
        names = [deployment.name for deployment in self.deployments if deployment.name]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(f"two deployments are named {twice!r}")
        return self

    def deployment_list(self) -> list[DeploymentConfig]:
        """The deployments, the one-upstream form being a list of one."""
        if self.deployments:
            return self.deployments
        keys = {key: getattr(self, key) for key in _DEPLOYMENT_KEYS}
        return [DeploymentConfig(**{k: v for k, v in keys.items() if v is not None})]
