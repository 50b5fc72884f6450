"""Bodies too large for SQS: offloaded to S3 and read back; SQS Extended Client pointers."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import pytest
from conftest import as_lambda_record, client_for, queue_depth, receive_all, stored_keys
from faultproxy import FaultProxy, error

import msgcluster
from msgcluster import RecordKey
from msgcluster.local import LocalAWS

TWO_MIB = 2 * 1024 * 1024


class Blob(msgspec.Struct):
    name: str
    data: str


class Order(msgspec.Struct):
    order_id: int
    item: str


async def offloaded_objects(mc: msgcluster.Client, bucket: str) -> dict[str, int]:
    """``{key: size}`` of the bodies msgcluster stored in ``bucket``."""
    response = await mc.s3.list_objects_v2(Bucket=bucket, Prefix="SQSMessage$")
    return {o["Key"]: o["Size"] for o in response.get("Contents", [])}


async def queue_arn(mc: msgcluster.Client, url: str) -> str:
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(response["Attributes"]["QueueArn"])


async def test_two_mib_body_round_trip(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    body = Blob("big", "x" * TWO_MIB)
    key = await mc.send_message(queue_url, body, meta={"kind": "large"})

    record = await mc.get_message_record(key, consistent_read=True)
    assert record.body is None  # not copied onto the record
    assert record.body_size > TWO_MIB
    assert record.meta == {"kind": "large"}
    objects = await offloaded_objects(mc, names["bucket"])
    # The whole envelope is in S3, named after the record.
    ((object_key, object_size),) = objects.items()
    assert object_key == f"{key.pk}@message.payload.json"
    assert object_size > record.body_size

    (message,) = await receive_all(mc, queue_url, 1)
    # The SQS Extended Client's pointer and size attribute travel on SQS.
    assert json.loads(message["Body"]) == [
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": names["bucket"], "s3Key": object_key},
    ]
    assert message["MessageAttributes"]["ExtendedPayloadSize"] == {
        "DataType": "Number",
        "StringValue": str(object_size),
    }
    parsed = mc.read_sqs_record(message, body_type=Blob)  # no I/O: the key is in the pointer
    assert parsed.key == key
    assert parsed.tracked
    assert parsed.offloaded
    with pytest.raises(msgcluster.PayloadNotLoadedError, match="load_sqs_record") as info:
        _ = parsed.body
    assert info.value.message_id == message["MessageId"]

    loaded = await mc.load_sqs_record(message, body_type=Blob)
    assert loaded.body == body
    assert loaded.key == key
    assert loaded.url == queue_url
    lambda_record = as_lambda_record(message, await queue_arn(mc, queue_url))
    assert (await mc.load_sqs_record(lambda_record, body_type=Blob)).body == body
    assert (await mc.load_sqs_record(message)).body == {"name": "big", "data": body.data}

    # Completion never touches S3: the keys are in the envelope.
    assert not await mc.is_complete(message)
    assert await mc.mark_complete(loaded)
    assert await mc.is_complete(message)


async def test_large_bodies_in_a_batch(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    bodies: list[Any] = [
        Blob("small-0", "s"),
        Blob("big-1", "a" * TWO_MIB),
        Blob("small-2", "s"),
        Blob("big-3", "b" * 300_000),  # just over the 256 KiB SQS limit
    ]
    result = await mc.send_message_batch(queue_url, bodies)
    assert result.ok
    assert result.sent == 4
    objects = await offloaded_objects(mc, names["bucket"])
    records = await mc.get_message_records(result, consistent_read=True)
    assert all(records)
    expected = {f"{r.pk}@message.payload.json" for r in records[1::2] if r is not None}
    assert set(objects) == expected

    messages = await receive_all(mc, queue_url, 4)
    by_key = {mc.read_sqs_record(m).key: m for m in messages}
    for index, key in enumerate(result):
        assert key is not None
        message = by_key[key]
        assert mc.read_sqs_record(message).offloaded is (index % 2 == 1)
        loaded = await mc.load_sqs_record(message, body_type=Blob)
        assert loaded.body == bodies[index]


@pytest.mark.parametrize(
    ("pointer_class", "size_attribute"),
    [
        ("software.amazon.payloadoffloading.PayloadS3Pointer", "ExtendedPayloadSize"),
        ("com.amazon.sqs.javamessaging.MessageS3Pointer", "SQSLargePayloadSize"),  # 1.x
    ],
)
async def test_sqs_extended_client_pointer(
    mc: msgcluster.Client,
    queue_url: str,
    names: dict[str, str],
    pointer_class: str,
    size_attribute: str,
) -> None:
    # What the Extended Client stores: the whole original body, here the
    # envelope send_message would have sent.
    key = RecordKey(f"SQSMessage${uuid.uuid4()}", "SQSMessage$message")
    order = Order(7, "x" * 300_000)
    envelope = msgspec.json.encode(
        {"type": "message", "pk": key.pk, "rk": key.rk, "url": queue_url, "body": order}
    )
    s3_key = f"extended/{uuid.uuid4()}"
    await mc.s3.put_object(Bucket=names["bucket"], Key=s3_key, Body=envelope)
    await mc.sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps([pointer_class, {"s3BucketName": names["bucket"], "s3Key": s3_key}]),
        MessageAttributes={
            size_attribute: {"DataType": "Number", "StringValue": str(len(envelope))}
        },
    )
    (message,) = await receive_all(mc, queue_url, 1)

    # Not a msgcluster object name: what it holds is known only once loaded.
    unloaded = mc.read_sqs_record(message, body_type=Order)
    assert unloaded.offloaded
    assert not unloaded.tracked
    with pytest.raises(msgcluster.PayloadNotLoadedError, match="load_sqs_record"):
        _ = unloaded.body

    parsed = await mc.load_sqs_record(message, body_type=Order)
    assert parsed.body == order
    assert parsed.key == key
    assert parsed.url == queue_url
    assert parsed.id == message["MessageId"]
    lambda_record = as_lambda_record(message, await queue_arn(mc, queue_url))
    assert (await mc.load_sqs_record(lambda_record, body_type=Order)).body == order


async def test_safe_process_batch_reads_extended_pointers(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    """A Lambda batch holding Extended Client pointers: fetched, processed, completed."""
    key = await mc.send_message(queue_url, Order(1, "book"))
    (message,) = await receive_all(mc, queue_url, 1)
    # Re-shape the received message as the Extended Client would have sent it.
    await mc.s3.put_object(Bucket=names["bucket"], Key="extended/1", Body=message["Body"])
    pointer = as_lambda_record(message, await queue_arn(mc, queue_url))
    pointer["body"] = json.dumps(
        [
            "software.amazon.payloadoffloading.PayloadS3Pointer",
            {"s3BucketName": names["bucket"], "s3Key": "extended/1"},
        ]
    )
    pointer["messageAttributes"]["ExtendedPayloadSize"] = {
        "stringValue": str(len(message["Body"])),
        "dataType": "Number",
    }
    dangling = pointer | {
        "messageId": "dangling",
        "body": pointer["body"].replace("extended/1", "extended/none"),
    }
    seen: list[Order] = []
    result = await mc.safe_process_batch(
        {"Records": [pointer, dangling]}, lambda parsed: seen.append(parsed.body), body_type=Order
    )
    assert result == {"batchItemFailures": [{"itemIdentifier": "dangling"}]}
    assert seen == [Order(1, "book")]
    with pytest.raises(msgcluster.RecordNotFoundError):  # completed: the record is removed
        await mc.get_message_record(key, consistent_read=True)


async def test_two_extended_pointers_to_one_tracked_message_complete_together(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    """Two deliveries known to be the same record only once their payloads are
    read: its record is deleted once (BatchWriteItem refuses a key twice, which
    failed the whole batch)."""
    key = await mc.send_message(queue_url, Order(2, "lamp"))
    (message,) = await receive_all(mc, queue_url, 1)
    arn = await queue_arn(mc, queue_url)
    records = []
    for copy in ("copy-1", "copy-2"):
        await mc.s3.put_object(Bucket=names["bucket"], Key=copy, Body=message["Body"])
        record = as_lambda_record(message, arn) | {"messageId": copy}
        record["body"] = json.dumps(
            [
                "software.amazon.payloadoffloading.PayloadS3Pointer",
                {"s3BucketName": names["bucket"], "s3Key": copy},
            ]
        )
        record["messageAttributes"] = {
            "ExtendedPayloadSize": {"stringValue": str(len(message["Body"])), "dataType": "Number"}
        }
        records.append(record)
    result = await mc.safe_process_batch({"Records": records}, lambda parsed: None, body_type=Order)
    assert result == {"batchItemFailures": []}
    with pytest.raises(msgcluster.RecordNotFoundError):
        await mc.get_message_record(key, consistent_read=True)


async def test_extended_pointer_to_missing_object(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    await mc.sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(
            [
                "software.amazon.payloadoffloading.PayloadS3Pointer",
                {"s3BucketName": names["bucket"], "s3Key": "extended/missing"},
            ]
        ),
        MessageAttributes={"ExtendedPayloadSize": {"DataType": "Number", "StringValue": "10"}},
    )
    (message,) = await receive_all(mc, queue_url, 1)
    with pytest.raises(msgcluster.ObjectNotFoundError) as info:
        await mc.load_sqs_record(message)
    assert f"s3://{names['bucket']}/extended/missing" in str(info.value)
    assert "is gone" in str(info.value)
    assert info.value.code == "NoSuchKey"
    # Someone else's payload: no msgcluster record to check or complete.
    assert await mc.is_complete(message) is False
    assert await mc.mark_complete(message) is False


async def test_offloaded_body_that_expired(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    key = await mc.send_message(queue_url, "y" * 300_000)
    ((s3_key, _),) = (await offloaded_objects(mc, names["bucket"])).items()
    await mc.s3.delete_object(Bucket=names["bucket"], Key=s3_key)  # as the lifecycle rule would
    (message,) = await receive_all(mc, queue_url, 1)
    assert mc.read_sqs_record(message).key == key  # keys still readable
    with pytest.raises(msgcluster.ObjectNotFoundError, match="expired after the retention"):
        await mc.load_sqs_record(message)


async def test_refused_large_send_removes_record_and_object(
    local_aws: LocalAWS,
    mc: msgcluster.Client,
    queue_url: str,
    names: dict[str, str],
    proxy: FaultProxy,
) -> None:
    proxy.add_rule("SendMessageBatch", error(400, "InvalidParameterValue", "refused"), times=1)
    async with client_for(local_aws, names, endpoint_url=proxy.url, max_attempts=1) as pc:
        with pytest.raises(msgcluster.AwsValidationError, match="refused"):
            await pc.send_message(queue_url, Blob("big", "z" * TWO_MIB))
    assert proxy.count("S3 PUT") == 1  # the body went to S3 before the record was written
    assert await offloaded_objects(mc, names["bucket"]) == {}
    assert await stored_keys(mc, names["table"]) == set()
    assert await queue_depth(mc, queue_url) == 0
