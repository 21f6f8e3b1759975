"""One deployment's live state in this process: requests in flight, the minute's requests
and tokens, recent failures, cooldown, and how fast it answers.

Health is a circuit breaker. ``allowed_fails`` failures (a connection error, a timeout, a
5xx, a 429, an answer that is no chat completion) within ``failure_window`` seconds cool the
deployment down for ``cooldown`` seconds; then it is *half open*: one request is let through
as a trial, and its success closes the circuit while its failure cools it down again. A 429
that says how long to wait (``Retry-After``) also keeps the deployment out for that long.

Everything here is counted per server process: with ``--workers N`` each worker keeps its
own counts, so ``max_concurrency``, ``rpm`` and ``tpm`` hold per worker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from chatbot_api import metrics
from chatbot_api.providers.gateway.config import DeploymentConfig

__all__ = ["Deployment", "Refusal"]

logger = logging.getLogger(__name__)

#: How much each new time to first token moves the running average (latency routing).
_LATENCY_SMOOTHING = 0.3


class Refusal(Enum):
    """Why a deployment takes no request now, most hopeful first."""

    FULL = "at its max_concurrency"
    RATE_LIMITED = "at its rpm or tpm for this minute"
    BACKING_OFF = "asked us to wait (429 with Retry-After)"
    COOLING_DOWN = "cooling down after failures"
    PROBING = "half open: its trial request is in flight"


@dataclass(eq=False, slots=True)
class Deployment:
    model: str
    name: str
    config: DeploymentConfig
    upstream_model: str
    allowed_fails: int
    failure_window: float
    cooldown: float
    in_flight: int = 0
    #: Smoothed time to first token in seconds; None until it has answered once.
    latency: float | None = None
    _failures: deque[float] = field(default_factory=deque)
    _cooled_until: float = 0.0
    _half_open: bool = False
    _probing: bool = False
    _waiting_until: float = 0.0
    _minute: int = -1
    _requests: int = 0
    _tokens: int = 0

    def refusal(self, now: float) -> Refusal | None:
        """Why it cannot take a request at ``now`` (monotonic seconds), or None."""
        if now < self._cooled_until:
            return Refusal.COOLING_DOWN
        if self._half_open and self._probing:
            return Refusal.PROBING
        if now < self._waiting_until:
            return Refusal.BACKING_OFF
        config = self.config
        if config.max_concurrency is not None and self.in_flight >= config.max_concurrency:
            return Refusal.FULL
        if config.rpm is not None or config.tpm is not None:
            self._roll(time.time())
            if (config.rpm is not None and self._requests >= config.rpm) or (
                config.tpm is not None and self._tokens >= config.tpm
            ):
                return Refusal.RATE_LIMITED
        return None

    def wait(self, now: float, refusal: Refusal) -> float:
        """Seconds until ``refusal`` may be over."""
        if refusal is Refusal.COOLING_DOWN:
            return self._cooled_until - now
        if refusal is Refusal.BACKING_OFF:
            return self._waiting_until - now
        if refusal is Refusal.RATE_LIMITED:
            return 60.0 - time.time() % 60.0
        return 1.0

    def serves(self) -> bool:
        """Whether it could serve some request now or once a running one ends."""
        refusal = self.refusal(time.monotonic())
        return refusal is None or refusal in (Refusal.FULL, Refusal.RATE_LIMITED)

    def begin(self) -> None:
        """A request goes to it."""
        self.in_flight += 1
        if self._half_open:
            self._probing = True
        self._roll(time.time())
        self._requests += 1
        metrics.UPSTREAM_REQUESTS.labels(self.model, self.name).inc()
        metrics.UPSTREAM_IN_FLIGHT.labels(self.model, self.name).inc()

    def end(self) -> None:
        """Its request is over, whatever the outcome (after succeeded or failed)."""
        self.in_flight -= 1
        self._probing = False
        metrics.UPSTREAM_IN_FLIGHT.labels(self.model, self.name).dec()

    def answered(self, seconds: float) -> None:
        """It answered (its first byte of a completion) ``seconds`` after being asked."""
        metrics.UPSTREAM_TIME_TO_FIRST_TOKEN.labels(self.model, self.name).observe(seconds)
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += _LATENCY_SMOOTHING * (seconds - self.latency)
        if self._half_open and time.monotonic() >= self._cooled_until:
            # Its trial: back in service, its record clean. Any other success leaves the
            # failures within the window counted.
            logger.info(
                "deployment %s answered its trial request; back in service",
                self.name,
                extra={"model": self.model, "deployment": self.name},
            )
            self._half_open = False
            self._failures.clear()

    def used(self, tokens: int) -> None:
        self._roll(time.time())
        self._tokens += tokens

    def failed(self, kind: str, *, retry_after: float | None = None) -> None:
        """It failed with ``kind`` (a metrics label); cool it down when that is one too many."""
        metrics.UPSTREAM_FAILURES.labels(self.model, self.name, kind).inc()
        now = time.monotonic()
        if retry_after is not None:
            self._waiting_until = max(self._waiting_until, now + retry_after)
        if now < self._cooled_until:
            return  # a request sent before it cooled down: it rests already
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self.failure_window:
            failures.popleft()
        if self._half_open or len(failures) >= self.allowed_fails:
            self._cooled_until = now + self.cooldown
            self._half_open = True  # its next request, once the cooldown is over, is a trial
            failures.clear()
            metrics.UPSTREAM_COOLDOWNS.labels(self.model, self.name).inc()
            logger.warning(
                "deployment %s cooled down for %gs after failing (%s)",
                self.name,
                self.cooldown,
                kind,
                extra={"model": self.model, "deployment": self.name},
            )

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._requests, self._tokens = minute, 0, 0
