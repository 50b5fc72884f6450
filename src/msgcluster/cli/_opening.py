"""Opening the queue a command names, and what its backend can do.

A backend implementing :class:`~msgcluster.queues._admin.QueueAdmin` gets
every queue command; ``sqs://`` gets what SQS's own API can do, and the
by-id commands are refused before any request.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Final

from ..queues import QueueURI, open_queue
from ..queues._admin import QueueAdmin
from ..queues._sqs import SqsQueue
from ..queues._uri import parse_queue_uri
from ._common import Invocation, Unsupported

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..queues import Queue

__all__ = ["admin", "driver_of", "opened", "queue_options", "sqs_only", "unsupported"]

# Schemes whose backends take `endpoint` and `region` query parameters.
_AWS_SCHEMES: Final = frozenset({"sqs", "http", "https", "dynamodb"})
_SQS_SCHEMES: Final = frozenset({"sqs", "http", "https"})
# https://sqs.<region>.amazonaws.com/<account>/<name> (or the legacy <region>.queue.…)
_SQS_URL_REGION: Final = re.compile(
    r"(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\."
)


def queue_options(uri: QueueURI, inv: Invocation) -> dict[str, Any]:
    """``endpoint``/``region`` from the global options, unless the URI has its own.

    An AWS SQS queue URL names its region: that one is used.
    """
    if uri.scheme not in _AWS_SCHEMES:
        return {}
    settings, options = inv.settings, {}
    endpoint = settings.endpoint_for("dynamodb" if uri.scheme == "dynamodb" else "sqs")
    if endpoint and "endpoint" not in uri.params:
        options["endpoint"] = endpoint
    if "region" not in uri.params:
        in_url = _SQS_URL_REGION.match(uri.location) if uri.scheme in ("http", "https") else None
        region = in_url.group(1) if in_url else settings.region
        if region:  # else the backend's default (profile, then us-east-1)
            options["region"] = region
    return options


@contextlib.asynccontextmanager
async def opened(
    inv: Invocation, *, by_id: str | None = None, read_only: bool = False
) -> AsyncIterator[Queue]:
    """The queue of ``inv.args.queue``, closed on exit.

    ``by_id`` names a command that addresses messages by id: on sqs:// it is
    refused before any AWS request. ``read_only`` commands never create
    state: a dynamodb:// queue that does not exist is an error, not made.
    """
    uri = parse_queue_uri(inv.args.queue)
    if by_id is not None and uri.scheme in _SQS_SCHEMES:
        raise unsupported(uri.uri, by_id)
    options = queue_options(uri, inv)
    if read_only and uri.scheme == "dynamodb":
        options["create"] = False
    async with open_queue(uri.uri, **options) as queue:
        yield queue


def driver_of(queue: Queue) -> Any:
    """The backend's own handle under the portable queue (admin operations)."""
    return getattr(queue, "driver", queue)


def admin(queue: Queue, command: str) -> QueueAdmin:
    """The queue as a QueueAdmin, or Unsupported naming what to use instead."""
    driver = driver_of(queue)
    if isinstance(driver, QueueAdmin):
        return driver
    raise unsupported(queue.uri, command)


def sqs_only(queue: Queue, command: str) -> SqsQueue:
    """An sqs:// queue (for what SQS's own API can do), or Unsupported."""
    driver = driver_of(queue)
    if isinstance(driver, SqsQueue):
        return driver
    raise unsupported(queue.uri, command)


def unsupported(uri: str, command: str) -> Unsupported:
    scheme = parse_queue_uri(uri).scheme
    if scheme in _SQS_SCHEMES:
        why = "SQS cannot address a message by id"
        if command == "ls":
            why = "SQS cannot list messages without receiving them; `receive` shows some"
        return Unsupported(f"`{command}` is not supported by sqs:// ({why}); use dynamodb://")
    return Unsupported(
        f"`{command}` is not supported by {scheme}:// (its backend does not implement QueueAdmin)"
    )
