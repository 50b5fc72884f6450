"""Sending tracked messages: the record first, then the message.

Order of effects for a send: (the message to S3 when it is too large) ->
record PutItem / BatchWriteItem (PRE FLIGHT) -> the send, through the queue
layer. A consumer can therefore always find the record; a send that was
definitely refused removes its record again, while a send whose fate is
unknown (no response) keeps it, because the message may arrive.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from .._aws_errors import aws_errors, is_sender_fault
from .._batching import first_error, gather_limited, iter_chunks
from .._context import iso_now
from .._dynamo import batch_write, key_attrs
from .._errors import AwsConnectionError, AwsError, MsgclusterError, ValidationError
from .._results import BatchSendResult, EntryFailure
from ..queues import _extended
from ..queues._contract import OutgoingMessage
from ..queues._portable import is_retryable
from ._outgoing import Prepared, needs_offload, prepare

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._context import Context, QueueInfo
    from .._schemas import RecordKey

__all__ = ["maybe_sent", "send_entries", "send_message", "send_message_batch"]

log = logging.getLogger("msgcluster")

# Bodies are streamed in windows: records for a window are written, then its
# messages sent, so memory stays bounded for any number of bodies.
WINDOW: Final = 500


async def send_message(
    ctx: Context,
    queue_url: str,
    body: Any,
    meta: Any = None,
    *,
    delay_seconds: int = 0,
    attributes: dict[str, Any] | None = None,
    group_id: str | None = None,
    dedup_id: str | None = None,
) -> RecordKey:
    info = await ctx.queue_info(queue_url)
    outgoing = OutgoingMessage(
        body=body,
        meta=meta,
        delay_seconds=delay_seconds,
        attributes=attributes or {},
        group_id=group_id,
        dedup_id=dedup_id,
    )
    entry = prepare(ctx, info, 0, outgoing, iso_now())
    if needs_offload(ctx, entry):
        entry.offload_to(await _extended.store_payload(ctx, entry.key, entry.envelope))
    with aws_errors(resource=ctx.table):
        await ctx.ddb.put_item(
            TableName=ctx.table,
            Item=entry.item,
            ConditionExpression="attribute_not_exists(pk)",
        )
    ((_, outcome),) = await send_entries(ctx, queue_url, [entry])
    if isinstance(outcome, str):
        return entry.key
    exc = outcome.error
    if not maybe_sent(exc):
        await _discard(ctx, [entry])
    elif isinstance(exc, AwsError):
        # The message may have been queued: the record is kept, and the
        # caller gets its key to follow up.
        exc.record_key = entry.key
        exc.args = (f"{exc} (the message may have been sent; record {entry.key.pk} kept)",)
    raise exc


async def send_message_batch(
    ctx: Context,
    queue_url: str,
    bodies: Iterable[Any] | AsyncIterable[Any],
    meta: Any = None,
    *,
    delay_seconds: int = 0,
    attributes: dict[str, Any] | None = None,
    group_id: str | None = None,
    raise_on_failure: bool = True,
) -> BatchSendResult:
    if isinstance(bodies, str | bytes | Mapping) or not isinstance(
        bodies, Iterable | AsyncIterable
    ):
        raise ValidationError(
            "bodies must be an iterable or async iterable of bodies, not a single str/bytes "
            f"or other value (wrap one body in a list); got {type(bodies).__name__}"
        )
    info = await ctx.queue_info(queue_url)
    keys: list[RecordKey | None] = []
    message_ids: list[str | None] = []
    failures: list[EntryFailure] = []
    defaults = {
        "meta": meta,
        "delay_seconds": delay_seconds,
        "attributes": attributes,
        "group_id": group_id,
    }
    sent: dict[int, tuple[RecordKey, str]] = {}
    total = 0
    # Two-stage pipeline: while one window's messages are being sent, the next
    # window's records are written. At most two windows are held in memory.
    try:
        async with anyio.create_task_group() as tg:
            sending = anyio.Event()
            sending.set()
            async for window in iter_chunks(bodies, WINDOW):
                outgoing = [_outgoing(item, defaults) for item in window]
                ready = await _write_window(ctx, info, total, outgoing, failures)
                total += len(window)
                await sending.wait()
                sending = anyio.Event()
                tg.start_soon(_send_window, ctx, info, ready, sent, failures, sending)
    except BaseExceptionGroup as group:  # the caller's own error (its iterable's) as is
        raise first_error(group) from None
    for index in range(total):
        key_id = sent.get(index)
        keys.append(key_id[0] if key_id else None)
        message_ids.append(key_id[1] if key_id else None)
    result = BatchSendResult(keys, message_ids, failures)
    if raise_on_failure:
        result.raise_for_failures()
    return result


def _outgoing(item: Any, defaults: dict[str, Any]) -> OutgoingMessage:
    if isinstance(item, OutgoingMessage):
        return msgspec.structs.replace(
            item,
            meta=item.meta if item.meta is not None else defaults["meta"],
            attributes=item.attributes or defaults["attributes"] or {},
            group_id=item.group_id if item.group_id is not None else defaults["group_id"],
            delay_seconds=item.delay_seconds or defaults["delay_seconds"],
        )
    return OutgoingMessage(body=item, **(defaults | {"attributes": defaults["attributes"] or {}}))


async def _write_window(
    ctx: Context,
    info: QueueInfo,
    start: int,
    outgoing: list[OutgoingMessage],
    failures: list[EntryFailure],
) -> list[Prepared]:
    """Validate, offload large bodies, write the PRE FLIGHT records: what may be sent."""
    now = iso_now()
    ready: list[Prepared] = []
    for offset, message in enumerate(outgoing):
        try:
            ready.append(prepare(ctx, info, start + offset, message, now))
        except ValidationError as exc:
            failures.append(_failure(start + offset, None, exc))
    ready = await _offload_large(ctx, ready, failures)
    return await _write_records(ctx, ready, failures)


async def _send_window(
    ctx: Context,
    info: QueueInfo,
    ready: list[Prepared],
    sent: dict[int, tuple[RecordKey, str]],
    failures: list[EntryFailure],
    done: anyio.Event,
) -> None:
    """Send through the queue layer (split by the queue's limits, concurrent,
    failed entries retried); records of what was definitely not sent removed."""
    try:
        not_sent: list[Prepared] = []
        for entry, outcome in await send_entries(ctx, info.url, ready):
            if isinstance(outcome, str):
                sent[entry.index] = (entry.key, outcome)
                continue
            error, maybe = outcome.error, maybe_sent(outcome.error)
            # Retryable (throttled, a server fault) but still failing: not the sender's.
            blame = not maybe and not is_retryable(error)
            failures.append(
                _failure(entry.index, entry.key, error, maybe_sent=maybe, sender_fault=blame)
            )
            if not maybe:
                not_sent.append(entry)
        await _discard(ctx, not_sent)
    finally:
        done.set()


async def _offload_large(
    ctx: Context, entries: list[Prepared], failures: list[EntryFailure]
) -> list[Prepared]:
    large = [entry for entry in entries if needs_offload(ctx, entry)]
    if not large:
        return entries

    async def offload(entry: Prepared) -> Prepared | None:
        try:
            entry.offload_to(await _extended.store_payload(ctx, entry.key, entry.envelope))
        except MsgclusterError as exc:
            failures.append(_failure(entry.index, None, exc))
            return None
        return entry

    await gather_limited(ctx.limiter, [partial(offload, entry) for entry in large])
    failed = {f.index for f in failures}
    return [entry for entry in entries if entry.index not in failed]


async def _write_records(
    ctx: Context, entries: list[Prepared], failures: list[EntryFailure]
) -> list[Prepared]:
    """BatchWriteItem the PRE FLIGHT records; entries whose record failed are not sent."""
    requests = [{"PutRequest": {"Item": entry.item}} for entry in entries]
    write_failures = await batch_write(ctx, requests)
    if not write_failures:
        return entries
    by_pk = {entry.key.pk: entry for entry in entries}
    failed: set[int] = set()
    for failure in write_failures:
        entry = by_pk[failure.request["PutRequest"]["Item"]["pk"]["S"]]
        failed.add(entry.index)
        # Whether or not an ambiguous record write applied, no message was sent.
        failures.append(_failure(entry.index, None, failure.error))
    return [entry for entry in entries if entry.index not in failed]


class _Refused:
    """A send that did not go through: the error the queue reported for it."""

    __slots__ = ("error",)

    def __init__(self, error: MsgclusterError) -> None:
        self.error = error


def maybe_sent(error: BaseException) -> bool:
    """A request that got no answer may have been applied; a refusal was not."""
    return isinstance(error, AwsConnectionError)


async def send_entries(
    ctx: Context, target: str, entries: Sequence[Prepared]
) -> list[tuple[Prepared, str | _Refused]]:
    """Send prepared entries to the queue at ``target`` through the queue layer:
    per entry, its message id or what refused it."""
    if not entries:
        return []
    queue = await ctx.queue(target)
    results = await queue.send([entry.outgoing() for entry in entries])
    out: list[tuple[Prepared, str | _Refused]] = []
    for entry, result in zip(entries, results, strict=True):
        if result.id is not None and result.error is None:
            out.append((entry, result.id))
        else:
            error = result.error or MsgclusterError("the queue reported neither an id nor an error")
            out.append((entry, _Refused(error)))
    return out


def _failure(
    index: int,
    key: RecordKey | None,
    exc: MsgclusterError,
    *,
    maybe_sent: bool = False,
    sender_fault: bool | None = None,
) -> EntryFailure:
    code = getattr(exc, "code", "") or type(exc).__name__
    if sender_fault is None:
        sender_fault = is_sender_fault(exc)
    return EntryFailure(
        index=index,
        key=key if maybe_sent else None,
        code=code,
        message=str(exc),
        sender_fault=sender_fault,
        maybe_sent=maybe_sent,
    )


async def _discard(ctx: Context, entries: Sequence[Prepared]) -> None:
    """Remove the records (and S3 bodies) of messages that were definitely not sent.

    Best effort: what cannot be removed now expires by TTL / lifecycle.
    """
    if not entries:
        return
    requests = [{"DeleteRequest": {"Key": key_attrs(e.key.pk, e.key.rk)}} for e in entries]
    try:
        left = await batch_write(ctx, requests)
    except MsgclusterError as exc:  # pragma: no cover - logged, TTL cleans up
        log.warning("could not remove %d unsent record(s): %s", len(entries), exc)
        return
    if left:
        log.warning("could not remove %d unsent record(s); TTL will expire them", len(left))
    for entry in entries:
        if entry.pointer is not None:
            try:
                with aws_errors():
                    await ctx.s3.delete_object(Bucket=entry.pointer.bucket, Key=entry.pointer.key)
            except MsgclusterError:  # pragma: no cover - lifecycle expires it
                pass
