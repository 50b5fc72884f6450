"""The README's first command: tracked messages, then a message cluster, end to end.

Run with ``python -m msgcluster.demo`` (``make demo``). Nothing touches real
AWS: a moto server is started on a loopback port and stopped at the end.

Part 1 sends tracked messages and consumes them with a plain ReceiveMessage
loop. Part 2 fans 200 "resize this photo" tasks out as one message cluster,
consumes them with two concurrent consumers while a progress bar polls the
cluster record, and runs the cluster's completion callback exactly once.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from msgcluster import Client, MessageClusterRecord, MessageRecord, RecordKey, RecordType
from msgcluster.local import LocalAWS

if TYPE_CHECKING:
    from msgcluster import ParsedRecord


# --------------------------------------------------------------------------- part 1: messages


class Thumbnail(msgspec.Struct):
    """The body type the demo's producer sends and its consumer decodes."""

    image: str
    width: int


async def produce(mc: Client, url: str) -> None:
    key = await mc.send_message(url, Thumbnail("cover.png", 320), meta={"user": "ada"})
    print(f"  sent 1 tracked message        -> record {key.pk}")
    bodies = [Thumbnail(f"photo-{i:03}.jpg", 160) for i in range(49)]
    keys = await mc.send_message_batch(url, bodies, meta={"batch": "holiday"})
    print(f"  sent {len(keys)} in one batch call    -> {len(keys)} records (PRE FLIGHT)")


async def consume(mc: Client, url: str, expected: int) -> dict[str, int]:
    """A plain ReceiveMessage loop: skip what is done, fail some, complete the rest."""
    outcome = {"completed": 0, "failed": 0, "skipped": 0}
    rng = random.Random(7)
    while outcome["completed"] < expected:
        response = await mc.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            if await mc.is_complete(message):  # a duplicate delivery
                outcome["skipped"] += 1
            else:
                record = mc.read_sqs_record(message, body_type=Thumbnail)
                if rng.random() < 0.1:  # a flaky handler: recorded, redelivered later
                    await mc.mark_failed(record, RuntimeError(f"{record.body.image}: timeout"))
                    await mc.sqs.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                    )
                    outcome["failed"] += 1
                    continue
                await mc.mark_complete(record)
                outcome["completed"] += 1
            await mc.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return outcome


# --------------------------------------------------------------------------- part 2: a cluster

PHOTOS = 200
CONSUMERS = 2
# These fail on their first delivery (a storage timeout, say) and succeed when
# SQS delivers them again: the failure is recorded, the retry completes them.
FLAKY = frozenset({"IMG_0042.jpg", "IMG_0137.jpg"})
RETRY_AFTER_SECONDS = 1

GetGlobals = Callable[..., Awaitable[Any]]


class Photo(msgspec.Struct):
    """One task of the cluster: a photo to resize."""

    name: str
    size: int  # bytes


class ResizeJob(msgspec.Struct):
    """The cluster's globals, one JSON object in S3. Every task reads the target
    width; a task whose photo is the largest seen so far records it."""

    width: int
    largest: str = ""
    largest_size: int = 0


def photos(count: int) -> list[Photo]:
    rng = random.Random(42)
    return [Photo(f"IMG_{i:04}.jpg", rng.randrange(1_500_000, 9_000_000)) for i in range(count)]


@dataclass
class Run:
    """What the consumers, the progress display and the completion callback share."""

    finished: anyio.Event = field(default_factory=anyio.Event)
    retried: list[RecordKey] = field(default_factory=list)  # tasks that failed once
    callback_ran_in: list[str] = field(default_factory=list)
    summary: str = ""  # the completion callback's result

    async def on_complete(self, cluster: MessageClusterRecord, get_globals: GetGlobals) -> None:
        """The completion callback: runs once, after every task was counted."""
        job: ResizeJob = await get_globals(ResizeJob)
        self.summary = (
            f"album {cluster.meta['album']!r}: {cluster.completed}/{cluster.total} photos "
            f"resized to {job.width} px, {cluster.failed} failed; largest "
            f"{job.largest} ({job.largest_size / 1e6:.1f} MB)"
        )
        self.finished.set()


def keep_largest(photo: Photo) -> Callable[[ResizeJob], ResizeJob]:
    """An update for ``update_message_cluster_globals``: it gets the *current*
    globals, and runs again if another task wrote them first."""

    def update(job: ResizeJob) -> ResizeJob:
        if photo.size <= job.largest_size:
            return job  # a larger photo was recorded meanwhile
        return msgspec.structs.replace(job, largest=photo.name, largest_size=photo.size)

    return update


async def resize(mc: Client, record: ParsedRecord[Photo]) -> None:
    """The task handler (the resizing itself is left to the imagination)."""
    photo = record.body
    job = await record.get_globals(ResizeJob)  # revalidated against S3: a 304 when unchanged
    if photo.name in FLAKY and record.receive_count == 1:
        raise TimeoutError(f"{photo.name}: storage timed out")
    if photo.size > job.largest_size:
        await mc.update_message_cluster_globals(record, keep_largest(photo), ResizeJob)


async def consumer(mc: Client, url: str, name: str, run: Run) -> None:
    """Receive a batch, skip what is done, handle the rest, count the batch in one
    transaction, run the completion callback where due, then acknowledge.

    Returns once the callback has run and the queue is drained.
    """
    while True:
        finished = run.finished.is_set()
        response = await mc.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0 if finished else 1,
            AttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            if finished:
                return
            continue
        records = [mc.read_sqs_record(message, Photo) for message in messages]
        done = await mc.is_complete_batch(records)  # one BatchGetItem
        todo = [record for record, skip in zip(records, done, strict=True) if not skip]
        completed: list[ParsedRecord[Photo]] = []
        failed: set[str] = set()  # message ids to leave on the queue for a retry
        for record in (r for r in todo if r.type is RecordType.TASK):
            try:
                await resize(mc, record)
            except Exception as exc:
                await mc.mark_failed(record, exc)  # appended to the task record's errors
                await mc.sqs.change_message_visibility(
                    QueueUrl=url,
                    ReceiptHandle=record.message.receipt_handle,
                    VisibilityTimeout=RETRY_AFTER_SECONDS,
                )
                failed.add(record.id)
                assert record.key is not None  # a cluster task: msgcluster's own
                run.retried.append(record.key)
            else:
                completed.append(record)
        await mc.mark_complete_batch(completed)  # one TransactWriteItems
        # The consumer that counts a cluster's last task runs its callback. The
        # completion event is the durable backup: whoever receives it runs the
        # callback if nobody has yet (exactly once either way).
        clusters = {r.cluster_key for r in completed if r.cluster_key is not None}
        events = [r for r in todo if r.type is RecordType.CLUSTER]
        for key_or_event in [*clusters, *events]:
            if await mc.on_cluster_complete(key_or_event, run.on_complete):
                run.callback_ran_in.append(name)
        acknowledged = [m for m in messages if m["MessageId"] not in failed]
        if acknowledged:
            await mc.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(acknowledged)
                ],
            )


def progress_bar(record: MessageClusterRecord, retried: int, width: int = 24) -> str:
    filled = width * (record.completed + record.failed) // max(record.total, 1)
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] "
        f"{record.completed:>{len(str(record.total))}}/{record.total} complete, "
        f"{record.failed} failed, {retried} retried"
    )


async def show_progress(mc: Client, key: RecordKey, run: Run, every: float = 0.3) -> None:
    """Poll the cluster record: one line redrawn in place on a terminal, else a
    line per quarter of the tasks."""
    tty = sys.stdout.isatty()
    shown, next_at = "", 0
    while True:
        finished = run.finished.is_set()
        record = await mc.get_message_cluster(key, consistent_read=True)
        line = progress_bar(record, len(run.retried))
        counted = record.completed + record.failed
        if tty:
            print(f"\r  {line}", end="", flush=True)
        elif line != shown and (finished or counted >= next_at):
            print(f"  {line}")
            shown, next_at = line, counted + record.total // 4
        if finished:
            break
        with anyio.move_on_after(every):
            await run.finished.wait()
    if tty:
        print()


def count_requests(mc: Client) -> Counter[str]:
    """Count every HTTP request the client sends to AWS, per service."""
    counts: Counter[str] = Counter()
    for service, client in (("DynamoDB", mc.dynamodb), ("S3", mc.s3), ("SQS", mc.sqs)):

        def count(service: str = service, **_: Any) -> None:
            counts[service] += 1

        client.meta.events.register(
            f"before-send.{client.meta.service_model.endpoint_prefix}", count
        )
    return counts


def requests_text(counts: Counter[str]) -> str:
    per_service = ", ".join(f"{service} {n}" for service, n in sorted(counts.items()))
    return f"{counts.total()} AWS requests ({per_service})"


def retry_text(task: MessageRecord) -> str:
    """What a task's record says about its failed attempts."""
    errors = ", ".join(f"receive {e.receive_count}: {e.type}({e.message!r})" for e in task.error)
    return f"task {task.id.rsplit(':', 1)[-1]} failed on {errors}; now {task.status.value}"


async def cluster_demo(mc: Client, url: str, requests: Counter[str]) -> None:
    before = requests.copy()
    key = await mc.create_message_cluster(
        url, photos(PHOTOS), meta={"album": "holiday-2024"}, globals=ResizeJob(width=1024)
    )
    created = requests.copy()
    print(f"  created cluster {key.pk} with {PHOTOS} tasks: {requests_text(created - before)}")
    run = Run()
    async with anyio.create_task_group() as tg:
        for n in range(1, CONSUMERS + 1):
            tg.start_soon(consumer, mc, url, f"consumer {n}", run)
        tg.start_soon(show_progress, mc, key, run)
    consumed = requests.copy()
    print(f"  callback result: {run.summary}")
    record = await mc.get_message_cluster(key, consistent_read=True)
    print(
        f"  cluster record: {record.status.value}, callback {record.callback_status} "
        f"(ran {len(run.callback_ran_in)}x, in {', '.join(run.callback_ran_in)})"
    )
    for task in await mc.get_message_records(run.retried, consistent_read=True):
        if task is not None:
            print(f"  {retry_text(task)}")
    print(f"  consuming took {requests_text(consumed - created)}, progress polls included")


async def main() -> None:
    started = time.perf_counter()
    print("msgcluster demo: tracked messages and a message cluster on an embedded local AWS (moto)")
    with LocalAWS() as aws:
        print(f"  local AWS at {aws.endpoint_url}")
        async with Client(
            table="demo",
            bucket="demo-bucket",
            **aws.settings(),
        ) as mc:
            requests = count_requests(mc)
            urls = await mc.provision(queues=["thumbnails", "photos"])
            url = urls["thumbnails"]
            queues = " and ".join(urls)
            print(f"  provisioned table 'demo', bucket 'demo-bucket', queues {queues} (+ DLQs)")
            await produce(mc, url)
            outcome = await consume(mc, url, expected=50)
            print(
                f"  consumed: {outcome['completed']} completed, {outcome['failed']} failed "
                f"attempts (recorded, then redelivered and completed), "
                f"{outcome['skipped']} duplicates skipped"
            )
            left = await mc.dynamodb.scan(TableName="demo", Select="COUNT")
            print(f"  records left in the table: {left['Count']} (completed records are removed)")
            print(f"message cluster: resize {PHOTOS} photos with {CONSUMERS} consumers")
            await cluster_demo(mc, urls["photos"], requests)
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    anyio.run(main)
