"""SQS throughput of the embedded local AWS against queue depth, patched vs plain moto.

Run: ``.venv/bin/python benchmarks/bench_moto_depth.py [--quick]``

For each server (``LocalAWS(patch=True)``, ``LocalAWS(patch=False)``) a queue is
filled to each depth with concurrent SendMessageBatch calls, then measured:

* send: messages/s of concurrent SendMessageBatch (10 per call);
* receive+delete: messages/s of concurrent ReceiveMessage(10) + DeleteMessageBatch.

Plain moto gets slower with every message in the queue (filling 10,000 would
take about 20 minutes), so its fill has a time budget and it measures only a
few operations per depth; depths it cannot reach in time are reported as such.
A last run compares HTTP keep-alive on/off on the patched server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from msgcluster.local import LocalAWS
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from msgcluster.local import LocalAWS

import aiobotocore.session
from aiobotocore.config import AioConfig

DEPTHS = (0, 2_000, 10_000)
CONCURRENCY = 8


@dataclass
class Plan:
    label: str
    patch: bool
    keep_alive: bool
    depths: tuple[int, ...]
    send_msgs: int  # messages sent in the "send" measurement
    recv_msgs: int  # messages received+deleted in the "receive+delete" measurement
    concurrency: int
    fill_budget_s: float


@dataclass
class Row:
    label: str
    depth: int
    send_rate: float | None
    recv_rate: float | None
    note: str = ""


async def _send_batches(sqs: Any, url: str, n: int, concurrency: int, deadline: float) -> int:
    """Send n messages with concurrent SendMessageBatch calls; return how many were sent."""
    sent = 0
    batches = (n + 9) // 10
    next_batch = 0

    async def worker() -> None:
        nonlocal sent, next_batch
        while next_batch < batches and time.monotonic() < deadline:
            index = next_batch
            next_batch += 1
            size = min(10, n - index * 10)
            entries = [{"Id": str(i), "MessageBody": f"m-{index}-{i}" * 8} for i in range(size)]
            resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if resp.get("Failed"):
                raise RuntimeError(resp["Failed"])
            sent += size

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


async def _receive_delete(sqs: Any, url: str, n: int, concurrency: int) -> int:
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < n:
            resp = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300
            )
            messages = resp.get("Messages", [])
            if not messages:
                return
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            deleted = await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
            if deleted.get("Failed"):
                raise RuntimeError(deleted["Failed"])
            done += len(messages)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _depth(sqs: Any, url: str) -> int:
    attrs = await sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


async def run_plan(plan: Plan) -> list[Row]:
    rows: list[Row] = []
    async with LocalAWS(patch=plan.patch, keep_alive=plan.keep_alive) as aws:
        assert aws.patched is plan.patch, "the child did not report the expected patch state"
        session = aiobotocore.session.get_session()
        config = AioConfig(max_pool_connections=32, retries={"mode": "standard"})
        async with session.create_client("sqs", config=config, **aws.client_kwargs()) as sqs:
            for depth in plan.depths:
                url = (await sqs.create_queue(QueueName=f"depth-{depth}"))["QueueUrl"]
                started = time.monotonic()
                filled = await _send_batches(
                    sqs, url, depth, CONCURRENCY, started + plan.fill_budget_s
                )
                fill_s = time.monotonic() - started
                if filled < depth:
                    rows.append(
                        Row(
                            plan.label,
                            depth,
                            None,
                            None,
                            f"not reached: {filled:,} filled in {fill_s:.0f}s budget",
                        )
                    )
                    print(f"  {plan.label}: depth {depth:,}: {rows[-1].note}", flush=True)
                    break
                assert await _depth(sqs, url) == depth

                t = time.perf_counter()
                sent = await _send_batches(sqs, url, plan.send_msgs, plan.concurrency, float("inf"))
                send_rate = sent / (time.perf_counter() - t)

                t = time.perf_counter()
                received = await _receive_delete(sqs, url, plan.recv_msgs, plan.concurrency)
                recv_rate = received / (time.perf_counter() - t)

                note = f"fill {depth / fill_s:,.0f} msgs/s" if depth else ""
                rows.append(Row(plan.label, depth, send_rate, recv_rate, note))
                print(
                    f"  {plan.label}: depth {depth:>6,}: send {send_rate:8,.0f} msgs/s,"
                    f" receive+delete {recv_rate:8,.0f} msgs/s  ({sent} sent, {received}"
                    f" received; {note or 'no fill'})",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples (CI smoke)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0

    plans = [
        Plan("patched", True, True, DEPTHS, int(2000 * scale), int(2000 * scale), 8, 300),
        # plain moto: few operations, one at a time, and a fill budget
        Plan("unpatched", False, True, DEPTHS, 50, 30, 1, 90 * scale),
        Plan(
            "patched, no keep-alive", True, False, (0,), int(2000 * scale), int(2000 * scale), 8, 60
        ),
    ]
    rows: list[Row] = []
    started = time.monotonic()
    for plan in plans:
        print(f"{plan.label} (keep_alive={plan.keep_alive}):", flush=True)
        rows += asyncio.run(run_plan(plan))

    print()
    print(f"{'server':<24}{'depth':>8}{'send msgs/s':>14}{'recv+del msgs/s':>17}  note")
    for row in rows:
        send = f"{row.send_rate:,.0f}" if row.send_rate is not None else "-"
        recv = f"{row.recv_rate:,.0f}" if row.recv_rate is not None else "-"
        print(f"{row.label:<24}{row.depth:>8,}{send:>14}{recv:>17}  {row.note}")
    print(f"\ntotal {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
