"""dynamodb:// against sqs:// on the same local server: throughput and requests per message.

Run: ``.venv/bin/python -m benchmarks.bench_dynamodb_queue`` (about a minute
on the development machine). Options: ``--messages`` (per run, default
500), ``--consumers`` (default 1 4 16), ``--shards`` (dynamodb:// shards per
run, default 4; a 16-consumer row with 16 shards is added).

Each run uses a fresh queue on the embedded local AWS (moto in a child
process, so process CPU is the client's alone):

* send: ``N`` small bodies in full batches (``send`` of 10), one task;
* consume: ``c`` consumer tasks sharing one client, each looping
  ``receive(max_messages=10, wait_seconds=1)`` -> ``ack(batch)`` until every
  message was acked (timed to the last ack).

Printed per run: messages/s for send and consume, AWS requests per message
by API (counted with botocore's ``before-call`` event), messages per receive
(and empty receives), client CPU µs per message, duplicate deliveries, and
the consume rate as a ratio to sqs:// with the same number of consumers.
moto serves ~200-350 requests/s here, so rates are moto's; requests per
message are what transfers to AWS. Every run asserts that each message was
acked, and the queue is empty afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from benchmarks._metrics import CallCounter, measure
from msgcluster.local import LocalAWS
from msgcluster.queues import Queue, open_queue, provision_dynamodb_queue_table

TABLE = "bench-queues"


@dataclass
class Row:
    backend: str
    consumers: int
    shards: int | None
    n: int
    send_wall: float = 0.0
    send_calls: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    receives: int = 0
    empty: int = 0
    duplicates: int = 0

    @property
    def name(self) -> str:
        shards = f", {self.shards} shards" if self.shards else ""
        return f"{self.backend} {self.consumers} consumer{'s' * (self.consumers > 1)}{shards}"

    @property
    def rate(self) -> float:
        return self.n / self.wall


async def fill(queue: Queue, n: int, counter: CallCounter, row: Row) -> None:
    with measure(counter, trace_memory=False) as m:
        for start in range(0, n, 10):
            results = await queue.send([f"job {i}".encode() for i in range(start, start + 10)])
            assert all(r.ok for r in results)
    row.send_wall, row.send_calls = m.wall, m.calls


async def consume(queue: Queue, n: int, consumers: int, counter: CallCounter, row: Row) -> None:
    acked: set[str] = set()
    deliveries: Counter[str] = Counter()
    last_ack = 0.0

    async def consumer(scope: anyio.CancelScope) -> None:
        nonlocal last_ack
        while True:
            batch = await queue.receive(max_messages=10, wait_seconds=1)
            row.receives += 1
            if not batch:
                row.empty += 1
                continue
            deliveries.update(m.id for m in batch)
            results = await queue.ack(batch)
            acked.update(r.id for r in results if r.ok)
            if len(acked) >= n:
                last_ack = time.perf_counter()
                scope.cancel()

    with measure(counter, trace_memory=False) as m:
        started = time.perf_counter()
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for _ in range(consumers):
                    tg.start_soon(consumer, tg.cancel_scope)
    assert len(acked) == n, (len(acked), n)
    row.wall, row.cpu, row.calls = last_ack - started, m.cpu, m.calls
    row.duplicates = sum(deliveries.values()) - len(deliveries)


async def run_dynamodb(aws: LocalAWS, n: int, consumers: int, shards: int) -> Row:
    config = AioConfig(max_pool_connections=64, retries={"mode": "standard"})
    async with AioSession().create_client("dynamodb", config=config, **aws.client_kwargs()) as ddb:
        await provision_dynamodb_queue_table(ddb, TABLE)
        counter = CallCounter().attach(ddb)
        uri = f"dynamodb://{TABLE}?queue=q-{uuid.uuid4().hex[:8]}&shards={shards}"
        row = Row("dynamodb://", consumers, shards, n)
        async with open_queue(uri, client=ddb, visibility_timeout=60) as queue:
            await fill(queue, n, counter, row)
            await consume(queue, n, consumers, counter, row)
            stats = await queue.stats()  # type: ignore[attr-defined]
            assert (stats.visible, stats.in_flight) == (0, 0)
        counter.detach(ddb)
    return row


async def run_sqs(aws: LocalAWS, n: int, consumers: int) -> Row:
    config = AioConfig(max_pool_connections=64, retries={"mode": "standard"})
    async with AioSession().create_client("sqs", config=config, **aws.client_kwargs()) as sqs:
        name = f"q-{uuid.uuid4().hex[:8]}"
        url = (await sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"}))[
            "QueueUrl"
        ]
        counter = CallCounter().attach(sqs)
        row = Row("sqs://", consumers, None, n)
        async with open_queue(url, client=sqs) as queue:
            await fill(queue, n, counter, row)
            await consume(queue, n, consumers, counter, row)
        counter.detach(sqs)
        await sqs.delete_queue(QueueUrl=url)
    return row


def _per_api(calls: dict[str, int], n: int) -> str:
    by_api = ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(calls.items()))
    return f"{sum(calls.values()) / n:.3f} ({by_api})"


def report(rows: list[Row]) -> None:
    sqs_rate = {r.consumers: r.rate for r in rows if r.backend == "sqs://"}
    print(
        "| run | messages | send msg/s | send requests / message | consume msg/s "
        "| consume requests / message (by API) | messages / receive (empty) "
        "| client CPU µs / message | duplicates | consume rate vs sqs:// |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r.rate / sqs_rate[r.consumers] if r.consumers in sqs_rate else None
        full = r.receives - r.empty
        print(
            f"| {r.name} | {r.n:,} | {r.n / r.send_wall:,.0f} | {_per_api(r.send_calls, r.n)} "
            f"| {r.rate:,.0f} | {_per_api(r.calls, r.n)} | {r.n / max(full, 1):.2f} ({r.empty}) "
            f"| {r.cpu / r.n * 1e6:,.0f} | {r.duplicates} "
            f"| {'—' if ratio is None else f'{ratio:.2f}x'} |"
        )


async def main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    plan: list[tuple[str, int, int]] = [("sqs", c, 0) for c in args.consumers]
    plan += [("dynamodb", c, args.shards) for c in args.consumers]
    if 16 in args.consumers and args.shards != 16:
        plan.append(("dynamodb", 16, 16))
    async with LocalAWS() as aws:
        for backend, consumers, shards in plan:
            if backend == "sqs":
                row = await run_sqs(aws, args.messages, consumers)
            else:
                row = await run_dynamodb(aws, args.messages, consumers, shards)
            rows.append(row)
            print(f"  {row.name}: {row.n:,} in {row.wall:.1f} s", file=sys.stderr, flush=True)
    print(
        f"\n{args.messages:,} messages per run, ~10-byte bodies, receive(10, wait 1 s) -> "
        "ack(batch) loops sharing one client; embedded local AWS (moto):\n"
    )
    report(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--shards", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
