"""A consumer process for tests/test_dynamodb_queue.py (several run at once).

``python tests/dynamodb_consumer_process.py '<json config>'``: ``concurrency``
tasks each receive from one dynamodb:// queue, handle (sleep) and ack, one
message at a time, until no message came for ``idle_seconds``. A message's
first and second deliveries sleep ``slow_seconds[0]`` / ``[1]`` when its
number is a multiple of ``slow_every``: the first longer than the
visibility timeout, so its lease expires mid-handler and another consumer
takes it, and still holds it when the first one acks.

Every handling appends one JSON line to the shared log (``O_APPEND``: lines
from several processes do not interleave): message id, lease token,
receive count, and wall-clock times around the receive (``r0``/``r1``), the
handler (``start``/``end``) and the ack (``a0``/``a1``), and whether the
ack held.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import anyio
import msgspec
from aiobotocore.session import AioSession

from msgcluster.queues import ReceivedMessage, open_queue
from msgcluster.queues._dynamodb_keys import Receipt


class Job(msgspec.Struct):
    n: int


def lease_of(message: ReceivedMessage) -> str:
    return msgspec.json.decode(message.receipt, type=Receipt).lease


async def consume(queue: Any, config: dict[str, Any], log: int, name: str) -> None:
    last_seen = time.monotonic()
    while time.monotonic() - last_seen < config["idle_seconds"]:
        r0 = time.time()
        try:
            messages = await queue.receive(max_messages=1, wait_seconds=0.5)
        except Exception as exc:  # moto hiccup: keep consuming
            print(f"receive failed: {exc!r}", file=sys.stderr)
            continue
        r1 = time.time()
        for message in messages:
            last_seen = time.monotonic()
            job = msgspec.json.decode(message.body, type=Job)
            start = time.time()
            seconds = 0.01
            if job.n % config["slow_every"] == 0 and message.receive_count <= 2:
                # The first delivery outlives its lease; the second is still
                # running (holding a valid lease) when the first one acks.
                seconds = config["slow_seconds"][message.receive_count - 1]
            await anyio.sleep(seconds)
            end = time.time()
            (result,) = await queue.ack([message])
            a1 = time.time()
            line = {
                "id": message.id,
                "n": job.n,
                "lease": lease_of(message),
                "rc": message.receive_count,
                "r0": r0,
                "r1": r1,
                "start": start,
                "end": end,
                "a0": end,
                "a1": a1,
                "ok": result.ok,
                "error": type(result.error).__name__ if result.error else None,
                "proc": name,
            }
            os.write(log, (json.dumps(line) + "\n").encode())


async def main(config: dict[str, Any]) -> None:
    log = os.open(config["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with (
        AioSession().create_client("dynamodb", **config["client"]) as ddb,
        open_queue(config["uri"], client=ddb) as queue,
        anyio.create_task_group() as tg,
    ):
        for _ in range(config["concurrency"]):
            tg.start_soon(consume, queue, config, log, config["name"])


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
