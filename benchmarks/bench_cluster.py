"""Message clusters end to end: msgcluster against the naive documented design.

Run: ``.venv/bin/python -m benchmarks.bench_cluster`` (defaults: msgcluster at
250, 1,000 and 10,000 tasks, naive at 250, a 100,000-task creation in a
child process; about 5 minutes on the development machine). Options:
``--tasks``, ``--naive-tasks``, ``--consumers``, ``--create-tasks``.

Each run creates a cluster with ``create_message_cluster`` (tasks from a
generator), consumes it with ``--consumers`` receive loops sharing one
``Client`` (receive 10, ``is_complete_batch``, handler, one
``mark_complete_batch``, ``on_cluster_complete``, ``DeleteMessageBatch``,
as the worker runtime does) and stops when the completion callback has run.
The naive run (:mod:`benchmarks.naive_cluster`) is the documented design
done the documented way, on the same server, in the same process.

Printed per task: AWS requests by API; write units (WCU) as DynamoDB bills
them, computed from each written item's size (moto's ``ConsumedCapacity`` is
a constant 1.0 per PutItem / 0.5 per UpdateItem whatever the size, so it is
printed too but says nothing); client CPU; tasks/s and its ratio to naive at
the same size. The creation run prints peak traced memory and max RSS of a
process that streams 100,000 tasks into one cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from benchmarks._metrics import CallCounter, max_rss_mb
from benchmarks.naive_cluster import (
    NaiveResult,
    item_size,
    read_units,
    run_naive_cluster,
    task_meta,
    write_units,
)
from msgcluster import Client, MessageClusterRecord, ParsedRecord, RecordType
from msgcluster.local import LocalAWS

CONCURRENCY = 32
#: Ops whose requests accept ReturnConsumedCapacity (to sum moto's figure).
CAPACITY_OPS = {
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "GetItem",
    "BatchWriteItem",
    "BatchGetItem",
    "TransactWriteItems",
    "Query",
}


# ------------------------------------------------------------ capacity meter


def _kind(key: dict[str, Any]) -> str:
    rk = key.get("rk", {}).get("S", "")
    if rk.startswith("SQSMessage$task$"):
        return "task"
    return rk.removeprefix("SQSMessage$") or "other"


class CapacityMeter:
    """Write and read units of every DynamoDB request a client makes.

    Requests are recorded as they are made (cheap: a reference), and costed
    after the run: items written whole (BatchWriteItem, PutItem) by their own
    size; items updated in place by the final size of an item of that kind
    (the larger of before and after images is the one billed, and these
    items only grow), read after the run. Transactional writes cost twice.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.moto_wcu = 0.0
        self.moto_rcu = 0.0

    def attach(self, ddb: Any) -> CapacityMeter:
        ddb.meta.events.register("before-parameter-build.dynamodb.*", self._before)
        ddb.meta.events.register("after-call.dynamodb.*", self._after)
        return self

    def detach(self, ddb: Any) -> None:
        ddb.meta.events.unregister("before-parameter-build.dynamodb.*", self._before)
        ddb.meta.events.unregister("after-call.dynamodb.*", self._after)

    def _before(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in CAPACITY_OPS:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")
        self.requests.append((model.name, params))

    def _after(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        for entry in entries:
            units = float(entry.get("CapacityUnits", 0.0))
            write = model.name not in ("GetItem", "BatchGetItem", "Query")
            if write:
                self.moto_wcu += units
            else:
                self.moto_rcu += units

    def reset(self) -> None:
        self.requests.clear()
        self.moto_wcu = self.moto_rcu = 0.0

    def units(self, sizes: dict[str, int]) -> tuple[float, float]:
        """(WCU, RCU) by DynamoDB's billing rules; ``sizes``: bytes per item kind."""
        wcu = rcu = 0.0

        def size_of(key: dict[str, Any]) -> int:
            return sizes.get(_kind(key), 1)

        for op, params in self.requests:
            if op == "BatchWriteItem":
                for writes in params["RequestItems"].values():
                    for w in writes:
                        put = w.get("PutRequest")
                        wcu += write_units(item_size(put["Item"])) if put else 1
            elif op == "PutItem":
                wcu += write_units(item_size(params["Item"]))
            elif op in ("UpdateItem", "DeleteItem"):
                wcu += write_units(size_of(params["Key"]))
            elif op == "TransactWriteItems":
                for entry in params["TransactItems"]:
                    ((_op, body),) = entry.items()
                    item = body.get("Item")
                    size = item_size(item) if item else size_of(body["Key"])
                    wcu += 2 * write_units(size)
            elif op == "GetItem":
                rcu += read_units(size_of(params["Key"]), bool(params.get("ConsistentRead")))
            elif op == "BatchGetItem":
                for request in params["RequestItems"].values():
                    consistent = bool(request.get("ConsistentRead"))
                    for key in request["Keys"]:
                        rcu += read_units(size_of(key), consistent)
        return wcu, rcu


async def item_sizes(mc: Client, cluster_id: str) -> dict[str, int]:
    """Final sizes of the cluster item, its first shard and its largest sampled task."""
    table = mc.settings.table
    pk = f"SQSMessage${cluster_id}"
    sizes: dict[str, int] = {}
    got = await mc.dynamodb.get_item(
        TableName=table, Key={"pk": {"S": pk}, "rk": {"S": "SQSMessage$cluster"}}
    )
    sizes["cluster"] = item_size(got["Item"])
    shard_pk = f"{pk}$shard$0"
    got = await mc.dynamodb.get_item(
        TableName=table, Key={"pk": {"S": shard_pk}, "rk": {"S": "SQSMessage$shard"}}
    )
    sizes["shard"] = item_size(got["Item"])
    page = await mc.dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND begins_with(rk, :task)",
        ExpressionAttributeValues={":pk": {"S": shard_pk}, ":task": {"S": "SQSMessage$task$"}},
        Limit=200,
    )
    sizes["task"] = max(item_size(item) for item in page["Items"])
    return sizes


# --------------------------------------------------------------------- the run


@dataclass
class Run:
    n_tasks: int
    create_wall: float = 0.0
    consume_wall: float = 0.0
    cpu: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    wcu: float = 0.0
    rcu: float = 0.0
    moto_wcu: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    callback_runs: int = 0
    completed: int = 0

    @property
    def wall(self) -> float:
        return self.create_wall + self.consume_wall


async def consume(mc: Client, url: str, state: dict[str, Any]) -> None:
    """One consumer loop: what the worker runtime does per receive, reduced."""

    async def callback(cluster: MessageClusterRecord, get_globals: Any) -> None:
        state["callbacks"] += 1
        state["completed"] = cluster.completed
        state["done"].set()

    async def handle(record: ParsedRecord[Any]) -> None:
        assert record.task is not None  # the work itself: nothing, to time the library

    done: anyio.Event = state["done"]
    while not done.is_set():
        response = await mc.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=120
        )
        messages = response.get("Messages", [])
        if not messages:
            continue
        records = [mc.read_sqs_record(m) for m in messages]
        complete = await mc.is_complete_batch(records)
        todo = [r for r, c in zip(records, complete, strict=True) if not c]
        ok = []
        for record in todo:
            if record.type is not RecordType.CLUSTER:
                await handle(record)
                ok.append(record)
        await mc.mark_complete_batch(ok)
        for key in {r.cluster_key for r in ok if r.cluster_key is not None}:
            await mc.on_cluster_complete(key, callback)
        for record in todo:
            if record.type is RecordType.CLUSTER:
                await mc.on_cluster_complete(record, callback)
        await mc.sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


def tasks(n: int) -> Iterator[dict[str, Any]]:
    return (task_meta(i) for i in range(n))


async def run_cluster(mc: Client, url: str, n: int, consumers: int) -> Run:
    run = Run(n_tasks=n)
    calls = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
    meter = CapacityMeter().attach(mc.dynamodb)
    cluster_id = f"bench-{n}-{uuid.uuid4().hex[:8]}"
    state: dict[str, Any] = {"callbacks": 0, "completed": 0, "done": anyio.Event()}
    cpu = time.process_time()
    start = time.perf_counter()
    key = await mc.create_message_cluster(
        url, tasks(n), meta={"userId": "123456789012"}, globals={"initial": "initial"},
        cluster_id=cluster_id,
    )  # fmt: skip
    run.create_wall = time.perf_counter() - start
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume, mc, url, state)
    run.consume_wall = time.perf_counter() - start
    run.cpu = time.process_time() - cpu
    calls.detach(mc.sqs, mc.dynamodb, mc.s3)
    meter.detach(mc.dynamodb)
    run.calls = dict(sorted(calls.calls.items()))
    run.sizes = await item_sizes(mc, cluster_id)
    run.wcu, run.rcu = meter.units(run.sizes)
    run.moto_wcu = meter.moto_wcu
    run.callback_runs = state["callbacks"]
    run.completed = state["completed"]
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert record.completed == n, record.completed
    assert record.failed == 0, record.failed
    assert run.callback_runs == 1, run.callback_runs
    return run


# ---------------------------------------------------------- creation at scale


async def create_only(n: int) -> dict[str, Any]:
    """Stream ``n`` tasks into one cluster; report memory of this process."""
    with LocalAWS() as aws:
        async with Client(
            table="bench-cluster-create",
            bucket="bench-cluster-create",
            concurrency=CONCURRENCY,
            **aws.settings(),
        ) as mc:
            urls = await mc.provision(queues=["create"])
            calls = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
            rss_before = max_rss_mb()
            tracemalloc.start()
            cpu = time.process_time()
            start = time.perf_counter()
            key = await mc.create_message_cluster(
                urls["create"], tasks(n), globals={"initial": "initial"}
            )
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            record = await mc.get_message_cluster(key, consistent_read=True)
            assert record.total == n, record.total
    return {
        "tasks": n,
        "wall": wall,
        "cpu": cpu,
        "peak_traced_mb": peak / 1e6,
        "rss_before_mb": rss_before,
        "max_rss_mb": max_rss_mb(),
        "calls": dict(sorted(calls.calls.items())),
    }


def create_in_child(n: int) -> dict[str, Any]:
    """The creation run in a fresh process, so its RSS is its own."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_cluster", "--create-only", str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------- reports


def _per_api(calls: dict[str, int], n: int) -> str:
    return ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(calls.items()))


def report_ours(r: Run, naive_rate: dict[int, float]) -> str:
    n = r.n_tasks
    total = sum(r.calls.values())
    rate = n / r.wall
    ratio = f"{rate / naive_rate[n]:.0f}x" if n in naive_rate else "—"
    return (
        f"| msgcluster | {n:,} | {total / n:.3f} ({_per_api(r.calls, n)}) | "
        f"{r.wcu / n:.2f} | {r.rcu / n:.2f} | {r.moto_wcu / n:.2f} | "
        f"{r.sizes['cluster']:,} / {r.sizes['shard']:,} / {r.sizes['task']:,} | "
        f"{r.cpu / n * 1e6:,.0f} | {rate:,.0f} | {ratio} | {r.callback_runs} |"
    )


def report_naive(r: NaiveResult) -> str:
    n = r.n_tasks
    total = sum(r.calls.values())
    rate = f"{n / r.wall:,.1f}" if r.callback_runs else "— (item limit)"
    return (
        f"| naive | {n:,} | {total / n:.3f} ({_per_api(r.calls, n)}) | "
        f"{r.wcu_aws / n:,.2f} | {r.rcu_aws / n:,.2f} | {r.wcu / n:.2f} | "
        f"{r.max_item_bytes:,} (cluster) | {r.cpu / n * 1e6:,.0f} | {rate} | 1x | "
        f"{r.callback_runs} |"
    )


async def main(sizes: list[int], naive_sizes: list[int], consumers: int, create_n: int) -> None:
    ours: list[Run] = []
    naive: list[NaiveResult] = []
    with LocalAWS() as aws:
        async with Client(
            table="bench-cluster", bucket="bench-cluster", concurrency=CONCURRENCY, **aws.settings()
        ) as mc:
            names = [f"ours-{i}" for i in range(len(sizes))]
            names += [f"naive-{i}" for i in range(len(naive_sizes))]
            urls = await mc.provision(queues=names)
            for i, n in enumerate(sizes):
                ours.append(await run_cluster(mc, urls[f"ours-{i}"], n, consumers))
                r = ours[-1]
                print(
                    f"msgcluster cluster of {n:,}: create {r.create_wall:.1f} s, "
                    f"consume {r.consume_wall:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            for i, n in enumerate(naive_sizes):
                url = urls[f"naive-{i}"]
                naive.append(await run_naive_cluster(aws, "bench-cluster", "bench-cluster", url, n))
                r2 = naive[-1]
                print(
                    f"naive cluster of {n:,}: create {r2.create_wall:.1f} s, "
                    f"consume {r2.consume_wall:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    naive_rate = {r.n_tasks: r.n_tasks / r.wall for r in naive if r.callback_runs}
    print(
        f"\nEnd to end (create -> consume -> callback), {consumers} consumer loops for msgcluster, "
        "one sequential consumer for naive:\n"
    )
    print(
        "| run | tasks | AWS requests / task (by API) | WCU / task (DynamoDB) "
        "| RCU / task (DynamoDB) | WCU / task (moto) | item bytes (cluster / shard / task) "
        "| client CPU µs / task | tasks/s | ratio to naive | callback runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in ours:
        print(report_ours(r, naive_rate))
    for r2 in naive:
        print(report_naive(r2))
    if create_n:
        c = create_in_child(create_n)
        n = c["tasks"]
        print(f"\nCreation of one {n:,}-task cluster (fresh process):\n")
        print(
            "| tasks | AWS requests / task (by API) | client CPU µs / task (traced) "
            "| tasks/s (traced) | peak traced MB | max RSS MB (before -> after) |"
        )
        print("|---|---|---|---|---|---|")
        total = sum(c["calls"].values())
        print(
            f"| {n:,} | {total / n:.3f} ({_per_api(c['calls'], n)}) | "
            f"{c['cpu'] / n * 1e6:,.0f} | {n / c['wall']:,.0f} | {c['peak_traced_mb']:.1f} | "
            f"{c['rss_before_mb']:.0f} -> {c['max_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[250, 1_000, 10_000])
    parser.add_argument("--naive-tasks", type=int, nargs="*", default=[250])
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--create-tasks", type=int, default=100_000, help="0: skip")
    parser.add_argument("--create-only", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.create_only:
        print(json.dumps(asyncio.run(create_only(args.create_only))))
    else:
        asyncio.run(main(args.tasks, args.naive_tasks, args.consumers, args.create_tasks))
