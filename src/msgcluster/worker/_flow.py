"""Handler flow control: raise one of these from a handler to decide what
happens to its message, instead of the default (success -> ack, any other
exception -> retry with backoff)."""

from __future__ import annotations

__all__ = ["Ack", "HandlerFlow", "Reject", "Retry"]


class HandlerFlow(Exception):
    """Base of the flow-control exceptions; never logged as a failure."""


class Retry(HandlerFlow):
    """Try the message again after ``delay`` seconds (None: the worker's
    backoff for its receive count). Counts as a receive toward the DLQ."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay


class Reject(HandlerFlow):
    """The message can never succeed: record it as failed and move it to the
    dead-letter queue now, without using up its remaining receives."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class Ack(HandlerFlow):
    """Acknowledge the message as done (same as returning normally): for
    leaving a handler early from deep inside it."""
