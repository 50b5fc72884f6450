"""Completion callbacks: run exactly once per cluster, across all processes.

A cluster that flips to COMPLETE / ERROR gets ``callbackStatus = PENDING``.
Running the callback is claimed with one conditional write (``PENDING`` ->
``RUNNING`` with a lease), recorded ``DONE`` on success, and put back to
``PENDING`` with the error (``ERROR`` after ``max_attempts``) when it raises.
A claim whose lease ran out (its process died) can be taken over, so the
callback is never lost; the durable completion event makes sure someone
tries again.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._aws_errors import aws_errors
from .._clusterkeys import cluster_key
from .._context import iso_now
from .._dynamo import get_consistent, key_attrs, n_attr
from .._errors import AwsConnectionError, CallbackError, ConditionFailedError
from .._itemcodec import decode_item
from .._schemas import CallbackStatus, MessageClusterRecord, StatusCode

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["ClusterCallback", "ClusterView", "globals_getter", "run_callback"]

log = logging.getLogger("msgcluster")

DEFAULT_LEASE_SECONDS: Final = 300
DEFAULT_MAX_ATTEMPTS: Final = 5
MAX_ERROR_TEXT: Final = 1_024

GlobalsGetter = Callable[..., Awaitable[Any]]
ClusterCallback = Callable[[MessageClusterRecord, GlobalsGetter], Awaitable[Any] | Any]


class ClusterView(NamedTuple):
    """A cluster record and a getter for its globals (fetched only when awaited)."""

    record: MessageClusterRecord
    get_globals: GlobalsGetter


def globals_getter(ctx: Context, record: MessageClusterRecord) -> GlobalsGetter:
    async def get_globals(type: Any = Any) -> Any:
        from ._globals import get_globals as fetch

        pointer = record.globals_pointer
        if pointer is None:
            return None
        return await fetch(ctx, pointer, type)

    return get_globals


async def run_callback(
    ctx: Context,
    cluster_id: str,
    callback: ClusterCallback,
    *,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> bool:
    """Claim and run the callback of a final cluster; True if it ran here and succeeded.

    False when the cluster is not final, the callback is done, or another
    process holds the claim. A callback that raises is recorded and re-raised
    as :class:`CallbackError`.
    """
    owner = uuid.uuid4().hex
    attributes = await _claim(ctx, cluster_id, owner, lease_seconds)
    if attributes is None:
        return False
    record = decode_item(attributes, MessageClusterRecord)
    attempts = record.callback_attempts
    try:
        result = callback(record, globals_getter(ctx, record))
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        status = CallbackStatus.ERROR if attempts >= max_attempts else CallbackStatus.PENDING
        text = (f"{type(exc).__name__}: {exc}")[:MAX_ERROR_TEXT]
        await _release(ctx, cluster_id, owner, status, text)
        log.warning(
            "completion callback of cluster %s failed (attempt %d/%d): %s",
            cluster_id,
            attempts,
            max_attempts,
            text,
        )
        raise CallbackError(
            f"completion callback of cluster {cluster_id} failed (attempt {attempts} of "
            f"{max_attempts}; status now {status.value}): {text}",
            cluster_id=cluster_id,
            attempts=attempts,
            final=status is CallbackStatus.ERROR,
        ) from exc
    await _release(ctx, cluster_id, owner, CallbackStatus.DONE, None)
    return True


async def _claim(
    ctx: Context, cluster_id: str, owner: str, lease_seconds: int
) -> dict[str, Any] | None:
    """The cluster item if ``owner`` now holds the claim, else None."""
    key = cluster_key(cluster_id)
    now = int(ctx.clock())
    try:
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.update_item(
                TableName=ctx.table,
                Key=key_attrs(key.pk, key.rk),
                UpdateExpression=(
                    "SET callbackStatus = :running, callbackLease = :until, "
                    "callbackOwner = :me, updatedAt = :iso ADD callbackAttempts :one"
                ),
                ConditionExpression=(
                    "statusCode IN (:done, :error) AND (callbackStatus = :pending OR "
                    "(callbackStatus = :running AND callbackLease < :now))"
                ),
                ExpressionAttributeValues={
                    ":running": {"S": CallbackStatus.RUNNING.value},
                    ":pending": {"S": CallbackStatus.PENDING.value},
                    ":until": n_attr(now + lease_seconds),
                    ":now": n_attr(now),
                    ":me": {"S": owner},
                    ":iso": {"S": iso_now()},
                    ":one": n_attr(1),
                    ":done": n_attr(StatusCode.COMPLETE),
                    ":error": n_attr(StatusCode.ERROR),
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        attributes: dict[str, Any] | None = response["Attributes"]
    except ConditionFailedError as exc:
        # Our claim applied but its response was lost, and botocore's retry
        # of it failed the condition: the item then names us as the owner.
        if not _claimed_by(exc.item, owner):
            return None
        attributes = exc.item
    except AwsConnectionError:
        # No answer: the claim may have applied; only a read can tell.
        attributes = await get_consistent(ctx, key.pk, key.rk)
        if not _claimed_by(attributes, owner):
            raise
    return attributes


def _claimed_by(item: dict[str, Any] | None, owner: str) -> bool:
    return item is not None and item.get("callbackOwner", {}).get("S") == owner


async def _release(
    ctx: Context, cluster_id: str, owner: str, status: CallbackStatus, error: str | None
) -> None:
    key = cluster_key(cluster_id)
    values: dict[str, Any] = {
        ":s": {"S": status.value},
        ":me": {"S": owner},
        ":iso": {"S": iso_now()},
    }
    sets = ["callbackStatus = :s", "updatedAt = :iso"]
    if status is CallbackStatus.DONE:
        sets.append("callbackAt = :iso")
    if error is not None:
        values[":err"] = {"S": error}
        sets.append("callbackError = :err")
    try:
        with aws_errors(resource=ctx.table):
            await ctx.ddb.update_item(
                TableName=ctx.table,
                Key=key_attrs(key.pk, key.rk),
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE callbackLease",
                ConditionExpression="callbackOwner = :me",
                ExpressionAttributeValues=values,
            )
    except ConditionFailedError:
        # Our lease ran out and another process took the claim over.
        log.warning(
            "completion callback of cluster %s outlived its lease; another process took it over",
            cluster_id,
        )
