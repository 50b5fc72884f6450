"""A naive, sequential message cluster as documented: the floor for cluster benchmarks.

Run: ``.venv/bin/python -m benchmarks.naive_cluster [--tasks 100 200 250] [--note-bytes 200]``

:func:`run_naive_cluster` does what a straightforward user of the documented
TypeScript library (``createMessageCluster``, ``readSQSRecord``,
``markComplete``, ``onClusterComplete``) does, with raw aiobotocore calls, one
request at a time:

* create: PutObject the globals ``SQSMessage$<uuid>-globals.json``; PutItem the
  cluster item with *every* task in its ``incompleteTasks`` list (and an empty
  ``completedTasks`` list); per task PutItem its record, then SendMessage;
  UpdateItem the cluster to IN PROGRESS;
* consume (one consumer, like a Lambda with batch size 10): ReceiveMessage;
  per message GetItem the task record (``isComplete``), UpdateItem it COMPLETE
  (``markComplete``), GetItem the cluster (consistent) and UpdateItem it to move
  the task from ``incompleteTasks`` to ``completedTasks`` (read-modify-write
  of both lists, conditional on ``updatedAt``, retried on a failed condition),
  DeleteMessage; when ``incompleteTasks`` is empty, UpdateItem the cluster
  COMPLETE and run the callback (``onClusterComplete``: GetObject the globals).

**WCU per task grows with cluster size**: a DynamoDB write costs 1 WCU per KB
of the *whole* item (the larger of the item before and after), and every task
completion rewrites the cluster item, which carries every task in its two
arrays. A cluster of n tasks of ~280 bytes therefore costs ~0.28 n WCU per
task, O(n^2) in all, and one partition key takes every one of those writes.
Its consistent GetItem costs 1 RCU per 4 KB the same way. At about 1,450 such
tasks the cluster item passes DynamoDB's 400 KB item limit, and the documented
design cannot create the cluster at all.

moto 5.2.5, and what it does to these figures:

* It reports a constant ``ConsumedCapacity`` (1.0 per PutItem, 0.5 per
  UpdateItem, whatever the item size), so ``wcu`` (its sum, as returned) is
  really a count of writes. ``wcu_aws`` / ``rcu_aws`` are computed from the
  item sizes with DynamoDB's billing rules: those are the figures that transfer.
* It enforces an item size limit (``ValidationException: Item size has exceeded
  the maximum allowed size``; on UpdateItem ``Item size to update has ...``) at
  405,000 bytes of its own measure (attribute names + values, without
  DynamoDB's list/map overheads). A rejected cluster write is recorded
  (``item_limit_hit``, ``limit_note``) and ends the run, as it would end a real
  user's; so does a write moto accepted whose DynamoDB size is over 400 KB.
* Its UpdateItem check counts an attribute replaced by SET twice (old and new
  value), so it rejects the SET of the task arrays once the item is over
  ~200 KB, where DynamoDB would not. That write, and every later cluster write
  of the run, is then made as a PutItem of the same item with the same
  condition (``moto_update_fallback``): WCU are unchanged, requests are one
  (the rejected UpdateItem) more, and the API mix shifts to PutItem.
* It serialises every response attribute value through its model-driven
  serialiser at ~0.14 ms each, so each GetItem of the cluster costs ~0.9 ms per
  task in it on the server, and the naive run slows as O(n^2) in wall time far
  more than it would on AWS: the default sizes (100, 200, 250) take ~3 minutes;
  ``--tasks 500 1000`` take ~5 and ~20 minutes more. Client CPU per task and
  requests / WCU per task do not depend on that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from benchmarks._metrics import CallCounter
from msgcluster import Client
from msgcluster.local import LocalAWS

#: DynamoDB's maximum item size: 400 KB, counted as 400 * 1024 bytes.
DYNAMODB_ITEM_LIMIT = 400 * 1024
RETENTION_SECONDS = 30 * 24 * 3600
#: Consecutive empty receives (1 s long polls) before the consumer gives up.
MAX_EMPTY_RECEIVES = 30
PREFIX = "SQSMessage$"


@dataclass
class NaiveResult:
    n_tasks: int
    create_wall: float = 0.0
    consume_wall: float = 0.0
    #: Process CPU seconds for the whole run (this process only: moto is a child).
    cpu: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    #: Sum of ConsumedCapacity.CapacityUnits as moto returns it (a constant per write).
    wcu: float = 0.0
    #: WCU as DynamoDB bills them: per write, ceil(max(old, new item bytes) / 1 KB).
    wcu_aws: float = 0.0
    #: RCU as DynamoDB bills them: per GetItem, ceil(bytes / 4 KB), halved unless consistent.
    rcu_aws: float = 0.0
    #: Largest cluster item written, in bytes by DynamoDB's item-size rules (see item_size).
    max_item_bytes: int = 0
    item_limit_hit: bool = False
    limit_note: str = ""
    #: moto falsely rejected a cluster UpdateItem; cluster writes were then PutItems.
    moto_update_fallback: bool = False
    callback_runs: int = 0

    @property
    def wall(self) -> float:
        return self.create_wall + self.consume_wall


# ----------------------------------------------------------------- item sizes


def _number_size(text: str) -> int:
    digits = text.lstrip("+-").replace(".", "").split("e")[0].split("E")[0]
    digits = digits.strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1 + text.startswith("-")


def value_size(value: dict[str, Any]) -> int:
    """Bytes of one AttributeValue by DynamoDB's documented item-size rules.

    Strings and binary: their bytes; numbers: ~1 byte per 2 significant digits
    + 1; booleans and null: 1; lists and maps: 3 bytes + 1 per element + the
    elements (map entries include their names).
    """
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in v.items())
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(_number_size(s) for s in v)
    if kind == "BS":
        return sum(len(b) for b in v)
    raise ValueError(f"unknown AttributeValue type {kind!r}")


def item_size(item: dict[str, dict[str, Any]]) -> int:
    """Item bytes as DynamoDB counts them: sum of attribute name + value sizes."""
    return sum(len(name.encode()) + value_size(v) for name, v in item.items())


def write_units(*sizes: int) -> int:
    """WCU of one standard write: 1 per KB (rounded up) of the larger item image."""
    return max(1, math.ceil(max(sizes) / 1024))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / 4096))
    return float(units) if consistent else units / 2


# ------------------------------------------------------------------ marshalling


def to_av(value: Any) -> dict[str, Any]:
    """Marshal plain JSON-like data to a DynamoDB AttributeValue (like DocumentClient)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {str(k): to_av(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_av(v) for v in value]}
    raise TypeError(f"cannot marshal {type(value).__name__}")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def task_meta(i: int, note_bytes: int = 200) -> dict[str, Any]:
    """One task's meta: the documented example's ``{reqId}`` plus a filler note.

    With the default 200-byte note a task takes ~280 bytes of the cluster item.
    """
    return {"reqId": f"req-{i:06d}", "note": "x" * note_bytes}


class _ItemLimitHit(Exception):
    pass


def _is_size_error(err: ClientError) -> bool:
    error = err.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "maximum allowed size" in error.get(
        "Message", ""
    )


# --------------------------------------------------------------------- the run


class _NaiveCluster:
    def __init__(
        self, sqs: Any, ddb: Any, s3: Any, table: str, bucket: str, url: str, result: NaiveResult
    ) -> None:
        self.sqs, self.ddb, self.s3 = sqs, ddb, s3
        self.table, self.bucket, self.url = table, bucket, url
        self.result = result
        self.cluster_key: dict[str, Any] = {}
        self.globals_key = ""

    # DynamoDB calls, each accounting WCU (moto's and DynamoDB's) and RCU.

    async def put(
        self,
        item: dict[str, Any],
        *,
        cluster: bool = False,
        before: int = 0,
        prev: dict[str, Any] | None = None,
    ) -> None:
        """PutItem; ``before`` is the size of the item it replaces, ``prev`` its updatedAt."""
        size = item_size(item)
        if cluster:
            self._track_cluster_size(size)
        condition: dict[str, Any] = {}
        if prev is not None:
            condition = {
                "ConditionExpression": "updatedAt = :prev",
                "ExpressionAttributeValues": {":prev": prev},
            }
        try:
            resp = await self.ddb.put_item(
                TableName=self.table, Item=item, ReturnConsumedCapacity="TOTAL", **condition
            )
        except ClientError as err:
            if cluster and _is_size_error(err):
                self._limit(f"PutItem cluster rejected by moto at {size:,} bytes: {err}")
            raise
        self.result.wcu += resp.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)
        self.result.wcu_aws += write_units(before, size)
        if cluster:
            self._limit_if_over_aws(size, "PutItem cluster")

    async def update(
        self,
        key: dict[str, Any],
        before: int,
        after: int,
        *,
        cluster_item: dict[str, Any] | None = None,
        prev: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        """UpdateItem of an item of ``before`` bytes to ``after`` bytes.

        ``cluster_item`` (cluster writes): the whole item after the update, and
        ``prev`` the updatedAt the write is conditional on. moto 5.2.5 counts an
        attribute replaced by SET twice (old and new value) against its size
        limit, so it rejects SET of a large list on items of more than ~200 KB
        that DynamoDB accepts. On such a false rejection the same write is made
        as a (conditional) PutItem of ``cluster_item``, for this write and every
        later cluster write of the run (``moto_update_fallback``).
        """
        if cluster_item is not None:
            self._track_cluster_size(after)
            if self.result.moto_update_fallback:
                await self.put(cluster_item, cluster=True, before=before, prev=prev)
                return
        if prev is not None:
            kw["ConditionExpression"] = "updatedAt = :prev"
            kw["ExpressionAttributeValues"] = {**kw["ExpressionAttributeValues"], ":prev": prev}
        try:
            resp = await self.ddb.update_item(
                TableName=self.table, Key=key, ReturnConsumedCapacity="TOTAL", **kw
            )
        except ClientError as err:
            if cluster_item is not None and _is_size_error(err):
                if after > DYNAMODB_ITEM_LIMIT:
                    self._limit(f"UpdateItem cluster rejected by moto at {after:,} bytes: {err}")
                self.result.moto_update_fallback = True
                await self.put(cluster_item, cluster=True, before=before, prev=prev)
                return
            raise
        self.result.wcu += resp.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)
        self.result.wcu_aws += write_units(before, after)
        if cluster_item is not None:
            self._limit_if_over_aws(after, "UpdateItem cluster")

    async def get(self, key: dict[str, Any], *, consistent: bool = False) -> dict[str, Any]:
        resp = await self.ddb.get_item(TableName=self.table, Key=key, ConsistentRead=consistent)
        item: dict[str, Any] = resp.get("Item", {})
        self.result.rcu_aws += read_units(item_size(item), consistent)
        return item

    def _track_cluster_size(self, size: int) -> None:
        self.result.max_item_bytes = max(self.result.max_item_bytes, size)

    def _limit_if_over_aws(self, size: int, where: str) -> None:
        if size > DYNAMODB_ITEM_LIMIT:
            # moto accepted it; DynamoDB would have rejected it, so stop here too.
            self._limit(f"{where}: moto accepted {size:,} bytes, over DynamoDB's 400 KB")

    def _limit(self, note: str) -> None:
        self.result.item_limit_hit = True
        self.result.limit_note = note
        raise _ItemLimitHit(note)

    # createMessageCluster

    async def create(self, tasks: list[Any], globals_: Any, meta: Any) -> None:
        ident = str(uuid.uuid4())
        pk, rk = f"{PREFIX}{ident}", f"{PREFIX}cluster"
        self.cluster_key = {"pk": {"S": pk}, "rk": {"S": rk}}
        self.globals_key = f"{pk}-globals.json"
        await self.s3.put_object(
            Bucket=self.bucket,
            Key=self.globals_key,
            Body=json.dumps(globals_).encode(),
            ContentType="application/json",
        )
        entries = [{"id": str(uuid.uuid4()), "type": "task", "meta": t} for t in tasks]
        now = now_iso()
        expires = str(int(time.time()) + RETENTION_SECONDS)
        bucket_params = {"Bucket": self.bucket, "Key": self.globals_key}
        cluster = {
            **self.cluster_key,
            "type": {"S": "cluster"},
            "url": {"S": self.url},
            "status": {"S": "PRE FLIGHT"},
            "statusCode": {"N": "0"},
            "startedAt": {"S": now},
            "completedAt": {"NULL": True},
            "completedTasks": {"L": []},
            "incompleteTasks": {"L": [to_av(e) for e in entries]},
            "bucketParams": to_av(bucket_params),
            "meta": to_av(meta),
            "updatedAt": {"S": now},
            "expiresAt": {"N": expires},
        }
        await self.put(cluster, cluster=True)
        for entry in entries:
            body = json.dumps(
                {
                    "pKey": pk,
                    "rKey": rk,
                    "id": entry["id"],
                    "task": entry["meta"],
                    "type": "task",
                    "bucketParams": bucket_params,
                }
            )
            now = now_iso()
            await self.put(
                {
                    "pk": {"S": f"{PREFIX}{entry['id']}"},
                    "rk": {"S": f"{PREFIX}task"},
                    "id": {"S": entry["id"]},
                    "url": {"S": self.url},
                    "type": {"S": "task"},
                    "body": {"S": body},
                    "status": {"S": "PRE FLIGHT"},
                    "statusCode": {"N": "0"},
                    "startedAt": {"S": now},
                    "completedAt": {"NULL": True},
                    "updatedAt": {"S": now},
                    "expiresAt": {"N": expires},
                    "consumptionCount": {"N": "0"},
                }
            )
            await self.sqs.send_message(QueueUrl=self.url, MessageBody=body)
        before = item_size(cluster)
        cluster.update(
            status={"S": "IN PROGRESS"}, statusCode={"N": "100"}, updatedAt={"S": now_iso()}
        )
        await self.update(
            self.cluster_key,
            before,
            item_size(cluster),
            cluster_item=cluster,
            UpdateExpression="SET #s = :s, statusCode = :c, updatedAt = :u",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":s": cluster["status"],
                ":c": cluster["statusCode"],
                ":u": cluster["updatedAt"],
            },
        )

    # one Lambda invocation per received batch

    async def consume(self, callback: Callable[[dict[str, Any], Any], Any]) -> None:
        empty = 0
        while self.result.callback_runs == 0:
            resp = await self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            messages = resp.get("Messages", [])
            if not messages:
                empty += 1
                if empty >= MAX_EMPTY_RECEIVES:
                    raise RuntimeError("the queue is empty but the cluster never completed")
                continue
            empty = 0
            for message in messages:
                await self.process(message, callback)

    async def process(self, message: dict[str, Any], callback: Callable[..., Any]) -> None:
        body = json.loads(message["Body"])  # readSQSRecord
        task_id = body["id"]
        task_key = {"pk": {"S": f"{PREFIX}{task_id}"}, "rk": {"S": f"{PREFIX}task"}}
        record = await self.get(task_key)  # isComplete
        if record.get("status", {}).get("S") != "COMPLETE":
            # (the task's work would run here)
            # markComplete: the task record, then the cluster record.
            now = now_iso()
            before = item_size(record)
            after = {
                **record,
                "status": {"S": "COMPLETE"},
                "statusCode": {"N": "200"},
                "completedAt": {"S": now},
                "updatedAt": {"S": now},
            }
            await self.update(
                task_key,
                before,
                item_size(after),
                UpdateExpression="SET #s = :s, statusCode = :c, completedAt = :t, updatedAt = :t",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":s": {"S": "COMPLETE"},
                    ":c": {"N": "200"},
                    ":t": {"S": now},
                },
            )
            cluster = await self.move_to_completed(task_id)
            if cluster is not None and not cluster["incompleteTasks"]["L"]:
                await self.complete_cluster(cluster, callback)
        await self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    async def move_to_completed(self, task_id: str) -> dict[str, Any] | None:
        """Read-modify-write of both arrays; retried while ``updatedAt`` moved under us."""
        while True:
            cluster = await self.get(self.cluster_key, consistent=True)
            incomplete = cluster["incompleteTasks"]["L"]
            position = next(
                (i for i, t in enumerate(incomplete) if t["M"]["id"]["S"] == task_id), None
            )
            if position is None:
                return None  # already moved
            before = item_size(cluster)
            task = incomplete.pop(position)
            task["M"]["status"] = {"S": "COMPLETE"}
            cluster["completedTasks"]["L"].append(task)
            previous, cluster["updatedAt"] = cluster["updatedAt"], {"S": now_iso()}
            try:
                await self.update(
                    self.cluster_key,
                    before,
                    item_size(cluster),
                    cluster_item=cluster,
                    prev=previous,
                    UpdateExpression=(
                        "SET incompleteTasks = :inc, completedTasks = :done, updatedAt = :u"
                    ),
                    ExpressionAttributeValues={
                        ":inc": cluster["incompleteTasks"],
                        ":done": cluster["completedTasks"],
                        ":u": cluster["updatedAt"],
                    },
                )
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    continue
                raise
            return cluster

    async def complete_cluster(self, cluster: dict[str, Any], callback: Callable[..., Any]) -> None:
        now = now_iso()
        before = item_size(cluster)
        cluster.update(
            status={"S": "COMPLETE"},
            statusCode={"N": "200"},
            completedAt={"S": now},
            updatedAt={"S": now},
        )
        await self.update(
            self.cluster_key,
            before,
            item_size(cluster),
            cluster_item=cluster,
            UpdateExpression="SET #s = :s, statusCode = :c, completedAt = :t, updatedAt = :t",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":s": {"S": "COMPLETE"},
                ":c": {"N": "200"},
                ":t": {"S": now},
            },
        )
        # onClusterComplete(key, callback): callback(cluster, globals)
        obj = await self.s3.get_object(Bucket=self.bucket, Key=self.globals_key)
        async with obj["Body"] as stream:
            globals_ = json.loads(await stream.read())
        await callback(cluster, globals_)
        self.result.callback_runs += 1


async def run_naive_cluster(
    aws: LocalAWS,
    table: str,
    bucket: str,
    queue_url: str,
    n_tasks: int,
    *,
    make_task: Callable[[int], Any] = task_meta,
) -> NaiveResult:
    """Create a cluster of ``n_tasks`` and consume it, the documented way, sequentially."""
    result = NaiveResult(n_tasks=n_tasks)
    tasks = [make_task(i) for i in range(n_tasks)]
    completed: list[str] = []

    async def on_complete(cluster: dict[str, Any], globals_: Any) -> None:
        completed.append(cluster["pk"]["S"])

    session = AioSession()
    kwargs = aws.client_kwargs()
    async with (
        session.create_client("sqs", **kwargs) as sqs,
        session.create_client("dynamodb", **kwargs) as ddb,
        session.create_client("s3", **kwargs) as s3,
    ):
        counter = CallCounter().attach(sqs, ddb, s3)
        naive = _NaiveCluster(sqs, ddb, s3, table, bucket, queue_url, result)
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            try:
                await naive.create(tasks, {"initial": "initial"}, {"userId": "123456789012"})
            finally:
                result.create_wall = time.perf_counter() - start
            start = time.perf_counter()
            try:
                await naive.consume(on_complete)
            finally:
                result.consume_wall = time.perf_counter() - start
        except _ItemLimitHit:
            pass
        result.cpu = time.process_time() - cpu
        counter.detach(sqs, ddb, s3)
    result.calls = dict(sorted(counter.calls.items()))
    return result


# ------------------------------------------------------------------------ main


def report(r: NaiveResult) -> str:
    n = r.n_tasks
    total = sum(r.calls.values())
    calls = ", ".join(f"{k} {v / n:.2f}" for k, v in r.calls.items())
    rate = f"{n / r.wall:,.1f}" if r.callback_runs else "—"
    limit = f"**hit**: {r.limit_note}" if r.item_limit_hit else "no"
    if r.moto_update_fallback:
        limit += " (moto rejected SET of the arrays below it: PutItem used)"
    return (
        f"| {n:,} | {total / n:.2f} ({calls}) | {r.wcu / n:.2f} | {r.wcu_aws / n:,.1f} | "
        f"{r.rcu_aws / n:,.1f} | {r.max_item_bytes:,} | {limit} | {r.cpu / n * 1e6:,.0f} | "
        f"{rate} | {r.callback_runs} |"
    )


async def main(sizes: list[int], note_bytes: int) -> None:
    table = bucket = "bench-naive-cluster"
    with LocalAWS() as aws:
        async with Client(table=table, bucket=bucket, **aws.settings()) as mc:
            urls = await mc.provision(queues=[f"naive-cluster-{i}" for i in range(len(sizes))])
        results = []
        for i, n in enumerate(sizes):
            results.append(
                await run_naive_cluster(
                    aws,
                    table,
                    bucket,
                    urls[f"naive-cluster-{i}"],
                    n,
                    make_task=lambda j: task_meta(j, note_bytes),
                )
            )
            r = results[-1]
            print(
                f"naive cluster of {n:,}: create {r.create_wall:.1f} s, "
                f"consume {r.consume_wall:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| tasks | AWS requests / task (by API) | WCU / task (moto) | WCU / task (DynamoDB) "
        "| RCU / task (DynamoDB) | max cluster item bytes | 400 KB limit | client CPU µs / task "
        "| tasks/s | callback runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(report(r))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 200, 250])
    parser.add_argument("--note-bytes", type=int, default=200, help="filler in each task's meta")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.note_bytes))
