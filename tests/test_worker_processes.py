"""Two worker processes on moto: one stopped by SIGTERM, one SIGKILLed and
restarted mid-run. 1,000 tracked messages and a 1,000-task cluster: every
message handled, none lost, exact cluster counts, one callback.

The workers are ``tests/worker_process.py``; each handled message appends a
line to a shared log, so effects are visible across processes and crashes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from worker_process import Item

import msgcluster
from msgcluster.local import LocalAWS

SCRIPT = Path(__file__).parent / "worker_process.py"
N_TRACKED = 1_000
N_TASKS = 1_000
CONCURRENCY = 16
PREFETCH = 20  # the worker's default for concurrency 16: 10 per receiver


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(":") for line in path.read_text().splitlines()]


class WorkerProcess:
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), json.dumps({**config, "name": name})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, seconds: float) -> tuple[int, str, str]:
        def communicate() -> tuple[str, str]:
            return self.process.communicate(timeout=seconds)

        out, err = await anyio.to_thread.run_sync(communicate)
        return self.process.returncode, out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.5)


async def test_sigterm_and_sigkill_lose_nothing_and_count_exactly(
    mc: msgcluster.Client, names: dict[str, str], local_aws: LocalAWS, tmp_path: Path
) -> None:
    # Enough receives that a killed worker's messages are never dead-lettered.
    urls = await mc.provision(queues=[names["queue"]], max_receive_count=10)
    url = urls[names["queue"]]
    log = tmp_path / "effects.log"
    config = {
        "table": names["table"],
        "bucket": names["bucket"],
        "endpoint_url": local_aws.endpoint_url,
        "region": local_aws.region,
        "aws_access_key_id": local_aws.aws_access_key_id,
        "aws_secret_access_key": local_aws.aws_secret_access_key,
        "queue_url": url,
        "log": str(log),
        "delay": 0.02,
        "visibility_timeout": 8,
    }
    tracked = await mc.send_message_batch(url, [Item("tracked", i) for i in range(N_TRACKED)])
    key = await mc.create_message_cluster(url, (Item("task", i) for i in range(N_TASKS)))

    workers = {name: WorkerProcess(name, config) for name in ("a", "b")}
    try:

        async def handled_at_least(n: int) -> bool:
            return len(read_log(log)) >= n

        await wait_for(lambda: handled_at_least(400), 120, "400 messages handled")
        # SIGTERM: a graceful stop; it drains in-flight work and exits cleanly.
        workers["a"].stop(signal.SIGTERM)
        # SIGKILL: whatever b had received comes back after its visibility timeout.
        workers["b"].kill()
        code, out, err = await workers["a"].wait(60)
        assert code == 0, err[-3000:]
        assert "SUCCEEDED" in out, out
        restarted = WorkerProcess("b2", config)
        workers["b2"] = restarted

        async def cluster_done() -> bool:
            record = await mc.get_message_cluster(key, consistent_read=True)
            return record.status is not msgcluster.Status.IN_PROGRESS and any(
                line[0] == "callback" for line in read_log(log)
            )

        await wait_for(cluster_done, 240, "the cluster's completion callback")

        async def tracked_done() -> bool:
            records = await mc.get_message_records(tracked, consistent_read=True)
            return all(record is None for record in records)

        await wait_for(tracked_done, 120, "every tracked message completed")

        async def queue_empty() -> bool:
            attributes = await mc.sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
            return set(attributes["Attributes"].values()) == {"0"}

        # What b had counted but not yet deleted when it was killed comes back
        # after its visibility timeout (8 s), and b2 then skips and deletes it.
        await wait_for(queue_empty, 30, "the queue to empty")
        restarted.stop(signal.SIGTERM)
        code, out, err = await restarted.wait(60)
        assert code == 0, err[-3000:]
    finally:
        for worker in workers.values():
            worker.kill()

    lines = read_log(log)
    effects = Counter((kind, int(n)) for kind, n, *_ in lines if kind != "callback")
    callbacks = [line for line in lines if line[0] == "callback"]
    # Every message was handled; only what b held when killed may run twice.
    assert {n for kind, n in effects if kind == "tracked"} == set(range(N_TRACKED))
    assert {n for kind, n in effects if kind == "task"} == set(range(N_TASKS))
    duplicates = sum(count - 1 for count in effects.values())
    by_worker = Counter(line[-1] for line in lines)
    print(f"{len(lines)} effects, {duplicates} duplicates, by worker {dict(by_worker)}")
    assert duplicates <= CONCURRENCY + PREFETCH, duplicates
    # Counted exactly once each; the callback ran once and saw exact counts.
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.total, record.completed, record.failed) == (
        msgcluster.Status.COMPLETE,
        N_TASKS,
        N_TASKS,
        0,
    )
    assert [line[1:4] for line in callbacks] == [[str(N_TASKS), "0", "COMPLETE"]]
    # Nothing left behind: the queue is empty (completion event included).
    attributes = await mc.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert attributes["Attributes"] == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
