"""Tracked messages and clusters on any queue the Client opens by URI.

The Client takes a queue URL or a URI wherever it takes a queue; it sends
through the queue layer, so tracked messages, cluster tasks and completion
events run on ``dynamodb://`` (records still in the msgcluster table) as they
do on ``sqs://``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest

import msgcluster
from msgcluster import Status
from msgcluster.queues import provision_dynamodb_queue_table
from msgcluster.worker import App, Outcome, Reject, Worker


class Job(msgspec.Struct):
    n: int
    note: str = ""


@pytest.fixture(params=["dynamodb", "sqs"])
async def target(
    request: pytest.FixtureRequest, mc: msgcluster.Client, names: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """A queue URI and the options a Worker opens it with (the Client's clients)."""
    if request.param == "sqs":
        await mc.provision(queues=[names["queue"]], max_receive_count=3)
        return f"sqs://{names['queue']}", {"client": mc.sqs}
    table = f"qt-{uuid.uuid4().hex[:8]}"
    await provision_dynamodb_queue_table(mc.dynamodb, table)
    uri = f"dynamodb://{table}?queue=jobs&max_receives=3&dlq=jobs-dlq&visibility_timeout=5"
    return uri, {"client": mc.dynamodb}


def burst_worker(app: App, uri: str, options: dict[str, Any]) -> Worker:
    return Worker(
        app,
        uri,
        concurrency=10,
        burst=True,
        wait_seconds=1,
        backoff_base=0.01,
        handle_signals=False,
        queue_options=options,
    )


async def test_tracked_messages_by_uri(
    mc: msgcluster.Client, target: tuple[str, dict[str, Any]]
) -> None:
    uri, options = target
    one = await mc.send_message(uri, Job(0), meta={"who": "single"})
    many = await mc.send_message_batch(uri, [Job(n) for n in range(1, 25)])
    big = await mc.send_message(uri, Job(99, "x" * 300_000))  # offloaded, Extended format
    bad = await mc.send_message(uri, Job(-1))
    record = await mc.get_message_record(one, consistent_read=True)
    assert (record.url, record.status) == (uri, Status.PRE_FLIGHT)

    app = App(client=mc)
    seen: Counter[int] = Counter()

    @app.handler(Job)
    async def handle(job: Job) -> None:
        if job.n < 0:
            raise Reject("negative")
        seen[job.n] += 1

    stats = await burst_worker(app, uri, options).run()
    assert seen == Counter([*range(25), 99])
    assert stats[Outcome.SUCCEEDED] == 26
    assert stats[Outcome.DEAD_LETTERED] == 1
    keys = [one, *many, big]
    assert await mc.get_message_records(keys, consistent_read=True) == [None] * len(keys)
    failed = await mc.get_message_record(bad, consistent_read=True)
    assert failed.status is Status.ERROR
    assert failed.error[-1].message == "negative"


async def test_a_cluster_by_uri(mc: msgcluster.Client, target: tuple[str, dict[str, Any]]) -> None:
    uri, options = target
    key = await mc.create_message_cluster(
        url=uri, tasks=[Job(n) for n in range(40)], globals={"scale": 2}
    )
    app = App(client=mc)
    seen: Counter[int] = Counter()
    callbacks: list[tuple[int, int]] = []

    @app.handler(Job)
    async def handle(job: Job, ctx: Any) -> None:
        assert ctx.record is not None
        assert await ctx.record.get_globals() == {"scale": 2}
        seen[job.n] += 1

    @app.on_cluster_complete
    async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        callbacks.append((cluster.completed, cluster.failed))

    with anyio.fail_after(60):
        while not (await mc.get_message_cluster(key, consistent_read=True)).done or not callbacks:
            await burst_worker(app, uri, options).run()
    assert seen == Counter(range(40))
    assert callbacks == [(40, 0)]
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed, record.failed, record.url) == (
        Status.COMPLETE,
        40,
        0,
        uri,
    )


async def test_bad_queue_targets(mc: msgcluster.Client) -> None:
    with pytest.raises(msgcluster.ValidationError, match="a queue is an SQS queue URL"):
        await mc.send_message("jobs", Job(1))
    with pytest.raises(msgcluster.UnknownSchemeError, match="did you mean sqs"):
        await mc.send_message("sqss://jobs", Job(1))
    with pytest.raises(msgcluster.QueueNotFoundError, match=r"Client\.provision"):
        await mc.send_message("sqs://no-such-queue-here", Job(1))
