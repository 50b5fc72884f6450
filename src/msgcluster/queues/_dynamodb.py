"""``dynamodb://<table>?queue=<name>``: a message queue stored in DynamoDB.

Several named queues share one table. Each message is one item; a sparse,
sharded GSI (the *ready index*, keyed ``<queue>#<shard>`` / fixed-width
visible-at time) lists what can be received now, so a receive never reads
in-flight messages. Every receive writes a fresh lease token that ack, nack
and extend are conditional on (strict receipts). Standard and FIFO queues
(message groups with in-flight blocking), delays, FIFO deduplication within a
window, a finite default of max receives with a DLQ (a queue in the same
table) and redrive, compression of large bodies. docs/dynamodb-queue.md
draws the layout and says why.

Backends do not retry: botocore's standard retry mode handles throttling and
connection errors per request; what still fails raises, and the worker's
receive loop backs off and keeps running.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import anyio

from .._aws_errors import aws_errors
from .._errors import (
    ConditionFailedError,
    MsgclusterError,
    QueueNotFoundError,
    QueueURIError,
    ReceiptError,
)
from .._itemcodec import decode_item, encode_item
from ._checks import (
    check_batch_bytes,
    check_receive,
)
from ._contract import Capabilities, ReceivedMessage, SendResult
from ._dynamodb_admin import DynamoAdminMixin
from ._dynamodb_base import StoreConfig, forget_waiter, waiter
from ._dynamodb_keys import QueueMeta, Receipt, decode_receipt, meta_key
from ._dynamodb_provision import provision_dynamodb_queue_table
from ._dynamodb_store import DynamoStore
from ._handle import QueueHandle
from ._uri import Param, aws_client, boolean, endpoint, integer, number, read_params, session, text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._checks import PreparedMessage
    from ._uri import QueueURI

__all__ = ["DynamoQueue", "open_dynamodb_queue", "provision_dynamodb_queue_table"]

DEFAULT_MAX_RECEIVES = 5  # finite: a poison message ends in the DLQ, not in a loop
MAX_BODY_BYTES = 262_144  # an item is at most 400 KB; this leaves room for the rest
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]{1,80}")


def _queue_name(value: object) -> str:
    name = text(value)
    if not _QUEUE.fullmatch(name):
        raise ValueError("a queue name is 1-80 of A-Z a-z 0-9 _ - .")
    return name


PARAMS: dict[str, Param[Any]] = {
    "queue": Param(_queue_name),
    "region": Param(text),
    "endpoint": Param(endpoint),
    "visibility_timeout": Param(number(0, 43_200)),
    "delay": Param(number(0, 900)),
    "max_receives": Param(integer(0, 1000)),  # 0: never dead-letter
    "dlq": Param(_queue_name),
    "fifo": Param(boolean),
    "content_based_dedup": Param(boolean),
    "shards": Param(integer(1, 256)),
    "compress_over": Param(integer(0, MAX_BODY_BYTES)),
    "dedup_window": Param(number(1, 86_400)),
    "poll_interval": Param(number(0.01, 20)),
    "max_connections": Param(integer(1, 1000)),
    "provision": Param(boolean),
    # create=false: open only a queue that exists (read-only tools never write).
    "create": Param(boolean),
    "client": Param(aws_client("transact_write_items"), query=False),
    "session": Param(session, query=False),
}


def check_uri(uri: QueueURI, /, **options: Any) -> tuple[str, dict[str, Any]]:
    """The table name and the queue's parameters, checked without opening it."""
    params = read_params(uri, options, PARAMS)
    table = uri.location.rstrip("/")
    if not _TABLE.fullmatch(table):
        raise QueueURIError(
            "dynamodb:// takes a table name (3-255 of A-Z a-z 0-9 _ - .) before the query, "
            "as in dynamodb://my-table?queue=jobs"
        )
    return table, params


async def open_dynamodb_queue(uri: QueueURI, /, **options: Any) -> DynamoQueue:
    """The backend factory registered for ``dynamodb://``."""
    table, params = check_uri(uri, **options)
    queue = DynamoQueue(uri.uri, table, params)
    try:
        await queue._open()
    except BaseException:
        await queue.aclose()
        raise
    return queue


class DynamoQueue(DynamoAdminMixin, QueueHandle):
    """A handle on one queue of a dynamodb:// table (see
    :class:`~msgcluster.queues.Queue`; also :class:`~msgcluster.queues._admin.QueueAdmin`)."""

    def __init__(self, uri: str, table: str, params: dict[str, Any]) -> None:
        super().__init__(uri)
        self._table = table
        self._params = params
        self._client = params.get("client")
        self._poll_max = float(params.get("poll_interval", 0.5))
        self._store_: DynamoStore | None = None

    # ------------------------------------------------------------- opening

    async def _open(self) -> None:
        if self._client is None:
            await self._create_client()
        if self._params.get("provision"):
            await provision_dynamodb_queue_table(self._client, self._table)
        params = self._params
        name = params.get("queue", "default")
        meta = await self._meta(name, params.get("fifo", name.endswith(".fifo")), params)
        max_receives = params.get(
            "max_receives", None if meta.dead_letter_queue else DEFAULT_MAX_RECEIVES
        )
        dlq = None
        dlq_shards = meta.shards
        if max_receives:
            dlq = params.get("dlq") or f"{name.removesuffix('.fifo')}-dlq"
            if dlq == name:
                raise QueueURIError(f"queue {name}: a queue cannot be its own DLQ")
            dlq_meta = await self._meta(dlq, False, {}, dead_letter_queue=True, shards=meta.shards)
            if dlq_meta.fifo:
                raise QueueURIError(f"DLQ {dlq} is a FIFO queue; dead letters go to a standard one")
            dlq_shards = dlq_meta.shards
        elif "dlq" in params:
            raise QueueURIError(f"queue {name}: dlq= needs max_receives= of at least 1")
        if meta.fifo and params.get("delay"):
            raise QueueURIError(f"queue {name}: FIFO queues take no delay=")
        self._store_ = DynamoStore(
            self._client,
            StoreConfig(
                table=self._table,
                queue=name,
                fifo=meta.fifo,
                shards=meta.shards,
                visibility_timeout=params.get("visibility_timeout", 30.0),
                delay=params.get("delay", 0.0),
                max_receives=max_receives or None,
                dlq=dlq,
                dlq_shards=dlq_shards,
                content_based_dedup=params.get("content_based_dedup", False),
                compress_over=params.get("compress_over", 8192),
                dedup_window=params.get("dedup_window", 300.0),
                max_body_bytes=MAX_BODY_BYTES,
            ),
        )
        self._capabilities = _capabilities(meta.fifo, native_dlq=dlq is not None)

    async def _create_client(self) -> None:
        self._client = await self._own_client("dynamodb", self._params)

    async def _meta(
        self,
        name: str,
        fifo: bool,
        params: dict[str, Any],
        *,
        dead_letter_queue: bool = False,
        shards: int = 4,
    ) -> QueueMeta:
        """The queue's stored settings, written on first open. Settings that
        decide where items live (fifo, shards) cannot change afterwards."""
        wanted = QueueMeta(
            fifo=fifo, shards=params.get("shards", shards), dead_letter_queue=dead_letter_queue
        )
        resource = f"dynamodb://{self._table}?queue={name}"
        with aws_errors(resource=resource):
            found = await self._client.get_item(
                TableName=self._table, Key=meta_key(name), ConsistentRead=True
            )
        if "Item" not in found:
            if not self._params.get("create", True):
                raise QueueNotFoundError(
                    f"{resource} does not exist (no queue= means queue=default); check the "
                    "name, or create it by opening it for sending or with `msgcluster provision`",
                    code="QueueDoesNotExist",
                    operation="GetItem",
                )
            try:
                with aws_errors(resource=resource):
                    await self._client.put_item(
                        TableName=self._table,
                        Item={**meta_key(name), **encode_item(wanted)},
                        ConditionExpression="attribute_not_exists(pk)",
                    )
                return wanted
            except ConditionFailedError:  # created concurrently: read theirs
                return await self._meta(name, fifo, params, dead_letter_queue=dead_letter_queue)
        stored = decode_item(
            {k: v for k, v in found["Item"].items() if k not in ("pk", "rk")}, QueueMeta
        )
        for field in ("fifo", "shards"):
            if field in params and params[field] != getattr(stored, field):
                raise QueueURIError(
                    f"{resource} already exists with {field}={getattr(stored, field)!r}; "
                    f"open it without {field}= or use another queue name"
                )
        return stored

    # ---------------------------------------------------------- properties

    @property
    def _store(self) -> DynamoStore:
        assert self._store_ is not None
        return self._store_

    @property
    def table(self) -> str:
        return self._table

    @property
    def name(self) -> str:
        return self._store.config.queue

    @property
    def max_receives(self) -> int | None:
        """Receives after which a message moves to the DLQ (None: never)."""
        return self._store.config.max_receives

    @property
    def dead_letter_queue(self) -> str | None:
        """The name of this queue's DLQ (a queue in the same table)."""
        return self._store.config.dlq

    def __repr__(self) -> str:
        name = self._store_.config.queue if self._store_ else "?"
        return f"<DynamoQueue {self._table}/{name}{' closed' if self._closed else ''}>"

    # ----------------------------------------------------------------- send

    def _dedup_by_content(self) -> bool:
        return self._store.config.content_based_dedup

    async def _send_prepared(self, entries: dict[int, PreparedMessage]) -> dict[int, SendResult]:
        check_batch_bytes([p.size for p in entries.values()], self.capabilities)
        ids = await self._store.send(list(entries.items()))
        return {i: SendResult(index=i, id=ids[i]) for i in entries}

    # -------------------------------------------------------------- receive

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        self._check_open()
        check_receive(max_messages, wait_seconds, visibility_timeout, self.capabilities)
        store = self._store
        visibility = (
            store.config.visibility_timeout if visibility_timeout is None else visibility_timeout
        )
        messages: list[ReceivedMessage] = []
        with self._poll_scope():
            messages = await self._poll(max_messages, wait_seconds, visibility)
        return messages

    async def _poll(
        self, max_messages: int, wait_seconds: float, visibility: float
    ) -> list[ReceivedMessage]:
        """Look, then wait for a send by this process or the next poll tick
        (doubling up to ``poll_interval``), until something comes or time is up."""
        store = self._store
        config = store.config
        deadline = time.monotonic() + wait_seconds
        interval = min(0.05, self._poll_max)
        while True:
            # Registered before looking, so a send in between is not missed.
            event = waiter(config.table, config.queue)
            try:
                messages = await store.receive(max_messages, visibility)
                left = deadline - time.monotonic()
                if messages or left <= 0:
                    return messages
                with anyio.move_on_after(min(interval, left)):
                    await event.wait()
            finally:
                forget_waiter(config.table, config.queue, event)
            interval = min(interval * 2, self._poll_max)

    # ----------------------------------------------------- ack, nack, extend

    def _receipt(self, message: object) -> Receipt:
        config = self._store.config
        receipt: str = super()._receipt(message)
        assert isinstance(message, ReceivedMessage)  # checked by the base
        return decode_receipt(receipt, config.table, config.queue, message.id)

    async def _ack_receipts(self, receipts: dict[int, Receipt]) -> dict[int, MsgclusterError]:
        outcome = await self._store.ack(list(receipts.values()))
        return _by_index(receipts, outcome)

    async def _change_receipts(
        self, changes: dict[int, tuple[Receipt, float]]
    ) -> dict[int, MsgclusterError]:
        """One request, conditional on each delivery's lease."""
        outcome = await self._store.change_visibility(list(changes.values()))
        return _by_index({i: r for i, (r, _) in changes.items()}, outcome)

    async def dead_letter(self, message: ReceivedMessage, reason: str = "") -> bool:
        """Move a delivered message to the DLQ now (the worker's Reject);
        False if the queue has none. Conditional on the delivery's lease."""
        self._check_open()
        receipt = self._receipt(message)
        store = self._store
        if store.config.dlq is None:
            return False
        found = await store.call("get_item", Key=store.key(receipt.id), ConsistentRead=True)
        item = found.get("Item")
        held = item is not None and item.get("lease", {}).get("S") == receipt.lease
        if not held or not await store.move_to_dlq(
            item or {}, reason, condition_lease=receipt.lease
        ):
            raise ReceiptError(
                f"message {receipt.id}: this delivery's lease no longer holds",
                message_id=receipt.id,
            )
        if store.config.fifo:
            await store.settle_group(receipt.id, receipt.lease)
        return True

    # ---------------------------------------------------------------- close


def _by_index(
    receipts: dict[int, Receipt], outcome: Mapping[str, MsgclusterError | None]
) -> dict[int, MsgclusterError]:
    """The store's errors by message id, as errors by index in the call."""
    errors = {i: outcome.get(r.id) for i, r in receipts.items()}
    return {i: error for i, error in errors.items() if error is not None}


def _capabilities(fifo: bool, *, native_dlq: bool) -> Capabilities:
    return Capabilities(
        fifo=fifo,
        native_dlq=native_dlq,
        strict_receipts=True,
        max_send_batch=10,
        # One TransactWriteItems carries a send: 4 MB at most.
        max_send_batch_bytes=10 * MAX_BODY_BYTES,
        max_receive_batch=10,
        max_ack_batch=10,
        max_body_bytes=MAX_BODY_BYTES,
        max_attributes=10,
        max_delay_seconds=900.0,
        max_visibility_seconds=43_200.0,
        max_wait_seconds=20.0,
        batch_visibility=True,
        dead_letter_now=True,
    )
