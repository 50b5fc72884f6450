"""Sending tracked messages: msgcluster vs raw aiobotocore vs a naive sequential send.

Run: ``.venv/bin/python -m benchmarks.bench_send [--messages N]``

All three run in this process against the same embedded local AWS:

* ``raw``: concurrent SendMessageBatch of bare bodies, no records (the ceiling);
* ``msgcluster``: ``send_message_batch`` (records by BatchWriteItem, then
  SendMessageBatch, concurrently);
* ``naive``: the documented design done one message at a time (PutItem, then
  SendMessage, sequentially; the floor).

Printed per message: AWS requests by API, client CPU; peak traced memory;
throughput as a ratio to ``raw``. moto bounds absolute rates on this machine,
so ratios and requests per message are the figures that transfer to AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from benchmarks._metrics import CallCounter, Measurement, measure
from msgcluster import Client
from msgcluster.local import LocalAWS

CONCURRENCY = 16


def body(i: int) -> dict[str, Any]:
    return {"order": i, "item": "book", "qty": 1 + i % 5, "note": "x" * 200}


async def run_raw(aws: LocalAWS, url: str, n: int) -> tuple[Measurement, CallCounter]:
    import msgspec

    session = AioSession()
    config = AioConfig(max_pool_connections=CONCURRENCY)
    async with session.create_client("sqs", config=config, **aws.client_kwargs()) as sqs:
        counter = CallCounter().attach(sqs)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def send(start: int) -> None:
            entries = [
                {"Id": str(i), "MessageBody": msgspec.json.encode(body(i)).decode()}
                for i in range(start, min(start + 10, n))
            ]
            async with sem:
                await sqs.send_message_batch(QueueUrl=url, Entries=entries)

        with measure(counter) as m:
            await asyncio.gather(*(send(s) for s in range(0, n, 10)))
    return m, counter


async def run_msgcluster(mc: Client, url: str, n: int) -> tuple[Measurement, CallCounter]:
    counter = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
    with measure(counter) as m:
        keys = await mc.send_message_batch(url, (body(i) for i in range(n)))
    counter.detach(mc.sqs, mc.dynamodb, mc.s3)
    assert len(keys) == n
    return m, counter


async def run_naive(mc: Client, url: str, n: int) -> tuple[Measurement, CallCounter]:
    import msgspec

    counter = CallCounter().attach(mc.sqs, mc.dynamodb)
    with measure(counter) as m:
        for i in range(n):
            ident = str(uuid.uuid4())
            payload = msgspec.json.encode(body(i)).decode()
            await mc.dynamodb.put_item(
                TableName=mc.settings.table,
                Item={
                    "pk": {"S": f"SQSMessage${ident}"},
                    "rk": {"S": "SQSMessage$message"},
                    "status": {"S": "PRE FLIGHT"},
                    "body": {"S": payload},
                },
            )
            await mc.sqs.send_message(QueueUrl=url, MessageBody=payload)
    counter.detach(mc.sqs, mc.dynamodb)
    return m, counter


def report(name: str, n: int, m: Measurement, counter: CallCounter, raw_rate: float) -> str:
    rate = n / m.wall
    calls = ", ".join(f"{k} {v:.3f}" for k, v in counter.per(n).items())
    return (
        f"| {name} | {n:,} | {counter.total_per(n):.3f} ({calls}) | "
        f"{m.cpu / n * 1e6:,.0f} | {m.peak_bytes / 1e6:.1f} | {rate:,.0f} | "
        f"{rate / raw_rate:.2f} |"
    )


async def main(n: int, naive_n: int) -> None:
    with LocalAWS() as aws:
        async with Client(
            table="bench-send", bucket="bench-send", concurrency=CONCURRENCY, **aws.settings()
        ) as mc:
            urls = await mc.provision(queues=["raw", "tracked", "naive"])
            raw_m, raw_c = await run_raw(aws, urls["raw"], n)
            raw_rate = n / raw_m.wall
            ours_m, ours_c = await run_msgcluster(mc, urls["tracked"], n)
            naive_m, naive_c = await run_naive(mc, urls["naive"], naive_n)
    print(
        "| run | messages | AWS requests / message | client CPU µs / message "
        "| peak traced MB | messages/s | ratio to raw |"
    )
    print("|---|---|---|---|---|---|---|")
    print(report("raw SendMessageBatch (ceiling)", n, raw_m, raw_c, raw_rate))
    print(report("msgcluster send_message_batch", n, ours_m, ours_c, raw_rate))
    print(report("naive PutItem + SendMessage (floor)", naive_n, naive_m, naive_c, raw_rate))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--naive-messages", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.naive_messages))
