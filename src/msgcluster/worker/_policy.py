"""Per-handler policies: how often a handler's messages may be tried, how
long it may run, how it backs off, and how long its messages stay invisible.

``@app.handler(T, retries=3, backoff=2.0, timeout=30, visibility=120)``;
every field left out takes the Worker's value (``backoff_base``,
``visibility_timeout``; no timeout; retries up to the queue's
``maxReceiveCount``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any, Final

import anyio
import msgspec

from ._checks import integer, seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["DEFAULT_POLICY", "HandlerPolicy", "HandlerTimeoutError", "make_policy", "time_limit"]

# SQS's bounds for a visibility timeout; 0 would make a running message visible.
_Visibility = Annotated[float, msgspec.Meta(gt=0, le=43_200)]


class HandlerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """``retries``: attempts after the first (``retries=0``: one try, then the
    DLQ); ``backoff``: seconds before the first retry, doubling after each
    (capped by the Worker's ``backoff_max``), or ``f(attempt) -> seconds``;
    ``timeout``: seconds a run may take before it is cancelled and counted
    as a failure; ``visibility``: the visibility timeout of this handler's
    messages while they run (extended by the heartbeat)."""

    retries: Annotated[int, msgspec.Meta(ge=0)] | None = None
    backoff: Annotated[float, msgspec.Meta(gt=0)] | Callable[[int], float] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    visibility: _Visibility | None = None

    def retry_delay(self, attempt: int, cap: float) -> float | None:
        """Seconds before the next try after ``attempt`` tries; None: the Worker's."""
        if self.backoff is None:
            return None
        if callable(self.backoff):
            return max(0.0, min(float(self.backoff(attempt)), cap))
        return float(min(cap, self.backoff * 2 ** max(0, attempt - 1)))

    def exhausted(self, receive_count: int) -> bool:
        """No try left after this one."""
        return self.retries is not None and receive_count > self.retries


DEFAULT_POLICY: Final = HandlerPolicy()


def make_policy(
    *, retries: Any = None, backoff: Any = None, timeout: Any = None, visibility: Any = None
) -> HandlerPolicy:
    """A checked policy, or ConfigurationError naming the bad option: real ints,
    finite seconds in range (or a callable ``backoff``)."""
    what = "handler option"
    return HandlerPolicy(
        retries=None if retries is None else integer(f"{what} retries", retries, 0, 1000),
        backoff=backoff
        if backoff is None or callable(backoff)
        else seconds(f"{what} backoff", backoff, 0, 43_200, above=True),
        timeout=None
        if timeout is None
        else seconds(f"{what} timeout", timeout, 0, 86_400, above=True),
        visibility=None
        if visibility is None
        else seconds(f"{what} visibility", visibility, 0, 43_200, above=True),
    )


class HandlerTimeoutError(TimeoutError):
    """A handler ran past its policy's ``timeout`` and was cancelled."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Cancel the block after ``seconds`` (a policy's timeout), as a failure."""
    if seconds is None:
        yield
        return
    with anyio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise HandlerTimeoutError(f"the handler ran past its timeout of {seconds:g} s")
