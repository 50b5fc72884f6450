"""OpenTelemetry spans for handled messages, when ``opentelemetry-api`` is installed.

One CONSUMER span per handler run, named and attributed after the messaging
semantic conventions (``process <queue>``). Without the package (the
``otel`` extra), or with it but no tracer provider set, no span is made.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..queues import Queue, ReceivedMessage

try:
    from opentelemetry import trace
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

from .._trace_context import link_from

__all__ = ["destination_of", "end_span", "process_span"]

_SYSTEMS = {"sqs": "aws_sqs", "http": "aws_sqs", "https": "aws_sqs"}
_tracer: Any = trace.get_tracer("msgcluster.worker") if trace is not None else None


def destination_of(queue: Queue) -> tuple[str, str]:
    """(messaging.system, messaging.destination.name) of a queue."""
    parts = urlsplit(queue.uri)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1] if parts.path.strip("/") else parts.netloc
    return _SYSTEMS.get(parts.scheme, f"msgcluster.{parts.scheme}"), name or queue.uri


def process_span(
    destination: tuple[str, str], message: ReceivedMessage, kind: str
) -> AbstractContextManager[Any]:
    """The span around one handler run (``kind``: the body's type name)."""
    if _tracer is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No SDK configured (yet): skip even OpenTelemetry's no-op spans,
        # which would cost a sixth of the worker's per-message CPU.
        return nullcontext()
    system, name = destination
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        f"process {name}",
        kind=trace.SpanKind.CONSUMER,
        # Linked to the sender's span (W3C trace context in its attributes).
        links=link_from(message.attributes),
        attributes={
            "messaging.system": system,
            "messaging.destination.name": name,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": message.id,
            "msgcluster.receive_count": message.receive_count,
            "msgcluster.body_type": kind,
        },
        # Outcomes are set by end_span: Retry/Ack are flow control, not errors.
        record_exception=False,
        set_status_on_exception=False,
    )


def end_span(span: Any, outcome: str, error: BaseException | None, failed: bool) -> None:
    """Record the outcome (and a failure's exception) on the span."""
    if span is None or trace is None:
        return
    span.set_attribute("msgcluster.outcome", outcome)
    if failed:
        if error is not None:
            span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, repr(error) if error else outcome))
