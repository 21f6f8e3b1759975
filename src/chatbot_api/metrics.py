"""Prometheus metrics, correct with several worker processes.

``chatbot-api serve --workers N`` (N > 1) points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start; prometheus-client then keeps each worker's values in
memory-mapped files there, and ``GET /metrics``, whichever worker answers it, adds them up.
Gauges of live state (streams, queues, slots) count only living workers (``livesum``).
With one process the values simply live in this process's registry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "ACTIVE_STREAMS",
    "ENGINE_RESTARTS",
    "ENGINE_UP",
    "GENERATED_TOKENS",
    "PROMPT_TOKENS",
    "QUEUE_DEPTH",
    "RATE_LIMITED",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SLOTS_IN_USE",
    "STORE_QUEUE_DEPTH",
    "STORE_RECORDS_REJECTED",
    "STORE_WRITE_FAILURES",
    "TIME_TO_FIRST_TOKEN",
    "UPSTREAM_COOLDOWNS",
    "UPSTREAM_FAILURES",
    "UPSTREAM_IN_FLIGHT",
    "UPSTREAM_REQUESTS",
    "UPSTREAM_TIME_TO_FIRST_TOKEN",
    "exposition",
    "multiprocess_directory",
    "remove_multiprocess_directory",
]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "chatbot_requests",
    "HTTP requests answered, by route template, method, model and status.",
    ["route", "method", "model", "status"],
)
REQUEST_SECONDS = Histogram(
    "chatbot_request_duration_seconds",
    "Time from the request's arrival to the end of its answer (a whole stream included).",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "chatbot_time_to_first_token_seconds",
    "Time from a chat completion's arrival to its first generated text.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("chatbot_prompt_tokens", "Prompt tokens processed.", ["model"])
GENERATED_TOKENS = Counter("chatbot_generated_tokens", "Completion tokens generated.", ["model"])
ACTIVE_STREAMS = Gauge(
    "chatbot_active_streams", "Streamed completions in flight.", multiprocess_mode="livesum"
)
# A local model's engine is one process shared by every worker: each worker repeats what the
# engine reports, so the workers' values are the same and their maximum is the engine's.
QUEUE_DEPTH = Gauge(
    "chatbot_model_queue_depth",
    "Requests waiting for a slot of a local model.",
    ["model"],
    multiprocess_mode="livemax",
)
SLOTS_IN_USE = Gauge(
    "chatbot_model_slots_in_use",
    "Sequences a local model is decoding.",
    ["model"],
    multiprocess_mode="livemax",
)
ENGINE_UP = Gauge(
    "chatbot_engine_up",
    "1 while a local model's engine process answers (the lowest over the workers).",
    ["model"],
    multiprocess_mode="livemin",
)
ENGINE_RESTARTS = Gauge(
    "chatbot_engine_restarts",
    "Times a local model's engine process died and was started again since the server started.",
    ["model"],
    multiprocess_mode="livemax",
)
RATE_LIMITED = Counter(
    "chatbot_rate_limited", "Requests refused with 429, by the limit they hit.", ["limit"]
)
STORE_QUEUE_DEPTH = Gauge(
    "chatbot_store_queue_depth",
    "Stored completions waiting for the background writer.",
    multiprocess_mode="livesum",
)
STORE_WRITE_FAILURES = Counter(
    "chatbot_store_write_failures", "Failed write attempts of the store writer (each retried)."
)
STORE_RECORDS_REJECTED = Counter(
    "chatbot_store_records_rejected",
    "Stored completions kept in the recovery file instead of the database, by reason: "
    "`refused` (the database refused the record) or `shutdown` (not written before shutdown).",
    ["reason"],
)


UPSTREAM_REQUESTS = Counter(
    "chatbot_upstream_requests",
    "Requests sent to an upstream deployment of an `openai` model (retries included).",
    ["model", "deployment"],
)
UPSTREAM_FAILURES = Counter(
    "chatbot_upstream_failures",
    "Failed requests to an upstream deployment, by kind: unreachable, timeout, server_error "
    "(5xx), refused (401/403/404), rate_limited (429), bad_answer (no chat completion), "
    "dropped (cut part-way).",
    ["model", "deployment", "kind"],
)
UPSTREAM_IN_FLIGHT = Gauge(
    "chatbot_upstream_in_flight",
    "Requests an upstream deployment is answering now.",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
UPSTREAM_TIME_TO_FIRST_TOKEN = Histogram(
    "chatbot_upstream_time_to_first_token_seconds",
    "Time from sending a request to a deployment to its first chunk (its whole answer when "
    "not streamed).",
    ["model", "deployment"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_COOLDOWNS = Counter(
    "chatbot_upstream_cooldowns",
    "Times a deployment was taken out of service for its cooldown after failing.",
    ["model", "deployment"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    if os.environ.get(_MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def multiprocess_directory() -> Path:
    """Make an empty directory for the workers' metric files and point them at it."""
    directory = Path(tempfile.mkdtemp(prefix="chatbot-api-metrics-"))
    os.environ[_MULTIPROC_ENV] = str(directory)
    return directory


def remove_multiprocess_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
