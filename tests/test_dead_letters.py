"""reconcile_dead_letters: a consumer that dies on a message's last receive
leaves it unrecorded in the DLQ; reading the DLQ records it, so a cluster
with such a task still completes and its callback runs once."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

import msgcluster
from msgcluster.worker import App, Outcome, Worker


class Job(msgspec.Struct):
    n: int


def burst(app: App, url: str, mc: msgcluster.Client) -> Worker:
    return Worker(
        app,
        url,
        queue_options={"client": mc.sqs},
        burst=True,
        wait_seconds=0.5,
        handle_signals=False,
    )


async def test_a_task_dead_lettered_unrecorded_is_counted_failed_and_the_cluster_completes(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    queue = names["queue"]
    url = (await mc.provision(queues=[queue], max_receive_count=1))[queue]
    dlq_url = (await mc.sqs.get_queue_url(QueueName=f"{queue}-dlq"))["QueueUrl"]
    app = App(client=mc)
    handled: list[int] = []
    callbacks: list[tuple[int, int]] = []

    @app.handler(Job)
    async def job(body: Job) -> None:
        handled.append(body.n)

    @app.on_cluster_complete
    async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        callbacks.append((cluster.completed, cluster.failed))

    async def receive_and_die() -> msgcluster.RecordKey:
        """A consumer receives one message on its last allowed receive and dies."""
        (message,) = (
            await mc.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=1)
        )["Messages"]
        return mc.read_sqs_record(message).key

    message_key = await mc.send_message(url, Job(99))
    assert await receive_and_die() == message_key
    key = await mc.create_message_cluster(url, [Job(n) for n in range(4)], tolerated_failures=1)
    lost_task = await receive_and_die()
    await mc.sqs.send_message(QueueUrl=dlq_url, MessageBody="not a msgcluster message")
    await anyio.sleep(1.5)
    # The next receives move both to the DLQ, unrecorded; the rest is processed.
    await burst(app, url, mc).run()
    assert len(handled) == 3
    assert 99 not in handled
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed, record.failed) == (
        msgcluster.Status.IN_PROGRESS,
        3,
        0,
    )
    assert callbacks == []

    report = await mc.reconcile_dead_letters(dlq_url, visibility_timeout=1)
    assert (report.seen, report.recorded, report.already_final, report.untracked) == (3, 2, 0, 1)
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed, record.failed) == (msgcluster.Status.COMPLETE, 3, 1)
    failed = [(t.pk, t.rk) async for t in mc.failed_tasks(key, consistent_read=True)]
    assert failed == [(lost_task.pk, lost_task.rk)]
    stored = await mc.get_message_record(message_key, consistent_read=True)
    assert stored.status is msgcluster.Status.ERROR
    # The completion event runs the callback, once.
    stats = await burst(app, url, mc).run()
    assert stats[Outcome.CALLBACK] == 1
    assert callbacks == [(3, 1)]

    # Run again (the messages reappeared): nothing new is recorded.
    await anyio.sleep(1.5)
    again = await mc.reconcile_dead_letters(dlq_url)
    assert (again.seen, again.recorded, again.already_final) == (3, 0, 2)
