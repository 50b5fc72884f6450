"""One bad message, or one failed request, fails alone.

A receive batch holding a mis-keyed envelope, an undecodable tracked body and
eight good tracked messages: the eight are handled and completed, the two are
dead-lettered alone and the tracked one is recorded as failed, through the
worker, ``safe_process_batch`` and the Lambda adapter. An ack that fails
after retries never makes counted work visible again.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest
from conftest import as_lambda_record, client_for, queue_depth, receive_all
from faultproxy import FaultProxy, error, strict_sqs

import msgcluster
from msgcluster import OutgoingMessage as OutgoingMsg
from msgcluster import RecordKey, Status
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.local import LocalAWS
from msgcluster.worker import App, Outcome, Worker


class Job(msgspec.Struct):
    n: int


MIS_KEYED = json.dumps({"type": "message", "pk": "evil", "rk": "SQSMessage$message"})


async def send_mixed_batch(mc: msgcluster.Client, url: str) -> tuple[list[RecordKey], RecordKey]:
    """Eight good tracked jobs, one tracked body that is not a Job, one mis-keyed
    envelope; returns the good keys and the bad tracked one's key."""
    good = await mc.send_message_batch(url, [Job(n) for n in range(8)])
    bad = await mc.send_message(url, {"n": "seven"})
    await mc.sqs.send_message(QueueUrl=url, MessageBody=MIS_KEYED)
    return [key for key in good.keys if key is not None], bad


async def dlq_of(mc: msgcluster.Client, names: dict[str, str]) -> str:
    return await mc.get_queue_url(f"{names['queue']}-dlq")


async def assert_bad_one_recorded(mc: msgcluster.Client, key: RecordKey, *, final: bool) -> None:
    record = await mc.get_message_record(key, consistent_read=True)
    assert record.status is (Status.ERROR if final else Status.IN_PROGRESS)
    (entry,) = record.error
    assert entry.type == "BodyDecodeError"
    assert "does not match Job" in entry.message


async def test_worker_fails_the_two_bad_messages_alone(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    good, bad = await send_mixed_batch(mc, queue_url)
    app = App(client=mc)
    seen: Counter[int] = Counter()

    @app.handler(Job)
    async def handle(job: Job) -> None:
        seen[job.n] += 1

    worker = Worker(
        app,
        f"sqs://{names['queue']}",
        concurrency=10,
        burst=True,
        wait_seconds=1,
        handle_signals=False,
        queue_options={"client": mc.sqs},
    )
    stats = await worker.run()
    assert seen == Counter(range(8))
    assert stats[Outcome.SUCCEEDED] == 8
    assert stats[Outcome.DEAD_LETTERED] == 2
    assert stats[Outcome.RELEASED] == 0
    assert await mc.get_message_records(good, consistent_read=True) == [None] * 8
    await assert_bad_one_recorded(mc, bad, final=True)
    assert await queue_depth(mc, queue_url) == 0
    dead = await receive_all(mc, await dlq_of(mc, names), 2)
    bodies = sorted(message["Body"] for message in dead)
    assert MIS_KEYED in bodies
    reasons = [m["MessageAttributes"]["msgcluster.dead-letter-reason"]["StringValue"] for m in dead]
    assert any("invalid record key" in reason for reason in reasons)
    assert any("does not match Job" in reason for reason in reasons)


async def lambda_event(mc: msgcluster.Client, url: str) -> dict[str, Any]:
    arn = (await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    return {"Records": [as_lambda_record(m, arn) for m in await receive_all(mc, url, 10)]}


def failed_bodies(result: dict[str, Any], event: dict[str, Any]) -> list[str]:
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    return sorted(r["body"] for r in event["Records"] if r["messageId"] in failed)


async def test_safe_process_batch_fails_the_two_bad_messages_alone(
    mc: msgcluster.Client, queue_url: str
) -> None:
    good, bad = await send_mixed_batch(mc, queue_url)
    event = await lambda_event(mc, queue_url)
    seen: list[int] = []

    async def process(record: Any) -> None:
        seen.append(record.body.n)

    result = await mc.safe_process_batch(event, process, body_type=Job)
    assert sorted(seen) == list(range(8))
    failed = failed_bodies(result, event)
    assert len(failed) == 2
    assert MIS_KEYED in failed
    assert await mc.get_message_records(good, consistent_read=True) == [None] * 8
    # Under Lambda the queue's redrive policy dead-letters it; until its last
    # receive the failure is recorded, not final.
    await assert_bad_one_recorded(mc, bad, final=False)


async def test_lambda_adapter_fails_the_two_bad_messages_alone(
    mc: msgcluster.Client, queue_url: str, local_aws: LocalAWS, names: dict[str, str]
) -> None:
    good, bad = await send_mixed_batch(mc, queue_url)
    event = await lambda_event(mc, queue_url)
    app = App(client=client_for(local_aws, names))
    seen: list[int] = []

    @app.handler(Job)
    async def handle(job: Job) -> None:
        seen.append(job.n)

    handler = lambda_handler(app)
    try:
        result = await anyio.to_thread.run_sync(handler, event, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert sorted(seen) == list(range(8))
    assert len(failed_bodies(result, event)) == 2
    assert await mc.get_message_records(good, consistent_read=True) == [None] * 8
    await assert_bad_one_recorded(mc, bad, final=False)


async def test_an_ack_that_fails_never_releases_counted_tasks(
    mc: msgcluster.Client,
    pc: msgcluster.Client,
    queue_url: str,
    names: dict[str, str],
    proxy: FaultProxy,
) -> None:
    """The first acks fail outright (a request-level refusal no retry fixes):
    the counted tasks stay invisible, come back after their visibility timeout,
    are skipped as complete, and none walks to the DLQ."""
    cluster = await mc.create_message_cluster(url=queue_url, tasks=[Job(n) for n in range(20)])
    app = App(client=pc)
    seen: Counter[int] = Counter()

    @app.handler(Job)
    async def handle(job: Job) -> None:
        seen[job.n] += 1

    rule = proxy.add_rule(
        "DeleteMessageBatch",
        error(400, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", sender_fault=True),
        times=2,
    )
    worker = Worker(
        app,
        queue_url,
        concurrency=10,
        visibility_timeout=2,
        wait_seconds=0.5,
        handle_signals=False,
        queue_options={"client": pc.sqs},
    )

    async def done() -> bool:
        record = await mc.get_message_cluster(cluster, consistent_read=True)
        return record.done and await queue_depth(mc, queue_url) == 0

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            while not await done():  # noqa: ASYNC110
                await anyio.sleep(0.25)
            worker.stop()
    assert rule.hits == 2
    assert seen == Counter(range(20))  # each handler ran once
    record = await mc.get_message_cluster(cluster, consistent_read=True)
    assert (record.status, record.completed, record.failed) == (Status.COMPLETE, 20, 0)
    assert worker.stats[Outcome.RELEASED] == 0
    assert worker.stats[Outcome.SKIPPED] >= 1  # the un-acked came back, skipped as done
    assert await queue_depth(mc, await dlq_of(mc, names)) == 0


@pytest.mark.parametrize("copies", [2, 3])
async def test_the_same_message_twice_in_one_batch_runs_once(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str], copies: int
) -> None:
    """A standard queue may hand one message out twice at once: the worker runs
    it once per batch (a memory:// queue delivering duplicates plays it)."""
    from msgcluster.queues import ReceivedMessage, open_queue

    key = await mc.send_message(queue_url, Job(1))

    class Duplicating:
        """A driver that delivers every message ``copies`` times in one batch."""

        def __init__(self, driver: Any) -> None:
            self._driver = driver

        def __getattr__(self, name: str) -> Any:
            return getattr(self._driver, name)

        async def receive(self, *args: Any, **kwargs: Any) -> list[ReceivedMessage]:
            batch = await self._driver.receive(*args, **kwargs)
            return [message for message in batch for _ in range(copies)]

    async with open_queue(f"sqs://{names['queue']}", client=mc.sqs) as queue:
        queue.driver = Duplicating(queue.driver)
        app = App(client=mc)
        seen: list[int] = []

        @app.handler(Job)
        async def handle(job: Job) -> None:
            seen.append(job.n)

        stats = await Worker(app, queue, burst=True, wait_seconds=1, handle_signals=False).run()
    assert seen == [1]
    assert stats[Outcome.SUCCEEDED] == 1
    assert stats[Outcome.SKIPPED] == copies - 1
    with pytest.raises(msgcluster.RecordNotFoundError):
        await mc.get_message_record(key, consistent_read=True)


# --------------------------------------------------------------------------- SQS's rules

#: Attributes real SQS refuses (moto takes the empty ones), refused the same
#: way on the Client's path and on every queue backend, before any request.
BAD_ATTRIBUTES: list[tuple[str, dict[str, str]]] = [
    ("empty value", {"tenant": ""}),
    ("control character", {"tenant": "a\x00b"}),
    ("name with a space", {"bad name": "1"}),
    ("name with ..", {"a..b": "1"}),
    ("AWS prefix", {"AWS.trace": "1"}),
    ("the Extended Client's size attribute", {"ExtendedPayloadSize": "10"}),
]


@pytest.mark.parametrize(
    "attributes", [c[1] for c in BAD_ATTRIBUTES], ids=[c[0] for c in BAD_ATTRIBUTES]
)
async def test_one_validator_for_attributes(
    mc: msgcluster.Client,
    pc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    attributes: dict[str, str],
) -> None:
    from msgcluster.queues import OutgoingMessage, open_queue

    proxy.add_rule("SendMessage", strict_sqs())
    proxy.add_rule("SendMessageBatch", strict_sqs())
    with pytest.raises(msgcluster.ValidationError):
        await pc.send_message(queue_url, {"n": 1}, attributes=attributes)
    result = await pc.send_message_batch(
        queue_url,
        [OutgoingMsg(body={"n": 1}, attributes=attributes), {"n": 2}],
        raise_on_failure=False,
    )
    assert [key is not None for key in result.keys] == [False, True]
    assert result.failures[0].sender_fault
    async with open_queue(queue_url, client=pc.sqs) as queue:
        sent = await queue.send([OutgoingMessage(body=b"x", attributes=attributes), b"ok"])
    assert [r.ok for r in sent] == [False, True]
    assert isinstance(sent[0].error, msgcluster.ValidationError)
    assert proxy.count("SendMessage", 400) + proxy.count("SendMessageBatch", 400) == 0
    assert await queue_depth(mc, queue_url) == 2


async def test_an_empty_body_never_reaches_sqs_empty(
    mc: msgcluster.Client, pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    from msgcluster.queues import open_queue

    proxy.add_rule("SendMessageBatch", strict_sqs())
    proxy.add_rule("SendMessage", strict_sqs())
    async with open_queue(queue_url, client=pc.sqs) as queue:
        sent = await queue.send([b"", ""])
        assert all(r.ok for r in sent)
        received = await queue.receive(max_messages=10, wait_seconds=1)
        while len(received) < 2:
            received += await queue.receive(max_messages=10, wait_seconds=1)
        assert [m.body for m in received] == [b"", b""]
        assert all(r.ok for r in await queue.ack(received))
        # The dead-letter copy of an empty body is not empty on the wire either.
    key = await pc.send_message(queue_url, "")  # a tracked "" is JSON: never empty
    (message,) = await receive_all(mc, queue_url, 1)
    assert mc.read_sqs_record(message).body == ""
    assert mc.read_sqs_record(message).key == key
    assert proxy.count("SendMessageBatch", 400) + proxy.count("SendMessage", 400) == 0


async def test_an_undecodable_cluster_task_is_counted_as_failed_alone(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    """A task whose body does not decode is dead-lettered at once and counted as
    failed, so its cluster still completes (here within its tolerance) and the
    callback runs once."""
    tasks: list[Any] = [Job(n) for n in range(6)]
    tasks[3] = {"n": "three"}
    key = await mc.create_message_cluster(url=queue_url, tasks=tasks, tolerated_failures=1)
    app = App(client=mc)
    seen: list[int] = []
    callbacks: list[tuple[str, int, int]] = []

    @app.handler(Job)
    async def handle(job: Job) -> None:
        seen.append(job.n)

    @app.on_cluster_complete
    async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        callbacks.append((cluster.status.value, cluster.completed, cluster.failed))

    stats = await Worker(
        app,
        f"sqs://{names['queue']}",
        burst=True,
        wait_seconds=1,
        handle_signals=False,
        queue_options={"client": mc.sqs},
    ).run()
    assert sorted(seen) == [0, 1, 2, 4, 5]
    assert stats[Outcome.DEAD_LETTERED] == 1
    assert callbacks == [("COMPLETE", 5, 1)]
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.completed, record.failed) == (5, 1)
    (failed,) = [task async for task in mc.failed_tasks(key)]
    assert failed.error[-1].type == "BodyDecodeError"
    assert await queue_depth(mc, await dlq_of(mc, names)) == 1


async def test_attribute_count_is_the_queues(mc: msgcluster.Client, queue_url: str) -> None:
    """sqs:// keeps one of SQS's ten attributes for its encoding flag, and an
    offloaded body needs one for ExtendedPayloadSize: both are refused up front,
    with the number to use, before anything is written."""
    nine = {f"a{i}": "v" for i in range(9)}
    with pytest.raises(msgcluster.ValidationError, match="takes at most 9 message attributes"):
        await mc.send_message(queue_url, Job(1), attributes=nine | {"a9": "v"})
    key = await mc.send_message(queue_url, Job(2), attributes=nine)
    with pytest.raises(msgcluster.MessageTooLargeError, match="at most 8 attributes"):
        await mc.send_message(queue_url, {"n": 3, "blob": "x" * 300_000}, attributes=nine)
    (message,) = await receive_all(mc, queue_url, 1)
    assert mc.read_sqs_record(message).key == key
    assert len(message["MessageAttributes"]) == 9


FOREIGN_ENCODING = [
    # Another sender's use of msgcluster's reserved encoding attribute: bodies
    # msgcluster could not have encoded so, delivered as they are.
    ("not base64 !!!", "base64"),
    ("a real body", "empty"),
    ("hello", "rot13"),
]


async def test_a_foreign_encoding_attribute_never_sinks_or_empties_a_receive(
    mc: msgcluster.Client, queue_url: str
) -> None:
    for body, encoding in FOREIGN_ENCODING:
        await mc.sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=body,
            MessageAttributes={
                "msgcluster.encoding": {"DataType": "String", "StringValue": encoding}
            },
        )
    await mc.sqs.send_message(QueueUrl=queue_url, MessageBody="good")
    app = App(client=mc)
    seen: dict[bytes, dict[str, str]] = {}

    @app.handler(bytes)
    async def handle(body: bytes, ctx: Any) -> None:
        seen[body] = dict(ctx.attributes)

    stats = await Worker(app, queue_url, burst=True, wait_seconds=1).run()
    assert set(seen) == {b"not base64 !!!", b"a real body", b"hello", b"good"}
    assert seen[b"hello"] == {"msgcluster.encoding": "rot13"}
    assert stats.outcomes == Counter({Outcome.SUCCEEDED: 4})


async def test_a_dead_letter_copy_is_one_sqs_accepts(
    pc: msgcluster.Client, mc: msgcluster.Client, names: dict[str, str], proxy: FaultProxy
) -> None:
    """Nine attributes (all sqs:// takes) and a binary body, which travels with
    the encoding flag: the copy has no room for the reason attribute, and goes
    without it rather than be refused (real SQS takes 10 attributes)."""
    proxy.add_rule("SendMessage", strict_sqs())
    proxy.add_rule("SendMessageBatch", strict_sqs())
    await mc.provision(queues=[names["queue"]], max_receive_count=3)
    attributes: dict[str, Any] = {f"a{i}": f"v{i}" for i in range(8)} | {"bin": b"\x01"}
    async with msgcluster.open_queue(f"sqs://{names['queue']}", client=pc.sqs) as queue:
        (sent,) = await queue.send([OutgoingMsg(body=b"\xff", attributes=attributes)])
        assert sent.ok, sent.error
        (message,) = await queue.receive(wait_seconds=1, visibility_timeout=30)
        assert await queue.dead_letter(message, "poison") is True
    async with msgcluster.open_queue(f"sqs://{names['queue']}-dlq", client=pc.sqs) as dlq:
        (dead,) = await dlq.receive(wait_seconds=1)
    assert dead.body == b"\xff"
    assert dead.attributes == message.attributes


async def test_encoded_bodies_are_not_deduplicated_with_the_text_they_travel_as(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    """A FIFO queue deduplicating by content: b"" travels as "-" and b"\\x00" as
    "AA==" (flagged); each is still its own message, as on memory://."""
    created = await mc.sqs.create_queue(
        QueueName=f"{names['queue']}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )
    bodies: list[bytes | str] = [b"", "-", b"\x00", "AA=="]
    async with msgcluster.open_queue(created["QueueUrl"], client=mc.sqs) as queue:
        results = await queue.send([OutgoingMsg(body=b, group_id="g") for b in bodies])
        assert all(result.ok for result in results)
        got: list[bytes] = []
        with anyio.fail_after(20):
            while len(got) < len(bodies):
                messages = await queue.receive(wait_seconds=1)
                got += [m.body for m in messages]
                await queue.ack(messages)
    assert got == [b"", b"-", b"\x00", b"AA=="]
