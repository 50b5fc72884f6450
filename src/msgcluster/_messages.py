"""Tracked messages: send with a record first, read, complete, record failures.

Order of effects for a send: (offloaded body to S3) -> record PutItem (PRE
FLIGHT) -> SendMessage. A consumer can therefore always find the record; a
send that AWS definitely refused removes its record again, while a send whose
fate is unknown (no response) keeps it, because the message may arrive.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from . import _payloads
from ._batching import gather_limited, iter_chunks
from ._context import iso_now
from ._dynamo import batch_get, batch_write, key_attrs
from ._errors import (
    AwsConnectionError,
    AwsError,
    ConditionFailedError,
    MsgclusterError,
    RecordNotFoundError,
    ValidationError,
    aws_errors,
    is_sender_fault,
)
from ._incoming import SqsMessage, classify, normalize
from ._itemcodec import decode_item, from_attr, to_attr
from ._outgoing import Prepared, needs_offload, prepare
from ._records import ParsedRecord
from ._results import BatchSendResult, EntryFailure
from ._schemas import (
    STATUS_CODES,
    ErrorEntry,
    MessageRecord,
    RecordKey,
    Status,
)
from .queues._contract import OutgoingMessage
from .queues._portable import is_retryable

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable, Sequence

    from ._context import Context, QueueInfo

__all__ = [
    "get_message_record",
    "get_message_records",
    "mark_complete",
    "mark_failed",
    "send_message",
    "send_message_batch",
    "update_message_record",
]

log = logging.getLogger("msgcluster")

# Bodies are streamed in windows: records for a window are written, then its
# messages sent, so memory stays bounded for any number of bodies.
WINDOW: Final = 500
MAX_ERROR_TEXT: Final = 1_024
_UNSET: Final = object()


# --------------------------------------------------------------------------- send


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
        entry.offload_to(await _payloads.store_payload(ctx, entry.key, entry.envelope))
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
    info = await ctx.queue_info(queue_url)
    if isinstance(bodies, str | bytes):
        raise ValidationError("bodies must be an iterable of bodies, not a single str/bytes")
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
            entry.offload_to(await _payloads.store_payload(ctx, entry.key, entry.envelope))
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


# --------------------------------------------------------------------------- records


def record_key(record: object) -> tuple[RecordKey | None, SqsMessage | None]:
    """The record key of an SQS record / ParsedRecord / RecordKey; None for a plain
    message (msgcluster did not send it: there is no record). A mis-keyed
    envelope raises :class:`EnvelopeError`."""
    if isinstance(record, RecordKey):
        return record, None
    if isinstance(record, ParsedRecord):
        return record.key, record.message
    incoming = classify(normalize(record))
    if incoming.error is not None:
        raise incoming.error
    return incoming.key, incoming.message


async def get_message_record(
    ctx: Context, key: object, *, consistent_read: bool = False
) -> MessageRecord:
    record_key_ = RecordKey.of(key)
    with aws_errors(resource=ctx.table):
        response = await ctx.ddb.get_item(
            TableName=ctx.table,
            Key=key_attrs(record_key_.pk, record_key_.rk),
            ConsistentRead=consistent_read,
        )
    item = response.get("Item")
    if item is None:
        raise RecordNotFoundError(
            f"no record for {record_key_.pk} (completed and removed, expired, or never sent)"
        )
    return decode_item(item, MessageRecord)  # type: ignore[arg-type]


async def get_message_records(
    ctx: Context, keys: Iterable[object], *, consistent_read: bool = False
) -> list[MessageRecord | None]:
    """Records in the order of ``keys``; ``None`` where no record exists."""
    wanted = [RecordKey.of(key) for key in keys]
    found = await batch_get(ctx, [(k.pk, k.rk) for k in wanted], consistent_read=consistent_read)
    out: list[MessageRecord | None] = []
    for key in wanted:
        item = found.get((key.pk, key.rk))
        out.append(decode_item(item, MessageRecord) if item is not None else None)
    return out


async def update_message_record(
    ctx: Context,
    key: object,
    *,
    meta: Any = _UNSET,
    status: Status | str | None = None,
    expected_status: Status | str | None = None,
) -> MessageRecord:
    """Set ``meta`` and/or ``status`` on an existing record (never creates one).

    ``expected_status`` makes the write a compare-and-set: it applies only if
    the record is in that status, else :class:`ConditionFailedError`.
    """
    record_key_ = RecordKey.of(key)
    names = {"#u": "updatedAt"}
    values: dict[str, Any] = {":now": {"S": iso_now()}}
    sets = ["#u = :now"]
    if meta is not _UNSET:
        meta_bytes = msgspec.json.encode(meta)
        if len(meta_bytes) > ctx.settings.max_meta_bytes:
            from ._errors import MetaTooLargeError

            raise MetaTooLargeError(
                f"meta is {len(meta_bytes):,} bytes; the limit is {ctx.settings.max_meta_bytes:,}"
            )
        names["#m"] = "meta"
        values[":meta"] = to_attr(msgspec.json.decode(meta_bytes))
        sets.append("#m = :meta")
    if status is not None:
        new_status = _status(status)
        names |= {"#s": "status", "#c": "statusCode"}
        values |= {":s": {"S": new_status.value}, ":c": {"N": str(STATUS_CODES[new_status])}}
        sets += ["#s = :s", "#c = :c"]
    condition = "attribute_exists(pk)"
    if expected_status is not None:
        names["#s"] = "status"
        values[":expected"] = {"S": _status(expected_status).value}
        condition += " AND #s = :expected"
    try:
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.update_item(
                TableName=ctx.table,
                Key=key_attrs(record_key_.pk, record_key_.rk),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
    except ConditionFailedError as exc:
        if not exc.item:
            raise RecordNotFoundError(f"no record for {record_key_.pk}") from exc
        current = from_attr({"M": exc.item}).get("status")
        raise ConditionFailedError(
            f"record {record_key_.pk} is {current!r}, not {expected_status!r}",
            item=exc.item,
            code=exc.code,
            operation=exc.operation,
        ) from exc
    return decode_item(response["Attributes"], MessageRecord)  # type: ignore[arg-type]


def _status(value: Status | str) -> Status:
    try:
        return Status(value)
    except ValueError as exc:
        raise ValidationError(
            f"unknown status {value!r}; expected one of {[s.value for s in Status]}"
        ) from exc


# --------------------------------------------------------------------------- consume


async def mark_complete(ctx: Context, key: RecordKey) -> bool:
    """Complete a simple message: its record is deleted. True if this call did it."""
    with aws_errors(resource=ctx.table):
        response = await ctx.ddb.delete_item(
            TableName=ctx.table, Key=key_attrs(key.pk, key.rk), ReturnValues="ALL_OLD"
        )
    return bool(response.get("Attributes"))


async def mark_failed(
    ctx: Context, record: object, error: BaseException | str, *, final: bool | None = None
) -> MessageRecord | None:
    """Record one failed attempt on the message's record.

    Appends to the bounded ``error`` list, sets ``consumptionCount`` from
    ``ApproximateReceiveCount``, refreshes the TTL, and sets status ERROR once
    the queue's ``maxReceiveCount`` is reached (the message goes to the DLQ
    next). Returns the updated record, or None when the record is gone
    (completed meanwhile): a failure never resurrects a completed record.
    """
    key, message = record_key(record)
    if key is None:  # a plain message has no record to note the failure on
        return None
    receive_count = message.receive_count if message is not None else 0
    if final is None:
        max_receives = await _max_receives(ctx, record)
        final = max_receives is not None and receive_count >= max_receives
    status = Status.ERROR if final else Status.IN_PROGRESS
    now = iso_now()
    entry = ErrorEntry(
        at=now,
        message=(str(error) or type(error).__name__)[:MAX_ERROR_TEXT],
        type="" if isinstance(error, str) else type(error).__name__,
        receive_count=receive_count,
    )
    limit = ctx.settings.max_errors
    names = {"#s": "status", "#c": "statusCode", "#e": "error", "#u": "updatedAt"}
    base_values: dict[str, Any] = {
        ":s": {"S": status.value},
        ":c": {"N": str(STATUS_CODES[status])},
        ":now": {"S": now},
        ":exp": {"N": str(ctx.expires_at())},
        ":rc": {"N": str(receive_count)},
        ":done": {"S": Status.COMPLETE.value},
    }
    sets = "#s = :s, #c = :c, #u = :now, expiresAt = :exp, consumptionCount = :rc"
    entry_attr = to_attr(msgspec.to_builtins(entry))
    request: dict[str, Any] = {
        "TableName": ctx.table,
        "Key": key_attrs(key.pk, key.rk),
        "UpdateExpression": f"SET {sets}, #e = list_append(if_not_exists(#e, :empty), :new)",
        "ConditionExpression": (
            "attribute_exists(pk) AND #s <> :done AND (attribute_not_exists(#e) OR size(#e) < :max)"
        ),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": base_values
        | {":empty": {"L": []}, ":new": {"L": [entry_attr]}, ":max": {"N": str(limit)}},
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    for _ in range(8):
        try:
            with aws_errors(resource=ctx.table):
                response = await ctx.ddb.update_item(**request)
        except ConditionFailedError as exc:
            old = exc.item
            if not old or old.get("status", {}).get("S") == Status.COMPLETE.value:
                return None
            # The list is full: keep the newest ``limit - 1`` and append, as a
            # compare-and-set on updatedAt so concurrent failures do not clobber.
            kept = old.get("error", {}).get("L", [])[-(limit - 1) :] if limit > 1 else []
            request["UpdateExpression"] = f"SET {sets}, #e = :list"
            request["ConditionExpression"] = "#u = :prev AND #s <> :done"
            request["ExpressionAttributeValues"] = base_values | {
                ":list": {"L": [*kept, entry_attr]},
                ":prev": old.get("updatedAt", {"S": ""}),
            }
            continue
        return decode_item(response["Attributes"], MessageRecord)  # type: ignore[arg-type]
    raise MsgclusterError(f"could not record a failure on {key.pk}: too much contention")


async def _max_receives(ctx: Context, record: object) -> int | None:
    url = ""
    if isinstance(record, ParsedRecord):
        url = record.url
    elif not isinstance(record, RecordKey):
        try:
            envelope = classify(normalize(record)).envelope
        except MsgclusterError:
            envelope = None
        url = envelope.url if envelope is not None else ""
    if not url:
        return None
    try:
        return (await ctx.queue_info(url)).max_receive_count
    except MsgclusterError:
        # Failure recording must not fail because the queue cannot be described.
        return None
