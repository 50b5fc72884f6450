"""W3C trace context across the queue: injected by the sender, linked by the consumer.

When ``opentelemetry-api`` is installed and a span is active where a message
is sent (``send_message``, ``send_message_batch``, cluster creation, an App's
``send``), the message carries a ``traceparent`` (and ``tracestate``) string
attribute. The worker's CONSUMER span for it is linked to that context (a
link, not a parent: a message may be handled long after, and a batch mixes
traces), as the messaging semantic conventions recommend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

__all__ = ["TRACE_ATTRIBUTES", "current_carrier", "link_from"]

TRACE_ATTRIBUTES: Final = ("traceparent", "tracestate")


def current_carrier() -> dict[str, str]:
    """The active span's context as attributes; empty when there is none."""
    if propagate is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_ATTRIBUTES and v}


def link_from(attributes: Mapping[str, str]) -> list[Any]:
    """A link to the sender's span, from a received message's attributes."""
    if propagate is None or "traceparent" not in attributes:
        return []
    context = propagate.extract({k: attributes[k] for k in TRACE_ATTRIBUTES if k in attributes})
    span_context = trace.get_current_span(context).get_span_context()
    return [trace.Link(span_context)] if span_context.is_valid else []
