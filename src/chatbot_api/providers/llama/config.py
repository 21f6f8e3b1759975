"""Keys a ``llama_cpp`` entry of the models file may set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationInfo, field_validator

__all__ = ["LlamaCppConfig"]


def _usable_cpus() -> int:
    """CPUs this process may run on: ``os.cpu_count()`` counts the host's, and a container
    limited to two of sixty-four would run sixty-four threads on two cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not on Linux (macOS has no affinity call)
        return os.cpu_count() or 1


#: Chat templates run to a few kilobytes; this is far beyond any.
_MAX_TEMPLATE_BYTES = 1024 * 1024


class LlamaCppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: FilePath | None = Field(
        default=None, description="The GGUF file; left out, the bundled Gemma 3 270M."
    )
    context_size: int = Field(
        default=2048,
        ge=64,
        le=2**24,
        description="Tokens of context each sequence may use; the KV cache holds `parallel`.",
    )
    parallel: int = Field(default=4, ge=1, le=64, description="Sequences decoded together.")
    queue_size: int = Field(
        default=32, ge=0, description="Requests that may wait for a free sequence; then 503."
    )
    threads: int = Field(
        default_factory=_usable_cpus,
        ge=1,
        description=(
            "llama.cpp threads; by default one per CPU this process may run on (a container's "
            "cpuset or `taskset` counts, not the host's cores)."
        ),
    )
    batch_size: int = Field(default=512, ge=32, description="Most tokens in one decode step.")
    cache_prompt: bool = Field(
        default=True,
        description=(
            "Keep a finished sequence's KV cache in its slot, so that a later prompt starting "
            "the same way (the next turn of a conversation) prefills only what is new."
        ),
    )
    prompt_format: Literal["auto", "template", "transcript"] = Field(
        default="auto",
        description=(
            "`template`: the chat template embedded in the GGUF; `transcript`: a plain "
            "'User:/Assistant:' transcript with stop sequences; `auto`: the template when the "
            "file has one."
        ),
    )
    chat_template_file: FilePath | None = Field(
        default=None,
        description=(
            "A Jinja chat template (UTF-8) to use instead of the one embedded in the GGUF, as "
            "llama.cpp's `--chat-template-file`."
        ),
    )
    max_tokens: int = Field(
        default=256, ge=1, description="Generation length when a request does not set one."
    )
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.1, ge=0)
    stop: list[str] = Field(default_factory=list, description="Stop strings for every request.")
    grammar_compile_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description=(
            "Longest a JSON schema (`response_format`) may take to compile before the request "
            "is refused with 400; compiled schemas are cached."
        ),
    )

    grammar_cache_size: int = Field(
        default=64, ge=1, description="Compiled schemas kept for reuse (the least recent go)."
    )
    grammar_compile_queue: int = Field(
        default=16,
        ge=1,
        description="Schemas that may be compiling at once; beyond, 503 `server_overloaded`.",
    )

    @field_validator("chat_template_file")
    @classmethod
    def _a_template(cls, path: Path | None) -> Path | None:
        if path is not None:
            if path.stat().st_size > _MAX_TEMPLATE_BYTES:
                raise ValueError(f"{path} is larger than {_MAX_TEMPLATE_BYTES} bytes")
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text") from None
        return path

    @field_validator("path")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        readable = path is None or os.access(path, os.R_OK)
        if not readable:  # pragma: no cover - the tests run as root, who reads every file
            raise ValueError(f"{path} is not readable")
        return path

    @field_validator("batch_size")
    @classmethod
    def _batch_holds_every_sequence(cls, batch_size: int, info: ValidationInfo) -> int:
        # Each step puts the next token of every decoding sequence into one batch.
        parallel = info.data.get("parallel")
        if parallel is not None and batch_size < parallel:
            raise ValueError(
                f"must be at least parallel ({parallel}): each decode step holds one token of "
                "every sequence"
            )
        return batch_size
