"""A worker process for tests/test_worker_processes.py.

``python tests/worker_process.py '<json config>'``: opens a Client on the
test's local AWS and runs a Worker (concurrency 16) on one queue until it is
signalled. Every handled message and every cluster callback appends one line
to the shared log file (``O_APPEND``: lines from several processes do not
interleave), which is how the test sees effects across processes and crashes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import msgspec

import msgcluster
from msgcluster.worker import App, Worker


class Item(msgspec.Struct):
    kind: str
    n: int


async def main(config: dict[str, Any]) -> None:
    log = os.open(config["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    name = config["name"]
    async with msgcluster.Client(
        config["table"],
        config["bucket"],
        config["endpoint_url"],
        config["region"],
        aws_access_key_id=config["aws_access_key_id"],
        aws_secret_access_key=config["aws_secret_access_key"],
    ) as mc:
        app = App(client=mc)

        @app.handler(Item)
        async def handle(item: Item) -> None:
            await anyio.sleep(config["delay"])
            os.write(log, f"{item.kind}:{item.n}:{name}\n".encode())

        @app.on_cluster_complete
        async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
            line = f"callback:{cluster.completed}:{cluster.failed}:{cluster.status.name}:{name}\n"
            os.write(log, line.encode())

        worker = Worker(
            app,
            config["queue_url"],
            concurrency=16,
            wait_seconds=1,
            visibility_timeout=config["visibility_timeout"],
            grace_seconds=20,
            queue_options={"client": mc.sqs},
        )
        print("ready", flush=True)
        stats = await worker.run()
    print(json.dumps({k.name: v for k, v in stats.outcomes.items()}), flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
