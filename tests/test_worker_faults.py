"""The worker and the sqs:// backend under the failures moto never produces:
throttled receives, acks with failed entries, an ack applied whose answer was
lost, a visibility change that fails. Tracked messages: each handled once."""

from __future__ import annotations

from collections import Counter

import anyio
import msgspec
from conftest import client_for, queue_depth
from faultproxy import FaultProxy, drop_response, fail_sqs_batch_entries, match_target, throttle

import msgcluster
from msgcluster.local import LocalAWS
from msgcluster.queues import open_queue
from msgcluster.worker import App, Reject, Retry, Worker


class Job(msgspec.Struct):
    n: int


async def test_sqs_backend_reports_failed_entries_per_message(
    pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    async with open_queue(queue_url, client=pc.sqs) as opened:
        queue = opened.driver  # the driver itself: one request, never a retry
        proxy.add_rule("SendMessageBatch", fail_sqs_batch_entries(1), times=1)
        sent = await queue.send([b"a", b"b", b"c"])
        assert [r.ok for r in sent] == [False, True, True]
        assert isinstance(sent[0].error, msgcluster.AwsError)
        received = []
        with anyio.fail_after(10):
            while len(received) < 2:
                received += await queue.receive(wait_seconds=1, visibility_timeout=30)
        proxy.add_rule("ChangeMessageVisibilityBatch", fail_sqs_batch_entries(1), times=1)
        changed = await queue.change_visibility([(m, 0) for m in received])
        assert [r.ok for r in changed] == [False, True]
        proxy.add_rule("DeleteMessageBatch", fail_sqs_batch_entries(1), times=1)
        acked = await queue.ack(received)
        assert [r.ok for r in acked] == [False, True]
        assert await queue_depth(pc, queue_url) == 1  # the failed ack left it there


async def test_portable_queue_retries_failed_entries_and_reports_the_rest(
    pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    async with open_queue(queue_url, client=pc.sqs) as queue:
        # 25 messages: three SendMessageBatch parts; a server fault on two entries
        # of one part is retried, a sender fault is reported for that entry only.
        proxy.add_rule("SendMessageBatch", fail_sqs_batch_entries(2), times=1)
        proxy.add_rule(
            "SendMessageBatch",
            fail_sqs_batch_entries("3", code="InvalidMessageContents", sender_fault=True),
            times=1,
        )
        sent = await queue.send(f"m{i}".encode() for i in range(25))
        assert [r.index for r in sent] == list(range(25))
        refused = [r for r in sent if not r.ok]
        assert len(refused) == 1
        assert isinstance(refused[0].error, msgcluster.AwsValidationError)
        received: dict[str, msgcluster.queues.ReceivedMessage] = {}
        with anyio.fail_after(20):
            while len(received) < 24:
                for message in await queue.receive(wait_seconds=1, visibility_timeout=30):
                    received[message.id] = message
        messages = list(received.values())
        # Failed entries of an ack and of a visibility change are retried too;
        # a receipt given twice is acted on once.
        proxy.add_rule("ChangeMessageVisibilityBatch", fail_sqs_batch_entries(3), times=1)
        changed = await queue.change_visibility([(m, 30) for m in messages])
        assert all(r.ok for r in changed)
        proxy.add_rule("DeleteMessageBatch", fail_sqs_batch_entries(4), times=1)
        acked = await queue.ack([*messages, messages[0]])
        assert len(acked) == 25
        assert all(r.ok for r in acked)
        assert proxy.count("DeleteMessageBatch") == 4  # 3 parts + 1 retry; no duplicate entry
        assert await queue_depth(pc, queue_url) == 0


async def test_worker_rides_out_sqs_faults_and_handles_each_tracked_message_once(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    keys = await mc.send_message_batch(queue_url, [Job(n) for n in range(30)])
    app = App(client=pc)
    handled: Counter[int] = Counter()

    @app.handler(Job)
    async def job(body: Job) -> None:
        handled[body.n] += 1
        if body.n == 5 and handled[5] == 1:
            raise Retry(0)

    rules = [
        # Throttled beyond botocore's retries (8 attempts): the worker backs off.
        proxy.add_rule("ReceiveMessage", throttle(), times=10),
        # Two entries of one ack fail: the queue layer retries them.
        proxy.add_rule("DeleteMessageBatch", fail_sqs_batch_entries(2), times=1),
        # An ack applied whose answer is lost: botocore retries it.
        proxy.add_rule("DeleteMessageBatch", drop_response(), times=1),
        # The retry's visibility change fails: the message comes back anyway.
        proxy.add_rule("ChangeMessageVisibilityBatch", fail_sqs_batch_entries(1), times=1),
    ]
    worker = Worker(
        app,
        queue_url,
        queue_options={"client": pc.sqs},
        visibility_timeout=2,
        wait_seconds=0.5,
        backoff_base=0.01,
        handle_signals=False,
    )

    async def all_done() -> bool:
        records = await mc.get_message_records(keys, consistent_read=True)
        return all(r is None for r in records) and await queue_depth(mc, queue_url) == 0

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            while not await all_done():  # noqa: ASYNC110
                await anyio.sleep(0.25)
            worker.stop()
    assert [rule.hits for rule in rules] == [10, 1, 1, 1]  # every fault was served
    # Each handled once; 5 twice (its first run asked for a retry).
    assert handled == Counter({n: 2 if n == 5 else 1 for n in range(30)})
    assert proxy.count("DeleteMessageBatch") >= 4  # three acks, a retry, the lost answer


async def test_a_completion_that_fails_retries_its_messages_after_a_backoff_alone(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
) -> None:
    """The batch's completion (the records' BatchWriteItem) throttled past every
    retry: its handled messages are not acked and come back after a backoff (not
    at once), each recorded with the error; the message the handler rejected in
    the same batch is dead-lettered as it would have been."""
    keys = await mc.send_message_batch(queue_url, [Job(n) for n in range(5)])
    handled: Counter[int] = Counter()
    throttled = proxy.add_rule(match_target("BatchWriteItem"), throttle(), times=2)
    async with client_for(local_aws, names, endpoint_url=proxy.url, max_attempts=2) as pc:
        app = App(client=pc)

        @app.handler(Job)
        async def job(body: Job) -> None:
            handled[body.n] += 1
            if body.n == 0:
                raise Reject("not this one")

        worker = Worker(app, queue_url, wait_seconds=0.5, backoff_base=30, handle_signals=False)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                while not throttled.exhausted:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
                await anyio.sleep(1.5)  # released at once, they would be handled again by now
                worker.stop()
    assert handled == Counter(range(5))
    records = await mc.get_message_records(keys, consistent_read=True)
    assert records[0] is not None
    assert records[0].status == "ERROR"  # rejected: dead-lettered, recorded
    for record in records[1:]:
        assert record is not None
        assert record.status == "IN PROGRESS"
        assert record.error[-1].type == "ThrottledError"
    assert await queue_depth(mc, queue_url) == 4  # in flight, back in ~15-30 s
