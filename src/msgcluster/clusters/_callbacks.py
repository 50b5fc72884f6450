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
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._clusterkeys import cluster_key
from .._context import iso_now
from .._dynamo import get_consistent, n_attr, update_item
from .._errors import (
    AwsConnectionError,
    CallbackError,
    ConditionFailedError,
    ConfigurationError,
    ValidationError,
)
from .._itemcodec import decode_item
from .._schemas import CallbackStatus, MessageClusterRecord, StatusCode

if TYPE_CHECKING:
    from .._context import Context

__all__ = [
    "CallbackRegistry",
    "ClusterCallback",
    "ClusterView",
    "check_callback",
    "check_callback_name",
    "globals_getter",
    "run_callback",
]

log = logging.getLogger("msgcluster")

DEFAULT_LEASE_SECONDS: Final = 300
DEFAULT_MAX_ATTEMPTS: Final = 5
MAX_ERROR_TEXT: Final = 1_024

GlobalsGetter = Callable[..., Awaitable[Any]]
ClusterCallback = Callable[[MessageClusterRecord, GlobalsGetter], Awaitable[Any] | Any]


_CALLBACK_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_callback_name(name: object) -> str:
    if not isinstance(name, str) or not _CALLBACK_NAME.match(name):
        raise ValidationError(
            f"a callback name is 1-128 characters of [A-Za-z0-9_.:-], got {name!r:.200}"
        )
    return name


def check_callback(callback: object) -> None:
    """A completion callback: callable as ``callback(record, get_globals)``."""
    if not callable(callback):
        raise ValidationError(
            "a cluster completion callback is a function of (record, get_globals), async or "
            f"not; got {type(callback).__name__}"
        )
    try:
        inspect.signature(callback).bind(None, None)
    except TypeError:
        raise ValidationError(
            "a cluster completion callback takes two arguments, (record, get_globals)"
        ) from None
    except ValueError:  # a builtin without a signature: trust it
        pass


class CallbackRegistry:
    """Completion callbacks by name, and a default for clusters that name none.

    Called as a callback, it runs the one the cluster names. A process runs
    (claims) only the callbacks it has: a cluster naming another is left
    for a process that registered it.
    """

    def __init__(self) -> None:
        self.callbacks: dict[str | None, ClusterCallback] = {}

    def register(self, callback: ClusterCallback, name: str | None = None) -> None:
        check_callback(callback)
        if name is not None:
            check_callback_name(name)
        current = self.callbacks.get(name)
        if current is not None and current is not callback:
            what = f"named {name!r}" if name else "(the default)"
            raise ConfigurationError(f"a cluster completion callback {what} is already registered")
        self.callbacks[name] = callback

    def names(self) -> tuple[bool, list[str]]:
        """(has a default, the names)."""
        return None in self.callbacks, sorted(n for n in self.callbacks if n is not None)

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    async def __call__(self, record: MessageClusterRecord, get_globals: GlobalsGetter) -> Any:
        callback = self.callbacks.get(record.callback_name)
        if callback is None:
            raise ConfigurationError(
                f"no completion callback named {record.callback_name!r} is registered"
            )
        result = callback(record, get_globals)
        if inspect.isawaitable(result):
            result = await result
        return result


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
    only = callback.names() if isinstance(callback, CallbackRegistry) else None
    attributes = await _claim(ctx, cluster_id, owner, lease_seconds, only)
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


def _name_condition(only: tuple[bool, list[str]] | None, values: dict[str, Any]) -> str:
    """`` AND <the cluster names one of our callbacks>`` (empty: any will do)."""
    if only is None:
        return ""
    default, names = only
    parts = ["attribute_not_exists(callbackName)"] if default else []
    if names:
        for position, name in enumerate(names):
            values[f":cb{position}"] = {"S": name}
        parts.append(f"callbackName IN ({', '.join(f':cb{i}' for i in range(len(names)))})")
    # An empty registry claims nothing (its callers do not call it).
    return f" AND ({' OR '.join(parts)})" if parts else " AND attribute_exists(noSuchAttribute)"


async def _claim(
    ctx: Context,
    cluster_id: str,
    owner: str,
    lease_seconds: int,
    only: tuple[bool, list[str]] | None = None,
) -> dict[str, Any] | None:
    """The cluster item if ``owner`` now holds the claim, else None. ``only``:
    claim only a cluster whose callback is one of these (a registry's)."""
    key = cluster_key(cluster_id)
    now = int(ctx.clock())
    values: dict[str, Any] = {
        ":running": {"S": CallbackStatus.RUNNING.value},
        ":pending": {"S": CallbackStatus.PENDING.value},
        ":until": n_attr(now + lease_seconds),
        ":now": n_attr(now),
        ":me": {"S": owner},
        ":iso": {"S": iso_now()},
        ":one": n_attr(1),
        ":done": n_attr(StatusCode.COMPLETE),
        ":error": n_attr(StatusCode.ERROR),
    }
    mine = _name_condition(only, values)
    try:
        attributes: dict[str, Any] | None = await update_item(
            ctx,
            key,
            "SET callbackStatus = :running, callbackLease = :until, "
            "callbackOwner = :me, updatedAt = :iso ADD callbackAttempts :one",
            values,
            condition="statusCode IN (:done, :error) AND (callbackStatus = :pending OR "
            "(callbackStatus = :running AND callbackLease < :now))" + mine,
            returns_on_failure="ALL_OLD",
        )
    except ConditionFailedError as exc:
        # Our claim applied but its response was lost, and botocore's retry
        # of it failed the condition: the item then names us as the owner.
        if not _claimed_by(exc.item, owner):
            _not_ours(cluster_id, exc.item, only)
            return None
        attributes = exc.item
    except AwsConnectionError:
        # No answer: the claim may have applied; only a read can tell.
        attributes = await get_consistent(ctx, key.pk, key.rk)
        if not _claimed_by(attributes, owner):
            raise
    return attributes


def _not_ours(
    cluster_id: str, item: dict[str, Any] | None, only: tuple[bool, list[str]] | None
) -> None:
    """Say so when the claim failed because the cluster names a callback we lack."""
    if only is None or not item:
        return
    name = item.get("callbackName", {}).get("S")
    default, names = only
    if (name is None and not default) or (name is not None and name not in names):
        log.warning(
            "cluster %s names completion callback %r, which is not registered here: "
            "left for a process that registers it",
            cluster_id,
            name,
        )


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
        expression = "SET " + ", ".join(sets) + " REMOVE callbackLease"
        await update_item(
            ctx, key, expression, values, condition="callbackOwner = :me", returns="NONE"
        )
    except ConditionFailedError:
        # Our lease ran out and another process took the claim over.
        log.warning(
            "completion callback of cluster %s outlived its lease; another process took it over",
            cluster_id,
        )
