"""One received batch on its way through the worker: the items, and reading
them through the read pipeline (classify, load, decode, completion check)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._errors import MsgclusterError, ObjectNotFoundError, RecordError
from ..read._incoming import MessageKind, classify, from_received
from ..read._records import ParsedRecord, load_incoming
from ._context import MessageContext
from ._flow import Retry
from ._metrics import Outcome

if TYPE_CHECKING:
    from .._context import Context
    from ..queues import Queue, ReceivedMessage
    from ._app import App

__all__ = ["ACKED", "Item", "poison", "read_batch"]

log = logging.getLogger("msgcluster.worker")


class Item:
    """One received message on its way through the batch."""

    __slots__ = (
        "body",
        "copy_of",
        "ctx",
        "error",
        "message",
        "outcome",
        "record",
        "retry_delay",
        "running",
        "seconds",
        "settled",
        "visibility",
    )

    def __init__(self, message: ReceivedMessage, queue: Queue) -> None:
        self.message = message
        self.ctx = MessageContext(message, queue)
        self.record: ParsedRecord[Any] | None = None
        self.body: Any = None
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.retry_delay: float | None = None
        self.running = False
        self.settled = False
        self.seconds = 0.0
        # Its visibility timeout while it runs (the handler's policy, or the Worker's).
        self.visibility = 0.0
        # The same message delivered twice in one batch runs once: the copy
        # follows its first delivery's outcome.
        self.copy_of: Item | None = None


ACKED = frozenset({Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.CALLBACK})


async def read_batch(app: App, items: list[Item]) -> None:
    """Read each item; the same message twice in the batch is read once (the copy
    is skipped); tracked ones already complete are skipped (one request)."""
    client = app.client
    ctx = client.ctx if client is not None and client.is_open else None
    tracked: list[Item] = []
    first: dict[str, Item] = {}
    for item in items:
        original = first.setdefault(item.message.id, item)
        if original is not item:
            item.copy_of, item.outcome = original, Outcome.SKIPPED
            continue
        try:
            await _read(app, ctx, item)
        except Exception as exc:
            # Unexpected (a reader bug, RecursionError on a deeply nested body):
            # this message is poison; the rest of the batch goes on.
            log.debug("reading message %s raised", item.message.id, exc_info=exc)
            poison(item, RecordError(
                f"message {item.message.id} could not be read: {type(exc).__name__}: "
                f"{str(exc)[:200]}",
                message_id=item.message.id,
            ))  # fmt: skip
            continue
        if item.outcome is None and item.record is not None:
            tracked.append(item)
    if tracked and client is not None:
        done = await client.is_complete_batch([i.record for i in tracked])
        for item, complete in zip(tracked, done, strict=True):
            if complete:
                item.outcome = Outcome.SKIPPED
        if ctx is not None and ctx.settings.claim:
            await _claim(ctx, [i for i in tracked if i.outcome is None])


async def _claim(ctx: Context, items: list[Item]) -> None:
    """Claims on: run only what this worker holds; a message another consumer
    runs now is retried after that consumer's lease (not counted as failed)."""
    from ..runtime._claims import claim_batch

    claims = await claim_batch(ctx, [item.record for item in items])
    for item, claim in zip(items, claims, strict=True):
        if claim.held:
            log.info(
                "message %s is being processed by another consumer: retried in %.0f s",
                item.message.id, claim.retry_after,
            )  # fmt: skip
            item.outcome = Outcome.RETRIED
            item.error = Retry(claim.retry_after, "claimed by another consumer")
            item.retry_delay = claim.retry_after


async def _read(app: App, ctx: Context | None, item: Item) -> None:
    incoming = classify(from_received(item.message))
    if incoming.error is not None:
        poison(item, incoming.error)
        return
    if ctx is None and (incoming.tracked or incoming.pointer is not None):
        item.error = MsgclusterError(
            "a tracked or offloaded message (sent with Client.send_message, a cluster "
            "task, or an S3 payload) needs App(client=...) to be read; it is retried"
        )
        item.outcome = Outcome.RETRIED
        return
    try:
        if not incoming.tracked and incoming.pointer is None:
            # A plain body: decoded as the handlers declare, nothing to load.
            item.body = app.decode(incoming.message.data, item.message.id)
            return
        record = await load_incoming(ctx, incoming, app.body_type)
    except (RecordError, ObjectNotFoundError) as exc:
        if incoming.tracked:  # recorded as failed when dead-lettered
            item.record = ParsedRecord(ctx, incoming)
        poison(item, exc)
        return
    except MsgclusterError as exc:  # S3 unavailable: try again later
        item.error, item.outcome = exc, Outcome.RETRIED
        return
    if record.tracked:
        item.record = item.ctx.record = record
    item.body = record.body if record.kind is not MessageKind.EVENT else None


def poison(item: Item, error: MsgclusterError) -> None:
    """Dead-letter it alone, with the error that says why (recorded as the
    failure of a tracked message)."""
    log.error("message %s is poison: %s", item.message.id, error)
    item.error = error
    item.outcome = Outcome.DEAD_LETTERED
