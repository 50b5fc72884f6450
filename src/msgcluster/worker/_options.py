"""The Worker's arguments, checked when it is built: the app, the queue (a URI
parsed and validated for its backend without opening anything, or an open
queue), the queue options, and each setting's type and range (the ranges SQS
allows where SQS has one). Nothing is converted loosely: ``"5"`` is not 5."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import msgspec

from .._errors import ConfigurationError, ValidationError
from ..queues import Driver, Queue
from ..queues._registry import check_queue_uri
from ..queues._uri import shown
from ._app import App
from ._checks import flag, integer, seconds

__all__ = ["WorkerOptions", "check_options", "check_worker_args", "queue_shown"]

_INTEGERS: dict[str, tuple[int, int]] = {
    "concurrency": (1, 10_000),
    "receivers": (1, 100),
    "prefetch": (0, 10_000),
}
_SECONDS: dict[str, tuple[float, float]] = {
    "wait_seconds": (0, 20),
    "visibility_timeout": (1, 43_200),
    "max_extension": (0, 43_200),
    "backoff_base": (0, 43_200),
    "backoff_max": (0, 43_200),
    "grace_seconds": (0, 86_400),
    "progress_seconds": (0, 86_400),
}
_OPTIONAL = frozenset({"receivers", "prefetch"})
_METRICS_HOOKS = ("message_done", "in_flight", "stopped")


class WorkerOptions(msgspec.Struct, kw_only=True, frozen=True):
    concurrency: int
    receivers: int | None
    prefetch: int | None
    wait_seconds: float
    visibility_timeout: float
    max_extension: float
    backoff_base: float
    backoff_max: float
    grace_seconds: float
    progress_seconds: float


def check_options(**values: object) -> WorkerOptions:
    """The numeric options as a WorkerOptions, or ConfigurationError naming the bad one."""
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if value is None and name in _OPTIONAL:
            checked[name] = None
        elif name in _INTEGERS:
            checked[name] = integer(f"Worker option {name}", value, *_INTEGERS[name])
        else:
            checked[name] = seconds(f"Worker option {name}", value, *_SECONDS[name])
    return WorkerOptions(**checked)


def check_worker_args(
    app: object,
    queue: object,
    *,
    burst: object,
    handle_signals: object,
    metrics: object,
    queue_options: object,
) -> dict[str, Any]:
    """Check what is not a number; returns the queue options as a dict."""
    if not isinstance(app, App):
        raise ValidationError(
            f"Worker(app, queue): app must be a msgcluster.App with handlers registered, "
            f"got {type(app).__name__}"
        )
    flag("Worker option burst", burst)
    flag("Worker option handle_signals", handle_signals)
    if metrics is not None and not all(
        callable(getattr(metrics, hook, None)) for hook in _METRICS_HOOKS
    ):
        raise ConfigurationError(
            "Worker option metrics must be None or an object with the methods "
            f"{', '.join(_METRICS_HOOKS)} (see WorkerMetrics), got {type(metrics).__name__}"
        )
    options = _queue_options(queue_options)
    app.check_ready()
    if isinstance(queue, str):
        # Malformed, credentials, unknown scheme or parameter: fails here, not in run().
        check_queue_uri(queue, **options)
    elif not isinstance(queue, Queue | Driver):
        raise ValidationError(
            "Worker(app, queue): queue must be a queue URI such as sqs://jobs or "
            f"memory://jobs, or an open msgcluster.queues.Queue, got {type(queue).__name__}"
        )
    elif options:
        raise ConfigurationError(
            "Worker option queue_options applies to a queue URI; the queue given is already "
            "open: pass its URI instead, or open it with these options"
        )
    return options


def _queue_options(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            "Worker option queue_options must be a dict of open_queue options by name, "
            f"such as {{'region': 'eu-west-1'}}, got {type(value).__name__}"
        )
    return dict(value)


def queue_shown(queue: object) -> str:
    """A queue (URI or open queue) as a repr or log line may show it: never
    userinfo (percent-encoded or not) nor parameter values."""
    uri = queue if isinstance(queue, str) else getattr(queue, "uri", None)
    if not isinstance(uri, str):
        return f"<{type(queue).__name__}>"
    text = shown(uri)
    scheme, _, rest = text.partition("://")
    location, mark, query = rest.partition("?")
    if "@" in unquote(location):
        location = "***@" + unquote(location).rpartition("@")[2]
    return f"{scheme}://{location}{mark}{query}"
