"""``safe_process_batch``: an SQS-triggered Lambda batch with partial failures.

Per batch: validate the whole event first (a malformed event is a bug in the
trigger, not a message to retry); one consistent BatchGetItem finds records
already complete (duplicate deliveries are skipped); the rest run
concurrently under a limit; successes are completed with BatchWriteItem;
failures are recorded and returned as ``batchItemFailures`` so Lambda
redelivers only those. FIFO batches run each message group in order and
fail the rest of a group after its first failure, as SQS ordering requires.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from .._clusterkeys import TaskRef, cluster_id_of
from .._dynamo import batch_write, key_attrs
from .._errors import (
    ClaimHeldError,
    ConfigurationError,
    MalformedEventError,
    MsgclusterError,
    ValidationError,
)
from ..clusters._callbacks import run_callback
from ..clusters._group_commit import settle_together
from ..read._incoming import Incoming, MessageKind, SqsMessage, classify, kind_of, normalize
from ..read._records import ParsedRecord, load_incoming
from ._body_types import body_type_problem
from ._claims import claim_batch
from ._consume import is_complete_batch, mark_failed

if TYPE_CHECKING:
    from .._context import Context
    from .._schemas import RecordKey

__all__ = ["check_batch_options", "safe_process_batch"]

log = logging.getLogger("msgcluster")

ProcessRecord = Callable[[ParsedRecord[Any]], Awaitable[Any] | Any]


class _GroupBlocked(Exception):
    """Not attempted: an earlier message of its FIFO group failed."""


_NOT_FAILURES = (_GroupBlocked, ClaimHeldError)
FifoFailure = Literal["rest_of_group", "rest_of_batch"]
_FIFO_FAILURES: Final = ("rest_of_group", "rest_of_batch")
MAX_CONCURRENCY: Final = 10_000


def check_batch_options(*, concurrency: object, fifo_failure: object) -> None:
    """``concurrency`` an int from 1 to 10,000 (not a bool, str or float) and
    ``fifo_failure`` one of its two values, else ValidationError."""
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        shown = (
            repr(concurrency)
            if isinstance(concurrency, int | float) and not math.isnan(concurrency)
            else f"a {type(concurrency).__name__}"
        )
        raise ValidationError(
            f"concurrency must be an integer from 1 to {MAX_CONCURRENCY:,}, got {shown}"
        )
    if fifo_failure not in _FIFO_FAILURES:
        shown = repr(fifo_failure) if isinstance(fifo_failure, str) else type(fifo_failure).__name__
        raise ValidationError(
            f"fifo_failure is 'rest_of_group' or 'rest_of_batch', got {shown:.40}"
        )


class _Item:
    __slots__ = ("error", "incoming", "ok")

    def __init__(self, incoming: Incoming) -> None:
        self.incoming = incoming
        self.ok = False
        self.error: BaseException | None = incoming.error

    @property
    def message(self) -> SqsMessage:
        return self.incoming.message

    @property
    def key(self) -> RecordKey | None:
        return self.incoming.key


def _records_of(event: object) -> list[SqsMessage]:
    if not isinstance(event, Mapping) or not isinstance(event.get("Records"), list):
        raise MalformedEventError(
            "expected a Lambda SQS event: a mapping with a 'Records' list; got "
            f"{type(event).__name__}"
            + (f" with keys {sorted(map(str, event))[:8]}" if isinstance(event, Mapping) else "")
        )
    messages: list[SqsMessage] = []
    foreign: list[MalformedEventError] = []
    for index, record in enumerate(event["Records"]):
        try:
            message = normalize(record)
        except MalformedEventError as exc:
            if exc.message_id is None:
                # Nothing to name it by in batchItemFailures: only failing the
                # whole event (redelivered as a whole) keeps it from being lost.
                raise MalformedEventError(
                    f"Records[{index}]: {exc}", message_id=exc.message_id
                ) from exc
            # It has an id: it fails alone, reported like any other failure.
            messages.append(SqsMessage(id=exc.message_id, body="", record=exc))
            continue
        source = record.get("eventSource") if isinstance(record, Mapping) else None
        if source is not None and source != "aws:sqs":
            # One odd record among SQS records, with an id: it fails alone.
            error = MalformedEventError(
                f"Records[{index}] (message {message.id}) has eventSource "
                f"{str(source)[:40]!r}, not 'aws:sqs'",
                message_id=message.id,
            )
            foreign.append(error)
            messages.append(SqsMessage(id=message.id, body="", record=error))
            continue
        messages.append(message)
    if foreign and len(foreign) == len(messages):
        # No SQS record at all: the function has the wrong trigger (a trigger
        # bug, not messages to retry one by one).
        raise foreign[0]
    return messages


def _is_fifo(messages: list[SqsMessage]) -> bool:
    return any(m.source_arn.endswith(".fifo") or m.group_id for m in messages)


async def safe_process_batch(
    ctx: Context | None,
    event: object,
    process_record: ProcessRecord,
    *,
    concurrency: int = 10,
    fifo: bool | None = None,
    body_type: Any = Any,
    fifo_failure: FifoFailure = "rest_of_group",
) -> dict[str, list[dict[str, str]]]:
    """Process a Lambda SQS event. ``ctx`` None (no Client): plain messages
    only; a tracked or offloaded one then fails alone, saying why.

    On a FIFO queue a failure fails what follows it, unprocessed: the rest of
    its message group (``fifo_failure="rest_of_group"``, Powertools'
    ``skip_group_on_error=True``), or the rest of the batch, processed in
    order (``"rest_of_batch"``, Powertools' default)."""
    check_batch_options(concurrency=concurrency, fifo_failure=fifo_failure)
    if not callable(process_record):
        raise ValidationError(
            "process_record must be a function of one record (async or not), "
            f"got {type(process_record).__name__}"
        )
    problem = body_type_problem(body_type)
    if problem is not None:
        raise ValidationError(f"body_type: {problem}")
    if fifo is not None and not isinstance(fifo, bool):
        raise ValidationError(f"fifo is True, False or None (detect), got {type(fifo).__name__}")
    messages = _records_of(event)
    everything = [_read(ctx, message) for message in messages]
    items, copies = _first_deliveries(everything)
    done = await _already_done(ctx, items)
    batch = _Batch(ctx, process_record, body_type, concurrency)
    is_fifo = _is_fifo(messages) if fifo is None else fifo
    await batch.run(items, fifo=is_fifo, whole_batch=fifo_failure == "rest_of_batch")
    if ctx is not None:
        await _complete(ctx, [i for i in items if i.ok and i.key is not None and i.key not in done])
        # Neither a blocked FIFO message nor one claimed elsewhere failed here.
        failed = [i for i in items if i.key and i.error and not isinstance(i.error, _NOT_FAILURES)]
        await _record_failures(ctx, batch.limiter, failed)
    for copy, first in copies:
        copy.ok, copy.error = first.ok, first.error
    return {
        "batchItemFailures": [
            {"itemIdentifier": item.message.id} for item in everything if not item.ok
        ]
    }


def _read(ctx: Context | None, message: SqsMessage) -> _Item:
    if isinstance(message.record, MalformedEventError):  # see _records_of
        return _Item(Incoming(message, MessageKind.PLAIN, error=message.record))
    item = _Item(classify(message))
    if item.error is not None:
        log.warning("message %s cannot be processed: %s", message.id, item.error)
    elif ctx is None and item.key is not None:
        item.error = ConfigurationError(
            f"message {message.id} is tracked (sent with Client.send_message or a "
            "cluster task): reading it needs a Client, App(client=msgcluster.Client(...))"
        )
    return item


def _first_deliveries(items: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, _Item]]]:
    """The same message twice in one batch (duplicate delivery) runs once; the
    copies share its outcome."""
    originals: dict[object, _Item] = {}
    copies: list[tuple[_Item, _Item]] = []
    firsts: list[_Item] = []
    for item in items:
        identity = item.key if item.key is not None else item.message.id
        first = originals.setdefault(identity, item)
        if first is item:
            firsts.append(item)
        else:
            copies.append((item, first))
    return firsts, copies


async def _already_done(ctx: Context | None, items: list[_Item]) -> set[RecordKey]:
    """Tracked messages already complete (one consistent BatchGetItem): skipped."""
    checked = [item for item in items if item.key is not None and item.error is None]
    if not checked or ctx is None:
        return set()
    flags = await is_complete_batch(ctx, [item.key for item in checked])
    done = {item.key for item, flag in zip(checked, flags, strict=True) if flag and item.key}
    for item in items:
        if item.key in done:
            item.ok = True
    if ctx.settings.claim:
        to_run = [item for item in checked if item.key not in done]
        claims = await claim_batch(ctx, [item.key for item in to_run])
        for item, claim in zip(to_run, claims, strict=True):
            if claim.held:
                item.error = ClaimHeldError(
                    f"message {item.message.id} is being processed by another consumer; "
                    f"retry after {claim.retry_after:.0f} s",
                    retry_after=claim.retry_after,
                )
    return done


class _Batch:
    """Runs the records of one batch under a concurrency limit (FIFO groups in order)."""

    def __init__(
        self, ctx: Context | None, process_record: ProcessRecord, body_type: Any, concurrency: int
    ) -> None:
        self.ctx = ctx
        self.process_record = process_record
        self.body_type = body_type
        self.limiter = anyio.CapacityLimiter(concurrency)
        # SystemExit, KeyboardInterrupt... raised by process_record: re-raised
        # as itself once the batch stopped (never left to escape a child task,
        # where anyio/asyncio would turn it into a group or a bare cancellation).
        self.fatal: BaseException | None = None
        self._scope: anyio.CancelScope | None = None

    async def run(self, items: list[_Item], *, fifo: bool, whole_batch: bool = False) -> None:
        try:
            await self._run(items, fifo=fifo, whole_batch=whole_batch)
        finally:
            fatal, self.fatal = self.fatal, None
        if fatal is not None:
            raise fatal

    async def _run(self, items: list[_Item], *, fifo: bool, whole_batch: bool) -> None:
        if fifo and whole_batch:
            await self._run_group(items)  # in order; the first failure fails the rest
            return
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            if fifo:
                groups: dict[str, list[_Item]] = {}
                for item in items:
                    groups.setdefault(item.message.group_id or "", []).append(item)
                for group in groups.values():
                    tg.start_soon(self._limited, self._run_group, group)
            else:
                for item in items:
                    if not item.ok and item.error is None:
                        tg.start_soon(self._limited, self._run_one, item)

    async def _limited(self, func: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        async with self.limiter:
            await func(arg)

    async def _run_group(self, group: list[_Item]) -> None:
        failed = False
        for item in group:
            if self.fatal is not None:
                return
            if failed:
                item.error = item.error or _GroupBlocked()
                continue
            if not item.ok and item.error is None:
                await self._run_one(item)
            failed = item.error is not None

    async def _run_one(self, item: _Item) -> None:
        ctx = self.ctx
        try:
            parsed = await load_incoming(ctx, item.incoming, self.body_type)
            item.incoming = _resolved(item.incoming, parsed)
            if parsed.kind is MessageKind.EVENT and ctx is not None and ctx.cluster_callbacks:
                # A completion event, and this Client has the callback: run it
                # (claimed, so exactly once); a False claim means it is running
                # elsewhere, so the event stays for a later try.
                assert parsed.key is not None
                if not await run_callback(
                    ctx, cluster_id_of(parsed.key.pk), ctx.cluster_callbacks[0]
                ):
                    raise RuntimeError("completion callback is running elsewhere; retry later")
            else:
                result = self.process_record(parsed)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            item.error = exc
            log.warning("message %s failed: %s", item.message.id, exc, exc_info=exc)
            return
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            # SystemExit, KeyboardInterrupt: stop the batch; run() re-raises it.
            item.error = exc
            self.fatal = self.fatal or exc
            if self._scope is not None:
                self._scope.cancel()
            return
        item.ok = True


def _resolved(incoming: Incoming, parsed: ParsedRecord[Any]) -> Incoming:
    """The classification once its payload was fetched: a foreign-looking pointer
    may hold a msgcluster envelope, completed and failed by its real key."""
    if parsed.key == incoming.key:
        return incoming
    return Incoming(parsed.message, parsed.kind, key=parsed.key, envelope=parsed.envelope)


async def _complete(ctx: Context, items: list[_Item]) -> None:
    """Complete processed records: tasks counted (one transaction), messages' records
    deleted; a completion that fails fails its message."""
    tasks = [
        item for item in items if item.key is not None and kind_of(item.key) is MessageKind.TASK
    ]
    if tasks:
        try:
            await settle_together(
                ctx, [TaskRef(item.key) for item in tasks if item.key is not None]
            )
        except MsgclusterError as exc:
            log.warning("could not count %d task(s): %s", len(tasks), exc)
            for item in tasks:
                item.ok = False
                item.error = RuntimeError("task could not be marked complete")
    # Two deliveries may resolve to one record only once their payloads are
    # read; BatchWriteItem refuses a key twice, so each is deleted once.
    keys = {
        (item.key.pk, item.key.rk): None
        for item in items
        if item.key is not None and kind_of(item.key) is MessageKind.MESSAGE
    }
    requests = [{"DeleteRequest": {"Key": key_attrs(pk, rk)}} for pk, rk in keys]
    if not requests:
        return
    try:
        failures = await batch_write(ctx, requests)
    except MsgclusterError as exc:
        failures_pk = {item.key.pk for item in items if item.key is not None}
        log.warning("could not complete %d record(s): %s", len(failures_pk), exc)
    else:
        failures_pk = {f.request["DeleteRequest"]["Key"]["pk"]["S"] for f in failures}
    for item in items:
        if item.key is not None and item.key.pk in failures_pk:
            # Report it so it is redelivered: better processed twice than a
            # record that says "not done" for work that was done.
            item.ok = False
            item.error = RuntimeError("record could not be marked complete")


async def _record_failures(
    ctx: Context, limiter: anyio.CapacityLimiter, items: list[_Item]
) -> None:
    async def record(item: _Item) -> None:
        async with limiter:
            try:
                await mark_failed(ctx, item.message, item.error or RuntimeError("failed"))
            except MsgclusterError as exc:
                log.warning("could not record failure of %s: %s", item.message.id, exc)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(record, item)
