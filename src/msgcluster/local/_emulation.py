"""An emulation of AWS behaviour moto does not show, as WSGI middleware in
front of moto inside the local server process: ``LocalAWS(emulation=Emulation())``.

The model (its assumptions; docs/performance.md states its limits):

* **Transaction isolation.** A TransactWriteItems holds each of its items from
  the moment it starts until ``transaction_hold`` seconds later (or until moto
  answered, if that is later). A TransactWriteItems that touches a held item
  is cancelled (``TransactionCanceledException``, reason ``TransactionConflict``
  on the items that conflict, ``None`` on the others); a PutItem, UpdateItem
  or DeleteItem of a held item gets ``TransactionConflictException``; a
  BatchWriteItem returns such items as ``UnprocessedItems``. Reads are not
  isolated: they see committed state, as on AWS.
* **Per-partition throughput.** One token bucket per (table, partition key
  value) for writes and one for reads, refilled at ``partition_wcu * scale``
  and ``partition_rcu * scale`` units per second, holding one second's worth.
  A written item costs ceil(KB) WCU (its size is the request's item, or the
  largest seen for that key; JSON length as the size), twice that in a
  transaction (ConditionCheck included); a read item ceil(size / 4 KB) RCU,
  half for an eventually consistent read. A write over its bucket is refused
  before it applies (``ProvisionedThroughputExceededException``; in a
  transaction the reason ``ThrottlingError``; in a BatchWriteItem
  ``UnprocessedItems``); a read is answered with the same error.
* **Latency.** Every request waits ``latency`` seconds before it is served.
* **SQS receive order.** A ReceiveMessage is served from a per-queue pool: it
  first takes up to 10 messages from moto into the pool (up to
  ``sqs_pool`` messages), then returns a random sample of the pool, so
  consumers do not meet in send order. With probability ``duplicate_rate`` a
  delivered message stays in the pool and is delivered once more to a later
  receive (the same receipt handle), as SQS standard queues sometimes do.
  Pooled messages are already received in moto: one left in the pool past
  half its visibility timeout is dropped there and reappears when moto's
  timeout ends, with one more receive counted.

``GET /_msgcluster/emulation`` returns the counters as JSON; ``POST`` to it
resets them. Stdlib only: this runs inside moto's threaded server.
"""

from __future__ import annotations

import io
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._emulation_wire import (
    THROTTLE,
    StartResponse,
    cancelled,
    ddb_error,
    read_body,
    respond,
    scalar,
    table_and_part,
    table_key_names,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["STATS_PATH", "Emulation", "EmulationMiddleware"]

STATS_PATH: Final = "/_msgcluster/emulation"
_DDB: Final = "DynamoDB_20120810."
_SQS: Final = "AmazonSQS."
_PLAIN_WRITES: Final = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
_READS: Final = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})

Key = tuple[str, str, str]  # table, partition key value, sort key value


class Emulation(msgspec.Struct, kw_only=True, frozen=True):
    """What the emulation does (see the module docstring); 0 turns a part off."""

    transaction_hold: float = 0.025
    partition_wcu: float = 1000.0
    partition_rcu: float = 3000.0
    # Capacity multiplier: the local server serves a few hundred requests a
    # second, so AWS's 1,000 WCU/s per partition is scaled down to be felt.
    scale: float = 0.05
    throttle: bool = True
    latency: float = 0.0
    sqs_pool: int = 100
    duplicate_rate: float = 0.0
    seed: int | None = None


class _Bucket:
    __slots__ = ("last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def take(self, units: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        # An item bigger than a second's worth goes through on a full bucket.
        if self.tokens >= min(units, self.rate):
            self.tokens -= units
            return True
        return False


class _Pooled:
    __slots__ = ("expires", "message", "repeat")

    def __init__(self, message: dict[str, Any], expires: float, repeat: bool) -> None:
        self.message = message
        self.expires = expires
        self.repeat = repeat


class EmulationMiddleware:
    """Wraps moto's WSGI app with :class:`Emulation`'s behaviour."""

    def __init__(self, app: Callable[..., Iterable[bytes]], config: Emulation) -> None:
        self.app = app
        self.config = config
        self._lock = threading.Lock()
        self._held: dict[Key, str] = {}
        self._sizes: dict[Key, int] = {}
        self._write_buckets: dict[tuple[str, str], _Bucket] = {}
        self._read_buckets: dict[tuple[str, str], _Bucket] = {}
        self._pools: dict[str, list[_Pooled]] = defaultdict(list)
        self._key_names: dict[str, tuple[str, str | None]] = {}
        self._random = random.Random(config.seed)
        self.reset()

    # ----------------------------------------------------------------- stats

    def reset(self) -> None:
        with self._lock:
            self.counts: Counter[str] = Counter()
            self.wcu_by_partition: Counter[str] = Counter()
            self.transactions_by_item: Counter[str] = Counter()
            # Per one-second window: where writes and transactions met then.
            self.window_wcu: dict[int, Counter[str]] = defaultdict(Counter)
            self.window_txn: dict[int, Counter[str]] = defaultdict(Counter)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "config": msgspec.to_builtins(self.config),
                "counts": dict(self.counts),
                "wcu": sum(self.wcu_by_partition.values()),
                "partitions_written": len(self.wcu_by_partition),
                "hottest_partitions": self.wcu_by_partition.most_common(5),
                "hottest_transaction_items": self.transactions_by_item.most_common(5),
                "hot_partition_share_at_the_time": _hot_share(self.window_wcu),
                "hot_item_transaction_share_at_the_time": _hot_share(self.window_txn),
            }

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            if environ.get("REQUEST_METHOD") == "POST":
                self.reset()
            return respond(start_response, 200, self.stats())
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith((_DDB, _SQS)):
            return self.app(environ, start_response)
        body = read_body(environ)
        if self.config.latency:
            time.sleep(self.config.latency)
        operation = target.rsplit(".", 1)[-1]
        with self._lock:
            self.counts[f"{'dynamodb' if target.startswith(_DDB) else 'sqs'}.{operation}"] += 1
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return self._forward(environ, body, start_response)
        if target.startswith(_SQS):
            if operation == "ReceiveMessage" and self.config.sqs_pool > 0:
                return self._receive(environ, request, start_response)
            return self._forward(environ, body, start_response)
        return self._dynamodb(environ, operation, request, body, start_response)

    def _forward(
        self, environ: dict[str, Any], body: bytes, start_response: StartResponse
    ) -> Iterable[bytes]:
        environ = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        return self.app(environ, start_response)

    def _call(self, environ: dict[str, Any], body: bytes) -> tuple[str, list[Any], bytes]:
        """The inner app's (status, headers, body) for ``body``."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[Any], exc_info: Any = None) -> None:
            captured.update(status=status, headers=headers)

        chunks = self._forward(environ, body, capture)
        try:
            data = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return captured["status"], captured["headers"], data

    # -------------------------------------------------------------- DynamoDB

    def _dynamodb(
        self,
        environ: dict[str, Any],
        operation: str,
        request: dict[str, Any],
        body: bytes,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        if operation == "TransactWriteItems":
            return self._transaction(environ, request, body, start_response)
        if operation in _PLAIN_WRITES:
            key = self._key_of(request.get("TableName", ""), request, environ)
            with self._lock:
                if key in self._held:
                    self.counts["conflicts.plain_write"] += 1
                    return ddb_error(
                        start_response,
                        "TransactionConflictException",
                        "Transaction is ongoing for the item",
                    )
                if not self._charge([(key, self._size(key, request))], 1):
                    self.counts["throttled.write"] += 1
                    return ddb_error(start_response, *THROTTLE)
            return self._forward(environ, body, start_response)
        if operation == "BatchWriteItem":
            return self._batch_write(environ, request, start_response)
        if operation in _READS and self.config.throttle:
            status, headers, data = self._call(environ, body)
            if status.startswith("200") and not self._charge_read(request, data, environ):
                self.counts["throttled.read"] += 1
                return ddb_error(start_response, *THROTTLE)
            start_response(status, headers)
            return [data]
        return self._forward(environ, body, start_response)

    def _transaction(
        self,
        environ: dict[str, Any],
        request: dict[str, Any],
        body: bytes,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        items = request.get("TransactItems", [])
        keys = [self._key_of(*table_and_part(item), environ) for item in items]
        sizes = [
            self._size(key, next(iter(item.values()), {}))
            for key, item in zip(keys, items, strict=True)
        ]
        owner = uuid.uuid4().hex
        started = time.monotonic()
        with self._lock:
            self.counts["transactions"] += 1
            conflicts = [key in self._held for key in keys]
            if any(conflicts):
                self.counts["conflicts.transaction"] += 1
                reasons = [
                    {
                        "Code": "TransactionConflict",
                        "Message": "Transaction is ongoing for the item",
                    }
                    if conflict
                    else {"Code": "None"}
                    for conflict in conflicts
                ]
                return cancelled(start_response, reasons)
            if not self._charge(list(zip(keys, sizes, strict=True)), 2):
                self.counts["throttled.transaction"] += 1
                reasons = [{"Code": "ThrottlingError", "Message": "Throughput exceeds the limit"}]
                return cancelled(start_response, reasons * len(keys))
            window = self.window_txn[int(time.monotonic())]
            window[_ALL] += 1
            for key in keys:
                self._held[key] = owner
                self.transactions_by_item["|".join(key)] += 1
                window["|".join(key)] += 1
        try:
            status, headers, data = self._call(environ, body)
            remaining = self.config.transaction_hold - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            with self._lock:
                for key in keys:
                    if self._held.get(key) == owner:
                        del self._held[key]
        start_response(status, headers)
        return [data]

    def _batch_write(
        self, environ: dict[str, Any], request: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        keep: dict[str, list[Any]] = {}
        unprocessed: dict[str, list[Any]] = {}
        with self._lock:
            for table, writes in request.get("RequestItems", {}).items():
                for write in writes:
                    part = write.get("PutRequest") or write.get("DeleteRequest") or {}
                    key = self._key_of(table, part, environ)
                    refused = key in self._held or not self._charge(
                        [(key, self._size(key, part))], 1
                    )
                    if refused:
                        self.counts["unprocessed.batch_write"] += 1
                    (unprocessed if refused else keep).setdefault(table, []).append(write)
        if keep:
            body = json.dumps({**request, "RequestItems": keep}).encode()
            status, headers, data = self._call(environ, body)
        else:
            status, headers, data = "200 OK", [], b"{}"
        if not status.startswith("200") or not unprocessed:
            start_response(status, headers)
            return [data]
        answer = json.loads(data or b"{}")
        merged = answer.setdefault("UnprocessedItems", {})
        for table, writes in unprocessed.items():
            merged.setdefault(table, []).extend(writes)
        return respond(start_response, 200, answer)

    def _charge(self, writes: list[tuple[Key, int]], factor: int) -> bool:
        """Take WCU for every write from its partition's bucket (all or none).

        Called with the lock held.
        """
        costs: dict[tuple[str, str], float] = defaultdict(float)
        for (table, part, _), size in writes:
            costs[(table, part)] += factor * max(1, math.ceil(size / 1024))
        if self.config.throttle:
            rate = self.config.partition_wcu * self.config.scale
            buckets = {p: self._write_buckets.setdefault(p, _Bucket(rate)) for p in costs}
            taken: list[tuple[tuple[str, str], float]] = []
            for partition, units in costs.items():
                if not buckets[partition].take(units):
                    for done, back in taken:  # all or none
                        buckets[done].tokens += back
                    return False
                taken.append((partition, units))
        window = self.window_wcu[int(time.monotonic())]
        for (table, part), units in costs.items():
            self.wcu_by_partition[f"{table}|{part}"] += int(units)
            window[f"{table}|{part}"] += int(units)
        return True

    def _charge_read(self, request: dict[str, Any], data: bytes, environ: dict[str, Any]) -> bool:
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            return True
        consistent = bool(request.get("ConsistentRead"))
        found: list[tuple[str, dict[str, Any]]] = []
        table = request.get("TableName", "")
        if "Item" in answer:
            found.append((table, answer["Item"]))
        found += [(table, item) for item in answer.get("Items", [])]
        for name, items in answer.get("Responses", {}).items():
            found += [(name, item) for item in items]
        costs: dict[tuple[str, str], float] = defaultdict(float)
        for name, item in found:
            key = self._key_of(name, {"Key": item}, environ)
            read = max(1, math.ceil(len(json.dumps(item)) / 4096))
            costs[(name, key[1])] += read if consistent else read / 2
        rate = self.config.partition_rcu * self.config.scale
        with self._lock:
            for partition, units in costs.items():
                if not self._read_buckets.setdefault(partition, _Bucket(rate)).take(units):
                    return False
        return True

    def _size(self, key: Key, part: dict[str, Any]) -> int:
        """The item's size: this request's item, or the largest seen for the key."""
        item = part.get("Item")
        size = len(json.dumps(item)) if item else 0
        if "UpdateExpression" in part:
            size = len(json.dumps(part.get("ExpressionAttributeValues", {})))
        known = self._sizes.get(key, 0)
        if size > known and (item or "UpdateExpression" in part):
            self._sizes[key] = size
        return max(size, known, 1)

    def _key_of(self, table: str, part: dict[str, Any], environ: dict[str, Any]) -> Key:
        hash_name, range_name = self._key_names_of(table, environ)
        source = part.get("Key") or part.get("Item") or {}
        return (table, scalar(source.get(hash_name)), scalar(source.get(range_name or "")))

    def _key_names_of(self, table: str, environ: dict[str, Any]) -> tuple[str, str | None]:
        names = self._key_names.get(table)
        if names is None:
            names = table_key_names(table, environ) or ("pk", "rk")
            self._key_names[table] = names
        return names

    # ------------------------------------------------------------------- SQS

    def _receive(
        self, environ: dict[str, Any], request: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        url = str(request.get("QueueUrl", ""))
        wanted = max(1, min(10, int(request.get("MaxNumberOfMessages", 1) or 1)))
        visibility = float(request.get("VisibilityTimeout", 30) or 30)
        now = time.monotonic()
        with self._lock:
            pool = self._pools[url]
            pool[:] = [p for p in pool if p.expires > now]
            fill = len(pool) < self.config.sqs_pool
            waiting = not pool
        status, headers = "200 OK", [("Content-Type", "application/x-amz-json-1.0")]
        if fill:
            inner = {
                **request,
                "MaxNumberOfMessages": 10,
                "AttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
                "MessageSystemAttributeNames": ["All"],
            }
            inner.pop("ReceiveRequestAttemptId", None)
            if not waiting:
                inner["WaitTimeSeconds"] = 0
            status, headers, data = self._call(environ, json.dumps(inner).encode())
            if not status.startswith("200"):
                start_response(status, headers)
                return [data]
            fetched = json.loads(data or b"{}").get("Messages", [])
            expires = time.monotonic() + visibility / 2
            with self._lock:
                pool.extend(_Pooled(m, expires, False) for m in fetched)
        with self._lock:
            self._random.shuffle(pool)
            served, pool[:] = pool[:wanted], pool[wanted:]
            for pooled in served:
                if not pooled.repeat and self._random.random() < self.config.duplicate_rate:
                    pool.append(_Pooled(pooled.message, pooled.expires, True))
                    self.counts["sqs.duplicates"] += 1
        return respond(start_response, 200, {"Messages": [p.message for p in served]}, headers)


_ALL: Final = "*"  # a transactions window's count of transactions


def _hot_share(windows: dict[int, Counter[str]]) -> float:
    """The share of the load that went to whichever key was hottest in its
    one-second window: how much of it met on one key at a time. (For
    transactions: the share of transactions that touched that item.)"""
    total = hottest = 0
    for counter in windows.values():
        top = [n for key, n in counter.most_common(2) if key != _ALL][:1]
        total += counter[_ALL] if _ALL in counter else sum(counter.values())
        hottest += top[0] if top else 0
    return hottest / total if total else 0.0
