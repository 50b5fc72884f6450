"""Creating a message cluster: streamed, resumable, record before send.

Order of effects: cluster record (PRE FLIGHT) -> globals in S3 -> per block
of ``SHARD_SIZE`` tasks: task records (BatchWriteItem) -> SendMessageBatch ->
seal the block's shard -> finally seal the cluster (IN PROGRESS, total).

A sealed shard is the checkpoint: every task of its block was sent. A
creation that stopped part-way is resumed by calling again with the same
``cluster_id`` and the same tasks: sealed blocks are skipped, and in the
first unsealed block only tasks without a record are written and only
records still PRE FLIGHT are sent. Whether the send of that one block
reached SQS before the crash is unknowable, so on a standard queue a resume
may deliver those tasks twice (counting stays exact: completion is
conditional); FIFO queues deduplicate them by task id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterable, Iterable, Mapping, Sized
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._aws_errors import aws_errors
from .._batching import gather_limited, iter_chunks
from .._clusterkeys import (
    CLUSTER_INDEX_KEY,
    CLUSTER_INDEX_VALUE,
    SHARD_SIZE,
    cluster_key,
    shard_key,
    task_key,
)
from .._context import iso_now
from .._dynamo import batch_get, batch_write, get_consistent, update_item
from .._errors import (
    ClusterCreateError,
    ConditionFailedError,
    MsgclusterError,
    ValidationError,
)
from .._itemcodec import decode_item, encode_item
from .._json import encode_meta
from .._schemas import (
    MessageClusterRecord,
    RecordKey,
    RecordType,
    S3Pointer,
    ShardRecord,
    Status,
    StatusCode,
    TaskEnvelope,
)
from ..messages._outgoing import Prepared, needs_offload, prepare
from ..messages._sending import send_entries
from ..queues import _extended
from ..queues._contract import OutgoingMessage
from ._buckets import BUCKETED, cap_last_bucket, note_layout
from ._callbacks import check_callback_name
from ._closing import close_shard, maybe_flip

if TYPE_CHECKING:
    from .._context import Context, QueueInfo

__all__ = ["create_message_cluster"]

_encoder: Final = msgspec.json.Encoder()
# The fan-in layout of new clusters (``MessageClusterRecord.layout``); clusters
# created with another keep theirs. Tests set 1 to exercise the older layout.
NEW_CLUSTER_LAYOUT: int = BUCKETED
_CLUSTER_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class PreparedTask(Prepared):
    """A task entry: its envelope carries the cluster key and the globals location."""

    __slots__ = ("cluster_pk", "globals_s3")

    def __init__(self, *, cluster_pk: str, globals_s3: S3Pointer | None, **kw: Any) -> None:
        self.cluster_pk = cluster_pk
        self.globals_s3 = globals_s3
        super().__init__(**kw)

    def encode_envelope(self) -> bytes:
        envelope = TaskEnvelope(
            pk=self.key.pk,
            rk=self.key.rk,
            url=self.url,
            task_id=self.ident,
            cluster_pk=self.cluster_pk,
            task=msgspec.Raw(self.body),
            globals_s3=self.globals_s3,
        )
        return _encoder.encode(envelope)


def _check_args(
    tasks: object,
    cluster_id: str | None,
    tolerated_failures: int,
    tolerated_failure_rate: float,
) -> str:
    if isinstance(tasks, str | bytes | Mapping) or not isinstance(tasks, Iterable | AsyncIterable):
        raise ValidationError(
            "tasks must be an iterable or async iterable of tasks (one item per task), "
            f"got {type(tasks).__name__}"
        )
    if not isinstance(tolerated_failures, int) or tolerated_failures < 0:
        raise ValidationError("tolerated_failures must be an int >= 0")
    if not isinstance(tolerated_failure_rate, int | float) or not (
        0.0 <= tolerated_failure_rate <= 1.0
    ):
        raise ValidationError("tolerated_failure_rate must be a number in 0.0..1.0")
    if cluster_id is None:
        return str(uuid.uuid4())
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.match(cluster_id):
        raise ValidationError(
            f"cluster_id must be 1-128 characters of [A-Za-z0-9_.-], got {cluster_id!r:.200}"
        )
    return cluster_id


async def _existing(
    ctx: Context, cid: str, url: str, tasks: object, meta_bytes: bytes
) -> tuple[dict[str, Any] | None, bool]:
    """A resumed creation's cluster item (None if new) and whether it was sealed;
    a resume that does not match the creation it resumes is refused."""
    existing = await _get(ctx, cluster_key(cid))
    if existing is None:
        return None, False
    record = decode_item(existing, MessageClusterRecord)
    mismatch = None
    if record.url != url:
        mismatch = f"for queue {record.url}, not {url}"
    elif record.meta != msgspec.json.decode(meta_bytes):
        mismatch = "with other meta"
    elif record.sealed and isinstance(tasks, Sized) and len(tasks) != record.total:
        mismatch = f"with {record.total:,} tasks, not {len(tasks):,}"
    if mismatch is not None:
        raise ValidationError(
            f"cluster {cid} exists {mismatch}; a resume passes the same queue, meta and "
            "tasks (or use a new cluster_id)"
        )
    return existing, record.sealed


async def create_message_cluster(
    ctx: Context,
    url: str,
    tasks: Iterable[Any] | AsyncIterable[Any],
    meta: Any = None,
    globals: Any = None,
    omit_globals: bool = False,
    *,
    cluster_id: str | None = None,
    tolerated_failures: int = 0,
    tolerated_failure_rate: float = 0.0,
    completion_queue_url: str | None = None,
    callback: str | None = None,
) -> RecordKey:
    cid = _check_args(tasks, cluster_id, tolerated_failures, tolerated_failure_rate)
    if callback is not None:
        check_callback_name(callback)
    info = await ctx.queue_info(url)
    if completion_queue_url is not None:
        await ctx.queue_info(completion_queue_url)
    meta_bytes = encode_meta(meta, ctx.settings.max_meta_bytes)
    ckey = cluster_key(cid)
    existing, sealed = (
        await _existing(ctx, cid, url, tasks, meta_bytes)
        if cluster_id is not None
        else (None, False)
    )
    if sealed:
        await maybe_flip(ctx, cid)
        return ckey
    pointer = None
    if not omit_globals:
        from ._globals import create_globals

        pointer = await create_globals(ctx, cid, globals)
    if existing is None:
        total = len(tasks) if isinstance(tasks, Sized) else 0
        existing = await _put_cluster(
            ctx, cid, info, meta_bytes, pointer, total, tolerated_failures,
            float(tolerated_failure_rate), completion_queue_url, callback,
        )  # fmt: skip
    resume = existing is not None
    bucketed = note_layout(ctx, cid, existing) if resume else NEW_CLUSTER_LAYOUT >= BUCKETED
    ctx.cluster_layouts.put(cid, bucketed)
    creator = _Creator(ctx, info, cid, ckey, pointer, resume=resume, bucketed=bucketed)
    try:
        total = await creator.run(tasks)
    except ClusterCreateError:
        raise
    except Exception as exc:  # ours, or the caller's tasks iterable raised
        reason = str(exc) if isinstance(exc, MsgclusterError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())[:500]
        raise ClusterCreateError(
            f"creating cluster {cid} stopped after {creator.sent:,} task(s): {reason}; everything "
            f"written is kept: call create_message_cluster again with cluster_id={cid!r} and the "
            "same tasks to resume",
            cluster_id=cid,
        ) from exc
    await _seal_cluster(ctx, cid, total, creator.shards)
    return ckey


async def _get(ctx: Context, key: RecordKey) -> dict[str, Any] | None:
    return await get_consistent(ctx, key.pk, key.rk)


async def _put_cluster(
    ctx: Context,
    cid: str,
    info: QueueInfo,
    meta_bytes: bytes,
    pointer: S3Pointer | None,
    total: int,
    tolerated_failures: int,
    tolerated_failure_rate: float,
    completion_queue_url: str | None,
    callback: str | None,
) -> dict[str, Any] | None:
    """Write the PRE FLIGHT cluster record; the existing item if one won a race."""
    now = iso_now()
    key = cluster_key(cid)
    record = MessageClusterRecord(
        pk=key.pk,
        rk=key.rk,
        id=cid,
        url=info.url,
        meta=msgspec.json.decode(meta_bytes),
        total=total,
        tolerated_failures=tolerated_failures,
        tolerated_failure_rate=tolerated_failure_rate,
        completion_queue_url=completion_queue_url,
        callback_name=callback,
        globals_bucket=pointer.bucket if pointer else None,
        globals_key=pointer.key if pointer else None,
        started_at=now,
        updated_at=now,
        expires_at=ctx.expires_at(),
        layout=NEW_CLUSTER_LAYOUT,
    )
    try:
        with aws_errors(resource=ctx.table):
            await ctx.ddb.put_item(
                TableName=ctx.table,
                Item=encode_item(record)
                | {
                    "status": {"S": Status.PRE_FLIGHT.value},
                    "statusCode": {"N": str(int(StatusCode.PRE_FLIGHT))},
                    CLUSTER_INDEX_KEY: {"S": CLUSTER_INDEX_VALUE},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
    except ConditionFailedError:
        return await _get(ctx, key)
    return None


class _Creator:
    """Streams the tasks block by block; one block = one shard."""

    def __init__(
        self,
        ctx: Context,
        info: QueueInfo,
        cid: str,
        ckey: RecordKey,
        pointer: S3Pointer | None,
        *,
        resume: bool,
        bucketed: bool,
    ) -> None:
        self.bucketed = bucketed
        self.ctx = ctx
        self.info = info
        self.cid = cid
        self.ckey = ckey
        self.pointer = pointer
        self.resume = resume
        self.sent = 0
        self.shards = 0
        self.factory = partial(PreparedTask, cluster_pk=ckey.pk, globals_s3=pointer)

    async def run(self, tasks: Iterable[Any] | AsyncIterable[Any]) -> int:
        total = 0
        async for block in iter_chunks(tasks, SHARD_SIZE):
            shard = total // SHARD_SIZE
            await self._block(shard, total, block)
            total += len(block)
            self.shards = shard + 1
        return total

    async def _block(self, shard: int, start: int, block: list[Any]) -> None:
        ctx = self.ctx
        if self.resume:
            item = await _get(ctx, shard_key(self.cid, shard))
            if item is not None and decode_item(item, ShardRecord).sealed:
                record = decode_item(item, ShardRecord)
                if self.bucketed:  # the crash may have come between seal and cap
                    await cap_last_bucket(ctx, self.cid, shard, record.total)
                if record.pending <= 0 and record.closed_at is None:
                    await close_shard(ctx, self.cid, shard, record)
                self.sent += len(block)
                return
        now = iso_now()
        entries = [self._prepare(start + offset, task, now) for offset, task in enumerate(block)]
        to_write, to_send = entries, entries
        if self.resume:
            to_write, to_send = await self._left_to_do(entries)
        await self._offload(to_send)
        if to_write:
            requests = [{"PutRequest": {"Item": entry.item}} for entry in to_write]
            failures = await batch_write(ctx, requests)
            if failures:
                raise failures[0].error
        await self._send(to_send)
        self.sent += len(block)
        await self._seal_shard(shard, len(block))

    def _prepare(self, index: int, task: Any, now: str) -> Prepared:
        outgoing = task if isinstance(task, OutgoingMessage) else OutgoingMessage(body=task)
        if self.info.fifo and outgoing.group_id is None:
            # One group per task: no ordering between tasks, full parallelism.
            outgoing = msgspec.structs.replace(outgoing, group_id=f"{self.cid}:{index}")
        key = task_key(self.cid, index)
        try:
            return prepare(
                self.ctx,
                self.info,
                index,
                outgoing,
                now,
                key=(f"{self.cid}:{index}", key),
                record_type=RecordType.TASK,
                keep_body=False,
                factory=self.factory,
            )
        except ValidationError as exc:
            raise ClusterCreateError(
                f"task {index} of cluster {self.cid} is invalid: {exc}; tasks before it were "
                f"sent - fix it and call again with cluster_id={self.cid!r} to resume",
                cluster_id=self.cid,
            ) from exc

    async def _left_to_do(self, entries: list[Prepared]) -> tuple[list[Prepared], list[Prepared]]:
        """On resume: records to write (missing) and messages to send (still PRE FLIGHT)."""
        found = await batch_get(
            self.ctx,
            [(entry.key.pk, entry.key.rk) for entry in entries],
            consistent_read=True,
            projection="pk, rk, #s",
            names={"#s": "status"},
        )
        to_write, to_send = [], []
        for entry in entries:
            item = found.get((entry.key.pk, entry.key.rk))
            if item is None:
                to_write.append(entry)
                to_send.append(entry)
            elif item.get("status", {}).get("S") == Status.PRE_FLIGHT.value:
                to_send.append(entry)
        return to_write, to_send

    async def _offload(self, entries: list[Prepared]) -> None:
        large = [entry for entry in entries if needs_offload(self.ctx, entry)]

        async def offload(entry: Prepared) -> None:
            entry.offload_to(await _extended.store_payload(self.ctx, entry.key, entry.envelope))

        await gather_limited(self.ctx.limiter, [partial(offload, entry) for entry in large])

    async def _send(self, entries: list[Prepared]) -> None:
        for entry, outcome in await send_entries(self.ctx, self.info.url, entries):
            if not isinstance(outcome, str):
                error = outcome.error
                raise ClusterCreateError(
                    f"task {entry.index} of cluster {self.cid} could not be sent: "
                    f"{getattr(error, 'code', '') or type(error).__name__}: {error}; its record "
                    f"is kept: call again with cluster_id={self.cid!r} to resume",
                    cluster_id=self.cid,
                )

    async def _seal_shard(self, shard: int, count: int) -> None:
        """Every task of the block was sent: let the shard count down to closure."""
        key = shard_key(self.cid, shard)
        try:
            attributes = await update_item(
                self.ctx,
                key,
                "ADD pending :n, done :zero, failedCount :zero "
                "SET sealed = :t, #total = :n, expiresAt = if_not_exists(expiresAt, :exp)",
                {
                    ":n": {"N": str(count)},
                    ":zero": {"N": "0"},
                    ":t": {"BOOL": True},
                    ":exp": {"N": str(self.ctx.expires_at())},
                },
                condition="attribute_not_exists(sealed)",
                names={"#total": "total"},
            )
        except ConditionFailedError:
            item = await _get(self.ctx, key)  # sealed by an earlier try of this block
            if item is None:
                return
            record = decode_item(item, ShardRecord)
        else:
            record = decode_item(attributes, ShardRecord)
        if self.bucketed:
            await cap_last_bucket(self.ctx, self.cid, shard, count)
        if record.pending <= 0 and record.closed_at is None:
            # Consumers counted the whole block before it was sealed.
            await close_shard(self.ctx, self.cid, shard, record)


async def _seal_cluster(ctx: Context, cid: str, total: int, shards: int) -> None:
    key = cluster_key(cid)
    try:
        attributes = await update_item(
            ctx,
            key,
            "SET sealed = :t, #total = :total, shards = :shards, #s = :s, "
            "statusCode = :c, updatedAt = :now ADD shardsOpen :shards",
            {
                ":t": {"BOOL": True},
                ":total": {"N": str(total)},
                ":shards": {"N": str(shards)},
                ":s": {"S": Status.IN_PROGRESS.value},
                ":c": {"N": str(int(StatusCode.IN_PROGRESS))},
                ":now": {"S": iso_now()},
                ":stopped": {"N": str(int(StatusCode.STOPPED))},
            },
            condition="attribute_not_exists(sealed) AND statusCode <> :stopped",
            names={"#s": "status", "#total": "total"},
        )
    except ConditionFailedError:
        await maybe_flip(ctx, cid)  # sealed before (resume) or cancelled
        return
    if int(attributes["shardsOpen"]["N"]) <= 0:
        await maybe_flip(ctx, cid)
