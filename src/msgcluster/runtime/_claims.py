"""Claims: one handler run per tracked message, even for concurrent duplicates.

Opt-in (``Client(claim=True)``). After the completion check, the records
about to run are claimed together, in one ``TransactWriteItems`` per 100: each
``PRE FLIGHT | IN PROGRESS | ERROR -> IN PROGRESS`` with a lease (``claimUntil``)
and a per-call owner, on condition that no live lease is held. A record
whose condition fails is held by another consumer (or was completed
meanwhile): its handler does not run here, and the message is retried
after the holder's lease (the completion check then skips it, if the
holder finished). A failed attempt releases the claim (``mark_failed``
removes the lease), so its retry can run at once; a crashed holder's claim
expires with its lease.

Costs one transaction per receive batch (2 WCU per record, transactions
bill double), and nothing when claims are off.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

from .._aws_errors import aws_errors
from .._batching import Backoff, chunked
from .._dynamo import key_attrs, n_attr
from .._errors import (
    AwsConnectionError,
    MsgclusterError,
    ThrottledError,
    TransactionCanceledError,
)
from .._schemas import STATUS_CODES, RecordKey, Status
from ._consume import MessageKind, _classify

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._context import Context

__all__ = ["Claim", "claim_batch"]

log = logging.getLogger("msgcluster")

_TXN_MAX: Final = 100


class Claim:
    """Per record: ``held`` is False when this call holds it (run the handler),
    True when another consumer does (retry after ``retry_after`` seconds)."""

    __slots__ = ("held", "retry_after")

    def __init__(self, held: bool = False, retry_after: float = 0.0) -> None:
        self.held = held
        self.retry_after = retry_after


async def claim_batch(ctx: Context, records: Sequence[object]) -> list[Claim]:
    """Claim the tracked records of a batch (plain messages and completion
    events need none: they get a free Claim)."""
    out = [Claim() for _ in records]
    by_key: dict[RecordKey, list[int]] = {}
    for index, (key, _, kind) in enumerate(_classify(records)):
        if key is not None and kind is not MessageKind.EVENT:
            by_key.setdefault(key, []).append(index)
    if not by_key:
        return out
    now = int(ctx.clock())
    lease = ctx.settings.claim_seconds
    owner = uuid.uuid4().hex  # per call: two calls of one Client do not share a claim
    for chunk in chunked(list(by_key), _TXN_MAX):
        held = await _claim(ctx, list(chunk), owner, now, now + lease)
        for key, until in held.items():
            for index in by_key[key]:
                out[index] = Claim(held=True, retry_after=max(1.0, until - now + 1.0))
    # The same message twice in one batch: the first delivery runs it.
    for indexes in by_key.values():
        for index in indexes[1:]:
            if not out[index].held:
                out[index] = Claim(held=True, retry_after=float(lease))
    return out


async def _claim(
    ctx: Context, keys: list[RecordKey], owner: str, now: int, until: int
) -> dict[RecordKey, int]:
    """Claim ``keys``; those held elsewhere (or gone), with their lease's end."""
    held: dict[RecordKey, int] = {}
    todo = list(keys)
    backoff = Backoff(attempts=8, cap=2.0)
    attempt = 0
    while todo:
        items = [{"Update": _claim_update(ctx, key, owner, now, until)} for key in todo]
        try:
            with aws_errors(resource=ctx.table):
                await ctx.ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except TransactionCanceledError as exc:
            failed = [
                (key, reason)
                for key, reason in zip(todo, exc.reasons, strict=False)
                if (reason.get("Code") or "None") == "ConditionalCheckFailed"
            ]
            if failed:
                mine = set()
                for key, reason in failed:
                    item = reason.get("Item") or {}
                    if item.get("claimOwner", {}).get("S") == owner:
                        # Our own claim: an earlier attempt applied, its answer was lost.
                        mine.add(key)
                        continue
                    lease = item.get("claimUntil", {}).get("N")
                    held[key] = int(lease) if lease is not None else until
                todo = [key for key in todo if key not in held and key not in mine]
                continue  # the rest, without those
            if attempt >= backoff.attempts - 1:
                raise MsgclusterError(f"could not claim {len(todo)} record(s): {exc}") from exc
        except (ThrottledError, AwsConnectionError) as exc:
            # Not applied, or (no answer) maybe applied: the retry's condition
            # then fails on our own claim, which the owner check above accepts.
            if attempt >= backoff.attempts - 1:
                raise MsgclusterError(f"could not claim {len(todo)} record(s): {exc}") from exc
        else:
            return held
        await backoff.sleep(attempt)
        attempt += 1
    return held


def _claim_update(ctx: Context, key: RecordKey, owner: str, now: int, until: int) -> dict[str, Any]:
    return {
        "TableName": ctx.table,
        "Key": key_attrs(key.pk, key.rk),
        "UpdateExpression": (
            "SET #s = :ip, statusCode = :c, claimUntil = :until, claimOwner = :me"
        ),
        "ConditionExpression": (
            # Not COMPLETE: an ERROR record's message is back from its DLQ (a
            # redrive) and runs again, as it does without claims.
            "attribute_exists(pk) AND #s <> :done "
            "AND (attribute_not_exists(claimUntil) OR claimUntil <= :now)"
        ),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":ip": {"S": Status.IN_PROGRESS.value},
            ":done": {"S": Status.COMPLETE.value},
            ":c": n_attr(STATUS_CODES[Status.IN_PROGRESS]),
            ":until": n_attr(until),
            ":now": n_attr(now),
            ":me": {"S": owner},
        },
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
