"""What claims cost: tracked messages consumed with and without ``claim=True``.

Run: ``.venv/bin/python -m benchmarks.bench_claims`` (``--messages``, default
1,000; about a minute). The same Worker (burst, concurrency 16) consumes
the same number of tracked messages twice on one local server, claims off
then on. Printed: AWS requests per message by API, DynamoDB WCU per message
(computed by DynamoDB's billing rules by the embedded server's emulation,
which runs here with no throttling and no transaction hold), client CPU per
message and throughput, and the ratios of the claimed run to the unclaimed.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import anyio
import anyio.to_thread

from benchmarks._metrics import CallCounter
from msgcluster import App, Client, Worker
from msgcluster.local import Emulation, LocalAWS


async def run(aws: LocalAWS, messages: int, claim: bool) -> dict[str, Any]:
    names = uuid.uuid4().hex[:8]
    settings = {**aws.settings(), "table": f"t-{names}", "bucket": f"b-{names}"}
    async with Client(**settings, claim=claim) as mc:
        queue = f"q-{names}"
        url = (await mc.provision([queue], max_receive_count=5))[queue]
        await mc.send_message_batch(url, [{"n": n} for n in range(messages)])
        app = App(mc)
        handled = 0

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            nonlocal handled
            handled += 1

        await anyio.to_thread.run_sync(lambda: aws.emulation_stats(reset=True))
        calls = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
        cpu, wall = time.process_time(), time.perf_counter()
        await Worker(app, url, burst=True, wait_seconds=1, concurrency=16).run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stats = await anyio.to_thread.run_sync(aws.emulation_stats)
        assert handled == messages, (handled, messages)
        return {
            "claim": claim,
            "requests": calls.total_per(messages),
            "by_api": calls.per(messages),
            "wcu": stats["wcu"] / messages,
            "cpu_us": cpu / messages * 1e6,
            "rate": messages / wall,
        }


async def main(args: argparse.Namespace) -> None:
    # Billing rules only: no throttles, no transaction hold, SQS in send order.
    emulation = Emulation(transaction_hold=0.0, throttle=False, sqs_pool=1)
    with LocalAWS(emulation=emulation) as aws:
        rows = [await run(aws, args.messages, claim) for claim in (False, True)]
    print(f"\n{args.messages:,} tracked messages, Worker burst, concurrency 16\n")
    print("| claims | requests / message (by API) | WCU / message | client CPU µs / message "
          "| messages/s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        apis = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["by_api"].items()) if v >= 0.0005)
        print(
            f"| {'on' if r['claim'] else 'off'} | {r['requests']:.3f} ({apis}) | {r['wcu']:.2f} | "
            f"{r['cpu_us']:,.0f} | {r['rate']:.0f} |"
        )
    off, on = rows
    print(
        f"\nclaims on / off: requests x{on['requests'] / off['requests']:.2f}, "
        f"WCU x{on['wcu'] / off['wcu']:.2f}, throughput x{on['rate'] / off['rate']:.2f}"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1_000)
    anyio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
