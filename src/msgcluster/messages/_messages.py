"""Tracked messages' records: read, update, complete, record failures.

Sending (the record first, then the message) is ``_sending``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._aws_errors import aws_errors
from .._context import iso_now
from .._dynamo import batch_get, key_attrs, update_item
from .._errors import ConditionFailedError, MsgclusterError, RecordNotFoundError
from .._itemcodec import decode_item, from_attr, to_attr
from .._json import encode_meta
from .._schemas import (
    STATUS_CODES,
    ErrorEntry,
    MessageRecord,
    RecordKey,
    Status,
)
from ..read._incoming import SqsMessage, classify, normalize
from ..read._records import ParsedRecord

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._context import Context

__all__ = [
    "read_record",
    "read_records",
    "mark_complete",
    "mark_failed",
    "update_message_record",
]

log = logging.getLogger("msgcluster")

MAX_ERROR_TEXT: Final = 1_024
_UNSET: Final = object()


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


async def read_record(ctx: Context, key: object, *, consistent_read: bool = False) -> MessageRecord:
    """The stored record (a layout-2 task's status is its bucket's: see
    ``clusters._lookups.get_message_record``)."""
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


async def read_records(
    ctx: Context, keys: Iterable[object], *, consistent_read: bool = False
) -> list[MessageRecord | None]:
    """Stored records in the order of ``keys``; ``None`` where no record exists."""
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
        names["#m"] = "meta"
        values[":meta"] = _meta_attr(ctx, meta)
        sets.append("#m = :meta")
    if status is not None:
        new_status = Status.parse(status)
        names |= {"#s": "status", "#c": "statusCode"}
        values |= {":s": {"S": new_status.value}, ":c": {"N": str(STATUS_CODES[new_status])}}
        sets += ["#s = :s", "#c = :c"]
    condition = "attribute_exists(pk)"
    if expected_status is not None:
        names["#s"] = "status"
        values[":expected"] = {"S": Status.parse(expected_status).value}
        condition += " AND #s = :expected"
    try:
        attributes = await update_item(
            ctx,
            record_key_,
            "SET " + ", ".join(sets),
            values,
            condition=condition,
            names=names,
            returns_on_failure="ALL_OLD",
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
    return decode_item(attributes, MessageRecord)


def _meta_attr(ctx: Context, meta: Any) -> dict[str, Any]:
    meta_bytes = encode_meta(meta, ctx.settings.max_meta_bytes)
    return to_attr(msgspec.json.decode(meta_bytes))


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
    return await _append_error(ctx, key, status, entry)


async def _append_error(
    ctx: Context, key: RecordKey, status: Status, entry: ErrorEntry
) -> MessageRecord | None:
    limit = ctx.settings.max_errors
    names = {"#s": "status", "#c": "statusCode", "#e": "error", "#u": "updatedAt"}
    base_values: dict[str, Any] = {
        ":s": {"S": status.value},
        ":c": {"N": str(STATUS_CODES[status])},
        ":now": {"S": entry.at},
        ":exp": {"N": str(ctx.expires_at())},
        ":rc": {"N": str(entry.receive_count)},
        ":done": {"S": Status.COMPLETE.value},
    }
    sets = "#s = :s, #c = :c, #u = :now, expiresAt = :exp, consumptionCount = :rc"
    entry_attr = to_attr(msgspec.to_builtins(entry))
    # A failed attempt ends its claim (if any): the retry may run at once.
    release = " REMOVE claimUntil, claimOwner"
    expression = f"SET {sets}, #e = list_append(if_not_exists(#e, :empty), :new)" + release
    condition = (
        "attribute_exists(pk) AND #s <> :done AND (attribute_not_exists(#e) OR size(#e) < :max)"
    )
    values = base_values | {
        ":empty": {"L": []},
        ":new": {"L": [entry_attr]},
        ":max": {"N": str(limit)},
    }
    for _ in range(8):
        try:
            attributes = await update_item(
                ctx,
                key,
                expression,
                values,
                condition=condition,
                names=names,
                returns_on_failure="ALL_OLD",
            )
        except ConditionFailedError as exc:
            old = exc.item
            if not old or old.get("status", {}).get("S") == Status.COMPLETE.value:
                return None
            # The list is full: keep the newest ``limit - 1`` and append, as a
            # compare-and-set on updatedAt so concurrent failures do not clobber.
            kept = old.get("error", {}).get("L", [])[-(limit - 1) :] if limit > 1 else []
            expression = f"SET {sets}, #e = :list" + release
            condition = "#u = :prev AND #s <> :done"
            values = base_values | {
                ":list": {"L": [*kept, entry_attr]},
                ":prev": old.get("updatedAt", {"S": ""}),
            }
            continue
        return decode_item(attributes, MessageRecord)
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
