"""One cluster at scale on the AWS-behaviour emulation: how consumers meet.

Run: ``.venv/bin/python -m benchmarks.bench_scale`` (defaults: a 10,000-task
cluster per run, consumed by 1, 8, 32, 64 and 128 concurrent consumers, a
20 ms I/O-bound handler; 25 ms transaction hold; about 10 minutes on the
development machine). Options: ``--tasks``, ``--consumers``,
``--handler-ms``, ``--hold-ms``, ``--scale``, ``--layout`` (2, the
default: bucket sets; 1: the layout of clusters created before 2026-12).

The local server runs :class:`msgcluster.local.Emulation`: transactions hold
their items for ``--hold-ms`` (overlapping ones are cancelled as DynamoDB
does), partition throughput is AWS's scaled by ``--scale`` (1,000 WCU/s per
partition key at scale 1), SQS receives are sampled, not in send order.
Consumers are worker slots: ``ceil(C / 16)`` Workers with ``C`` handler
slots in all, sharing one Client. Timing starts after creation, when the
workers start, and stops when the completion callback ran.

Printed per run: tasks/s; counting requests per task (TransactWriteItems
attempts plus UpdateItem calls) and the share of them that met a conflict
(a cancelled transaction or a ``TransactionConflictException``); throttles;
requests per task by API; WCU per task; the hottest partition's share of
the WCU written while consuming, and the hottest item's share of
transactions; and the AWS ceiling derived from
them for one cluster:

* partition ceiling: ``1,000 / (hot share x WCU per task)`` tasks/s, where
  the hot share is the part of the WCU that went to whichever partition key
  was hottest in its one-second window (a key is capped at 1,000 WCU/s, and
  consumers meet where they work at the time, not over the whole run);
* transaction ceiling: ``(1 / hold) / (hot item share x transactions per
  task)`` tasks/s, the hot item share measured the same way (transactions on
  one item run one at a time, each holding it for ``hold``);
* the ceiling is the lower of the two.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from typing import Any

import anyio
import anyio.to_thread

from benchmarks._metrics import CallCounter
from msgcluster import App, Client, Worker
from msgcluster.clusters import _cluster_create
from msgcluster.local import Emulation, LocalAWS

SLOTS_PER_WORKER = 16


async def run(aws: LocalAWS, tasks: int, consumers: int, handler_ms: float) -> dict[str, Any]:
    names = uuid.uuid4().hex[:8]
    settings = {**aws.settings(), "table": f"t-{names}", "bucket": f"b-{names}"}
    async with Client(**settings, concurrency=max(32, consumers)) as mc:
        queue = f"q-{names}"
        url = (await mc.provision([queue], max_receive_count=100, visibility_timeout=30))[queue]
        app = App(mc)
        done = anyio.Event()

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            await anyio.sleep(handler_ms / 1000)

        @app.on_cluster_complete
        async def finished(record: Any, get_globals: Any) -> None:
            done.set()

        await mc.create_message_cluster(url, ({"n": n} for n in range(tasks)))
        await anyio.to_thread.run_sync(lambda: aws.emulation_stats(reset=True))
        calls = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
        count = math.ceil(consumers / SLOTS_PER_WORKER)
        workers = [
            Worker(
                app,
                f"sqs://{queue}",
                concurrency=max(1, consumers // count),
                wait_seconds=1,
                handle_signals=False,
                queue_options={"client": mc.sqs},
            )
            for _ in range(count)
        ]
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
            await done.wait()
            elapsed = time.perf_counter() - start
            for worker in workers:
                worker.stop()
        stats = await anyio.to_thread.run_sync(aws.emulation_stats)
        return _figures(tasks, consumers, elapsed, stats, calls, aws)


def _figures(
    tasks: int, consumers: int, elapsed: float, stats: dict[str, Any], calls: CallCounter, aws: Any
) -> dict[str, Any]:
    counts = stats["counts"]
    transactions = counts.get("transactions", 0)  # every attempt, cancelled ones included
    counting = transactions + counts.get("dynamodb.UpdateItem", 0)
    conflicts = counts.get("conflicts.transaction", 0) + counts.get("conflicts.plain_write", 0)
    held = transactions - conflicts - counts.get("throttled.transaction", 0)
    throttles = sum(v for k, v in counts.items() if k.startswith(("throttled", "unprocessed")))
    wcu = max(stats["wcu"], 1)
    hottest_wcu = stats["hottest_partitions"][0][1] if stats["hottest_partitions"] else 0
    hot_share = hottest_wcu / wcu
    # Where load met at the time (per one-second window), not over the run:
    # consumers that all work on one shard meet there, whatever the total.
    hot_now = stats["hot_partition_share_at_the_time"]
    hot_item_now = stats["hot_item_transaction_share_at_the_time"]
    wcu_per_task = wcu / tasks
    txn_per_task = held / tasks
    hold = aws.emulation.transaction_hold
    partition_ceiling = 1000 / (hot_now * wcu_per_task) if hot_now else math.inf
    # One item serves 1/hold transactions a second.
    txn_ceiling = (1 / hold) / (hot_item_now * txn_per_task) if hot_item_now and hold else math.inf
    return {
        "consumers": consumers,
        "tasks/s": tasks / elapsed,
        "txn/task": transactions / tasks,  # attempts, cancelled ones included
        "counting/task": counting / tasks,
        "conflicts": conflicts / counting if counting else 0.0,
        "throttles": throttles,
        "requests/task": calls.total_per(tasks),
        "by_api": calls.per(tasks),
        "wcu/task": wcu_per_task,
        "hot_partition": hot_share,
        "hot_partition_now": hot_now,
        "hot_item_txns_now": hot_item_now,
        "ceiling": min(partition_ceiling, txn_ceiling),
        "partition_ceiling": partition_ceiling,
        "txn_ceiling": txn_ceiling,
    }


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        "| consumers | tasks/s | counting requests/task (txn) | conflicts | throttles "
        "| requests/task | WCU/task | hottest partition (run; at the time) "
        "| hottest item's txns at the time | AWS ceiling, tasks/s (partition; txn) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['consumers']} | {r['tasks/s']:.0f} | "
            f"{r['counting/task']:.3f} ({r['txn/task']:.3f}) | "
            f"{r['conflicts']:.0%} | {r['throttles']} | {r['requests/task']:.3f} | "
            f"{r['wcu/task']:.2f} | {r['hot_partition']:.0%}; {r['hot_partition_now']:.0%} | "
            f"{r['hot_item_txns_now']:.0%} | "
            f"{r['ceiling']:,.0f} ({r['partition_ceiling']:,.0f}; {r['txn_ceiling']:,.0f}) |"
        )
    print()
    for r in rows:
        apis = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["by_api"].items()))
        print(f"requests per task at {r['consumers']} consumers: {apis}")


async def main(args: argparse.Namespace) -> None:
    _cluster_create.NEW_CLUSTER_LAYOUT = args.layout
    emulation = Emulation(
        transaction_hold=args.hold_ms / 1000, scale=args.scale, sqs_pool=100, duplicate_rate=0.0
    )
    rows = []
    with LocalAWS(emulation=emulation) as aws:
        for consumers in args.consumers:
            rows.append(await run(aws, args.tasks, consumers, args.handler_ms))
            print(f"  done: {consumers} consumers, {rows[-1]['tasks/s']:.0f} tasks/s", flush=True)
    print(
        f"\n{args.tasks:,} tasks per cluster, handler {args.handler_ms:g} ms, transaction hold "
        f"{args.hold_ms:g} ms, partition throughput x{args.scale:g}, fan-in layout "
        f"{args.layout}\n"
    )
    _print(rows)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--handler-ms", type=float, default=20.0)
    parser.add_argument("--hold-ms", type=float, default=25.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--layout", type=int, choices=[1, 2], default=2)
    anyio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
