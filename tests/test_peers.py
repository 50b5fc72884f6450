"""Messages msgcluster did not write, from real peers, through every entry point.

- AWS's SQS Extended Client (``amazon-sqs-extended-client``, boto3) sends
  300 KB and 2 MB bodies offloaded to S3: the Client, ``safe_process_batch``,
  the Lambda adapter and the ``sqs://`` worker (``bytes`` and typed handlers)
  read them; and the Extended Client reads what msgcluster offloads.
- Powertools' sample SQS events (``tests/events/powertools``): every record
  reaches the handler with the body Powertools' own ``BatchProcessor`` gives.
- Celery (``benchmarks/bench_chord_peer.py``): the counting proxy the chord
  benchmark measures with, and a 5-task chord run the way it runs one (kombu's
  SQS transport, the DynamoDB result backend), so the benchmark cannot rot
  unnoticed. On moto only: the benchmark runs there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import boto3
import msgspec
import pytest
from conftest import as_lambda_record, client_for, receive_all
from emulators import EMULATOR
from sqs_extended_client import SQSExtendedClientSession

import msgcluster
from benchmarks._countproxy import CountingProxy
from benchmarks.bench_chord_peer import run_celery
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.local import LocalAWS
from msgcluster.worker import App, Outcome, Worker

POWERTOOLS_EVENTS = Path(__file__).parent / "events" / "powertools"
SIZES = {"300KB": 300_000, "2MB": 2 * 1024 * 1024}


class Blob(msgspec.Struct):
    name: str
    data: str


@pytest.fixture
def extended(
    local_aws: LocalAWS, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The AWS SQS Extended Client, offloading to this test's bucket on the local server."""
    # Its S3 client is created inside the session without our arguments: the
    # standard botocore setting points it at the local server too.
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_aws.endpoint_url)
    session = SQSExtendedClientSession(
        aws_access_key_id=local_aws.aws_access_key_id,
        aws_secret_access_key=local_aws.aws_secret_access_key,
        region_name=local_aws.region,
    )
    client = session.client("sqs", endpoint_url=local_aws.endpoint_url)
    client.large_payload_support = names["bucket"]
    yield client
    client.close()


async def peer_send(extended: Any, url: str, body: str, **options: Any) -> str:
    response = await anyio.to_thread.run_sync(
        lambda: extended.send_message(QueueUrl=url, MessageBody=body, **options)
    )
    return str(response["MessageId"])


async def queue_arn(mc: msgcluster.Client, url: str) -> str:
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(response["Attributes"]["QueueArn"])


def blob_json(size: int) -> str:
    return msgspec.json.encode(Blob("peer", "x" * size)).decode()


# --------------------------------------------------------------------------- Extended -> us


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
async def test_extended_client_messages_read_by_the_client(
    mc: msgcluster.Client, queue_url: str, extended: Any, size: int
) -> None:
    body = blob_json(size)
    await peer_send(extended, queue_url, body)
    (message,) = await receive_all(mc, queue_url, 1)
    assert len(message["Body"]) < 1_000  # the pointer travelled, the body is in S3

    unloaded = mc.read_sqs_record(message)  # no I/O
    assert unloaded.offloaded
    assert not unloaded.tracked
    with pytest.raises(msgcluster.PayloadNotLoadedError, match="load_sqs_record"):
        _ = unloaded.body
    assert (await mc.load_sqs_record(message, body_type=str)).body == body
    assert (await mc.load_sqs_record(message, body_type=bytes)).body == body.encode()
    assert (await mc.load_sqs_record(message, body_type=Blob)).body == Blob("peer", "x" * size)
    # Someone else's message: nothing to check or complete in msgcluster's table.
    assert await mc.is_complete(message) is False
    assert await mc.mark_complete(message) is False


async def test_extended_client_messages_in_safe_process_batch(
    mc: msgcluster.Client, queue_url: str, extended: Any
) -> None:
    bodies = {size: blob_json(size) for size in SIZES.values()}
    for body in bodies.values():
        await peer_send(extended, queue_url, body)
    arn = await queue_arn(mc, queue_url)
    event = {"Records": [as_lambda_record(m, arn) for m in await receive_all(mc, queue_url, 2)]}
    seen: dict[int, tuple[str, bool]] = {}

    async def process(record: Any) -> None:
        # The documented SQS record (raw body: the pointer) and the parsed view.
        assert "PayloadS3Pointer" in record["body"]
        assert record["messageId"] == record.id
        seen[len(record.body.data)] = (record.body.name, record.offloaded)

    result = await mc.safe_process_batch(event, process, body_type=Blob)
    assert result == {"batchItemFailures": []}
    assert seen == {size: ("peer", True) for size in SIZES.values()}


async def test_extended_client_messages_in_the_lambda_adapter(
    mc: msgcluster.Client,
    queue_url: str,
    extended: Any,
    local_aws: LocalAWS,
    names: dict[str, str],
) -> None:
    await peer_send(extended, queue_url, blob_json(SIZES["300KB"]))
    arn = await queue_arn(mc, queue_url)
    event = {"Records": [as_lambda_record(m, arn) for m in await receive_all(mc, queue_url, 1)]}
    app = App(client=client_for(local_aws, names))
    seen: list[int] = []

    @app.handler(Blob)
    async def handle(blob: Blob) -> None:
        seen.append(len(blob.data))

    handler = lambda_handler(app)
    try:
        result = await anyio.to_thread.run_sync(handler, event, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert result == {"batchItemFailures": []}
    assert seen == [SIZES["300KB"]]


@pytest.mark.parametrize("typed", [False, True], ids=["bytes", "typed"])
async def test_extended_client_messages_in_the_sqs_worker(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str], extended: Any, typed: bool
) -> None:
    bodies = [blob_json(size) for size in SIZES.values()]
    for body in bodies:
        await peer_send(extended, queue_url, body)
    app = App(client=mc)
    seen: list[Any] = []
    if typed:

        @app.handler(Blob)
        async def handle_blob(blob: Blob) -> None:
            seen.append(blob)

    else:

        @app.handler(bytes)
        async def handle_bytes(data: bytes) -> None:
            seen.append(data)

    worker = Worker(
        app,
        f"sqs://{names['queue']}",
        burst=True,
        wait_seconds=1,
        handle_signals=False,
        queue_options={"client": mc.sqs},
    )
    stats = await worker.run()
    assert stats[Outcome.SUCCEEDED] == 2
    if typed:
        expected: list[Any] = [msgspec.json.decode(b, type=Blob) for b in bodies]
    else:
        expected = [b.encode() for b in bodies]
    assert sorted(seen, key=lambda value: len(value.data if typed else value)) == expected
    assert await queue_depth_of(mc, queue_url) == 0


async def queue_depth_of(mc: msgcluster.Client, url: str) -> int:
    from conftest import queue_depth

    return await queue_depth(mc, url)


# --------------------------------------------------------------------------- us -> Extended


async def test_extended_client_reads_what_msgcluster_offloads(
    mc: msgcluster.Client, queue_url: str, extended: Any
) -> None:
    big = Blob("ours", "y" * SIZES["300KB"])
    key = await mc.send_message(queue_url, big, meta={"m": 1})
    batch = await mc.send_message_batch(queue_url, [Blob("batch", "z" * SIZES["2MB"]), "small"])

    def receive() -> list[dict[str, Any]]:
        got: dict[str, dict[str, Any]] = {}
        for _ in range(20):
            response = extended.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                got[message["MessageId"]] = message
            if len(got) == 3:
                break
        return list(got.values())

    messages = await anyio.to_thread.run_sync(receive)
    envelopes = {}
    for message in messages:
        # What the Extended Client hands its users: the body msgcluster would have
        # sent inline (the envelope), never a pointer, and no size attribute.
        envelope = json.loads(message["Body"])
        assert "ExtendedPayloadSize" not in message.get("MessageAttributes", {})
        envelopes[envelope["pk"]] = envelope
    assert envelopes[key.pk]["body"] == {"name": "ours", "data": big.data}
    first, second = batch.keys
    assert first is not None
    assert second is not None
    assert envelopes[first.pk]["body"]["data"] == "z" * SIZES["2MB"]
    assert envelopes[second.pk]["body"] == "small"
    # And each of them is still msgcluster's: it reads back as the tracked message.
    for message in messages:
        parsed = await mc.load_sqs_record(message)
        assert parsed.tracked
        assert parsed.key is not None
        assert await mc.mark_complete(parsed)


# --------------------------------------------------------------------------- Powertools


def powertools_events() -> list[str]:
    return sorted(path.name for path in POWERTOOLS_EVENTS.glob("*.json"))


def powertools_bodies(event: dict[str, Any]) -> list[str]:
    """What Powertools' BatchProcessor hands a record handler, per record."""
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    seen: list[str] = []

    def handler(record: Any) -> None:
        seen.append(record.body)

    result = process_partial_response(
        event=event, record_handler=handler, processor=BatchProcessor(EventType.SQS), context=None
    )
    assert result == {"batchItemFailures": []}
    return seen


@pytest.mark.parametrize("name", powertools_events())
async def test_powertools_sample_events(
    mc: msgcluster.Client, local_aws: LocalAWS, names: dict[str, str], name: str
) -> None:
    event = json.loads((POWERTOOLS_EVENTS / name).read_text())
    expected = powertools_bodies(event)
    assert expected == [record["body"] for record in event["Records"]]

    # safe_process_batch: the documented record (mapping) and the parsed view.
    seen: list[tuple[str, str, str]] = []
    result = await mc.safe_process_batch(
        event, lambda record: seen.append((record["body"], record.body, record["messageId"]))
    )
    assert result == {"batchItemFailures": []}
    assert seen == [(b, b, r["messageId"]) for b, r in zip(expected, event["Records"], strict=True)]

    # A str handler, with and without a Client, under the Lambda adapter.
    for client in (None, client_for(local_aws, names)):
        assert await text_handler_under_lambda(client, event) == expected


async def text_handler_under_lambda(
    client: msgcluster.Client | None, event: dict[str, Any]
) -> list[str]:
    app = App(client=client)
    texts: list[str] = []

    @app.handler(str)
    async def text(body: str) -> None:
        texts.append(body)

    handler = lambda_handler(app)
    try:
        result = await anyio.to_thread.run_sync(handler, event, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert result == {"batchItemFailures": []}
    return texts


async def test_powertools_bodies_through_the_sqs_worker(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    bodies = [
        body for name in powertools_events() for body in powertools_bodies(
            json.loads((POWERTOOLS_EVENTS / name).read_text())
        )
    ]  # fmt: skip
    for body in bodies:
        await mc.sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    app = App(client=mc)
    texts: list[str] = []

    @app.handler(str)
    async def text(body: str) -> None:
        texts.append(body)

    stats = await Worker(
        app,
        f"sqs://{names['queue']}",
        burst=True,
        wait_seconds=1,
        handle_signals=False,
        queue_options={"client": mc.sqs},
    ).run()
    assert stats[Outcome.SUCCEEDED] == len(bodies)
    assert sorted(texts) == sorted(bodies)


async def test_a_body_with_pointer_like_keys_is_an_ordinary_body() -> None:
    """Only the Extended Client's exact pointer (and its size attribute) is one:
    an object with ``s3BucketName`` and ``s3Key`` reaches its handler."""
    body = '{"s3BucketName": "uploads", "s3Key": "img/cat.png"}'
    event = json.loads((POWERTOOLS_EVENTS / "sqsEvent.json").read_text())
    event["Records"][1]["body"] = body
    app = App()
    seen: list[dict[str, str]] = []

    @app.handler(dict)
    async def upload(payload: dict[str, str]) -> None:
        seen.append(payload)

    @app.handler(str)
    async def text(body: str) -> None:
        pass

    handler = lambda_handler(app)
    try:
        result = await anyio.to_thread.run_sync(handler, event, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert result == {"batchItemFailures": []}
    assert seen == [{"s3BucketName": "uploads", "s3Key": "img/cat.png"}]


async def test_open_queue_offloads_in_the_extended_format_both_ways(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str], extended: Any
) -> None:
    """``open_queue(..., payloads=PayloadStore(s3, bucket))``: what it sends the
    Extended Client reads, and what the Extended Client sends it receives whole."""
    from msgcluster.queues import OutgoingMessage, PayloadStore, open_queue

    ours, theirs = "o" * SIZES["300KB"], "t" * SIZES["2MB"]
    store = PayloadStore(mc.s3, names["bucket"])
    async with open_queue(queue_url, client=mc.sqs, payloads=store) as queue:
        sent = await queue.send([OutgoingMessage(body=ours, attributes={"k": "v"}), "small"])
        assert all(r.ok for r in sent)

        def peer_receive() -> dict[str, dict[str, Any]]:
            got: dict[str, dict[str, Any]] = {}
            for _ in range(20):
                response = extended.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                    MessageAttributeNames=["All"],
                )  # fmt: skip
                for message in response.get("Messages", []):
                    got[message["Body"][:5]] = message
                if len(got) == 2:
                    return got
            return got

        got = await anyio.to_thread.run_sync(peer_receive)
        assert got["ooooo"]["Body"] == ours
        assert got["ooooo"]["MessageAttributes"]["k"]["StringValue"] == "v"
        assert got["small"]["Body"] == "small"
        for message in got.values():
            receipt = message["ReceiptHandle"]
            await anyio.to_thread.run_sync(
                lambda r=receipt: extended.delete_message(QueueUrl=queue_url, ReceiptHandle=r)
            )

        await peer_send(extended, queue_url, theirs)
        received = []
        with anyio.fail_after(20):
            while not received:
                received = await queue.receive(wait_seconds=1)
        (message,) = received
        assert message.body == theirs.encode()
        assert "ExtendedPayloadSize" not in message.attributes
        assert all(r.ok for r in await queue.ack(received))


# --------------------------------------------------------------------------- Celery chord peer

moto_only = pytest.mark.skipif(EMULATOR != "moto", reason="the chord benchmark runs on moto")


@moto_only
def test_counting_proxy_counts_requests_and_delivers_sends_twice(
    local_aws: LocalAWS, names: dict[str, str]
) -> None:
    with CountingProxy(local_aws.endpoint_url) as proxy:
        kwargs = {**local_aws.client_kwargs(), "endpoint_url": proxy.url}
        sqs, ddb = boto3.client("sqs", **kwargs), boto3.client("dynamodb", **kwargs)
        url = sqs.create_queue(QueueName=names["queue"])["QueueUrl"]
        ddb.list_tables()
        assert proxy.counts(reset=True) == {"sqs.CreateQueue": 1, "dynamodb.ListTables": 1}

        proxy.duplicate_queues.add(names["queue"])
        sqs.send_message(QueueUrl=url, MessageBody="one")
        entries = [{"Id": str(i), "MessageBody": f"batch {i}"} for i in range(2)]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
        bodies: list[str] = []
        for _ in range(10):
            response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
            bodies += [m["Body"] for m in response.get("Messages", [])]
            if len(bodies) >= 6:
                break
        assert sorted(bodies) == sorted(["one", "batch 0", "batch 1"] * 2)
        counts = proxy.counts()
        assert counts["sqs.SendMessage"] == counts["sqs.SendMessageBatch"] == 1  # as sent
        assert proxy.injected() == {"sqs.SendMessage": 1, "sqs.SendMessageBatch": 1}


@moto_only
def test_celery_chord_peer_runs_its_callback_once(local_aws: LocalAWS) -> None:
    """Five header tasks and one callback on kombu's SQS transport and the
    DynamoDB backend, as the benchmark runs them (warm-up first)."""
    with CountingProxy(local_aws.endpoint_url) as proxy:
        run = run_celery(local_aws, proxy, 5, 2, False)
    assert (run.runs, run.distinct, run.callbacks, run.callback_ok) == (5, 5, 1, True)
    assert run.counts["dynamodb.UpdateItem"] == 5  # the chord counter, once per header task
    assert run.counts["sqs.SendMessage"] == 6  # five header tasks and the callback
