"""Reconcile a dead-letter queue with the records of the messages in it.

A consumer records a failure on a message's last receive, but one that dies
during that receive never does: SQS then moves the message to the DLQ on
its next receive, and nobody is told. For a simple message the record stays
IN PROGRESS; for a cluster task the task is never counted, so its cluster
never completes and its callback never runs. Reading the DLQ closes that
gap: every tracked message in it whose record is not final is recorded as
failed (a task counts as failed, which may complete its cluster and send the
completion event). Messages stay in the DLQ, for inspection and redrive.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import EnvelopeError, RecordError, ValidationError
from ._schemas import Status, check_int
from .clusters._lookups import get_message_records
from .read import _records
from .runtime import _consume

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._context import Context
    from .read._records import ParsedRecord

__all__ = ["DeadLetterReport", "reconcile_dead_letters"]

log = logging.getLogger("msgcluster.dead_letters")

REASON = "moved to the dead-letter queue by the queue's redrive policy"


class DeadLetterReport(msgspec.Struct, kw_only=True):
    """What one pass over a dead-letter queue found."""

    seen: int = 0  # distinct messages received from the DLQ
    recorded: int = 0  # tracked, not final: now recorded as failed
    already_final: int = 0  # tracked, already complete or recorded as failed
    untracked: int = 0  # not a msgcluster message (or its record is unreadable)


async def reconcile_dead_letters(
    ctx: Context, dlq_url: str, *, visibility_timeout: int = 300, limit: int | None = None
) -> DeadLetterReport:
    """One pass over ``dlq_url``: record every tracked message in it as failed.

    Messages received are kept invisible for ``visibility_timeout`` seconds so
    the pass sees each once, then they reappear; nothing is deleted. Safe to
    run again (and concurrently): recording a failure is conditional, and a
    task is counted once.
    """
    check_int("visibility_timeout", visibility_timeout, 0, 43_200, why="seconds, SQS's range")
    if limit is not None:
        check_int("limit", limit, 1, why="messages to read; None for the whole queue")
    report = DeadLetterReport()
    seen: set[str] = set()
    queue = await ctx.queue(dlq_url)
    if _has_dead_letter_queue(queue):
        # A source queue: its live messages would all be recorded as failed.
        raise ValidationError(
            "reconcile_dead_letters reads a dead-letter queue, and this queue has one of its "
            "own (a redrive policy): pass its DLQ's URL (for queues from provision(), the "
            "name ending in -dlq)"
        )
    while limit is None or report.seen < limit:
        batch = await queue.receive(
            queue.capabilities.max_receive_batch, 0, visibility_timeout=visibility_timeout
        )
        fresh = [m for m in batch if m.id not in seen]
        if not fresh:
            break
        seen.update(m.id for m in fresh)
        report.seen += len(fresh)
        await _reconcile_batch(ctx, fresh, report)
    return report


def _has_dead_letter_queue(queue: Any) -> bool:
    driver = queue.driver
    if hasattr(driver, "dead_letter_queue"):  # dynamodb:// names it
        return driver.dead_letter_queue is not None
    return queue.max_receives is not None  # SQS: a redrive policy; memory: a DLQ


async def _reconcile_batch(ctx: Context, messages: Sequence[Any], report: DeadLetterReport) -> None:
    parsed: list[ParsedRecord[Any]] = []
    for message in messages:
        try:
            record = _records.read(ctx, message, msgspec.Raw)
        except (EnvelopeError, RecordError):
            record = None
        if record is None or not record.tracked:
            report.untracked += 1
        else:
            parsed.append(record)
    if not parsed:
        return
    done = await _consume.is_complete_batch(ctx, parsed)
    pending = [record for record, complete in zip(parsed, done, strict=True) if not complete]
    report.already_final += len(parsed) - len(pending)
    # A simple message recorded ERROR at its last receive is final already:
    # recording it again would only repeat its error entry.
    records = await get_message_records(ctx, [r.key for r in pending])
    for record, stored in zip(pending, records, strict=True):
        if stored is not None and stored.status is Status.ERROR:
            report.already_final += 1
            continue
        await _consume.mark_failed(ctx, record, REASON, final=True)
        report.recorded += 1
        log.info("dead letter %s: recorded as failed", record.id)
