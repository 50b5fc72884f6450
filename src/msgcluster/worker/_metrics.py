"""Metrics hooks of the worker, and the default that logs a summary.

A hook is any object with the methods of :class:`WorkerMetrics` (all
optional to act on: a no-op is fine). They are called on the event loop, so
they must not block. OpenTelemetry spans are separate (``_tracing``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from typing import Protocol

__all__ = ["LoggingMetrics", "Outcome", "WorkerMetrics", "WorkerStats"]

log = logging.getLogger("msgcluster.worker")


class Outcome(enum.StrEnum):
    """What became of one received message."""

    SUCCEEDED = "succeeded"  # handled, completed, acked
    SKIPPED = "skipped"  # already complete (a duplicate): acked without running
    RETRIED = "retried"  # failed or Retry: made visible again after a backoff
    FAILED = "failed"  # failed on its last receive: recorded, left to the DLQ
    DEAD_LETTERED = "dead_lettered"  # Reject or undecodable: moved to the DLQ now
    RELEASED = "released"  # not started (or cancelled) at shutdown: visible again
    CALLBACK = "callback"  # a cluster completion event whose callback ran


class WorkerMetrics(Protocol):
    def message_done(self, outcome: Outcome, seconds: float, lag: float | None) -> None:
        """One message settled: ``seconds`` in the handler, ``lag`` since it
        was sent (when the backend knows)."""

    def in_flight(self, count: int) -> None:
        """Messages received and not yet settled, after each change."""

    def stopped(self, stats: WorkerStats) -> None:
        """The worker stopped."""


class WorkerStats:
    """Counts a worker returns from ``run()``."""

    def __init__(self) -> None:
        self.outcomes: Counter[Outcome] = Counter()
        self.handler_seconds = 0.0
        self.max_lag = 0.0
        self.started = time.monotonic()
        self.stopped_at: float | None = None

    def add(self, outcome: Outcome, seconds: float, lag: float | None) -> None:
        self.outcomes[outcome] += 1
        self.handler_seconds += seconds
        if lag is not None:
            self.max_lag = max(self.max_lag, lag)

    def __getitem__(self, outcome: Outcome | str) -> int:
        return self.outcomes[Outcome(outcome)]

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        wall = (self.stopped_at or time.monotonic()) - self.started
        parts = ", ".join(f"{o.value} {n}" for o, n in sorted(self.outcomes.items()))
        rate = self.total / wall if wall > 0 else 0.0
        return (
            f"{self.total} messages in {wall:.1f} s, {rate:.1f}/s ({parts or 'none'}); "
            f"max lag {self.max_lag:.1f} s"
        )

    def __repr__(self) -> str:
        return f"<WorkerStats {self.summary()}>"


class LoggingMetrics:
    """The default hook: keeps nothing, logs a summary when the worker stops.
    (The worker itself logs a line, with the message id and the reason, for
    every message that failed or went to the DLQ.)"""

    def message_done(self, outcome: Outcome, seconds: float, lag: float | None) -> None:
        pass

    def in_flight(self, count: int) -> None:
        pass

    def stopped(self, stats: WorkerStats) -> None:
        log.info("worker stopped: %s", stats.summary())
