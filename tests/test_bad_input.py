"""Bad input gets a typed error with an actionable message, and nothing is written.

Sends go through the fault proxy (with no rules) so the tests can assert the
strongest form of "nothing written": the only request made was the read of
the queue's attributes. The table and queue are then inspected directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from conftest import client_for, queue_depth, receive_all, stored_keys
from faultproxy import FaultProxy

import msgcluster
from msgcluster import OutgoingMessage, RecordKey
from msgcluster.local import LocalAWS


class Order(msgspec.Struct):
    order_id: int
    item: str


@pytest.fixture
async def bare(local_aws: LocalAWS, proxy: FaultProxy) -> AsyncIterator[msgcluster.Client]:
    """A client through the proxy with nothing provisioned: for checks that need no AWS."""
    async with client_for(
        local_aws, {"table": "unused", "bucket": "unused"}, endpoint_url=proxy.url
    ) as client:
        yield client


async def assert_nothing_written(
    mc: msgcluster.Client, proxy: FaultProxy | None, names: dict[str, str], *urls: str
) -> None:
    if proxy is not None:
        operations = {entry.label.rsplit(".", 1)[-1] for entry in proxy.requests}
        assert operations <= {"GetQueueAttributes"}, proxy.requests
    assert await stored_keys(mc, names["table"]) == set()
    for url in urls:
        assert await queue_depth(mc, url) == 0
    if mc.settings.bucket:
        objects = await mc.s3.list_objects_v2(Bucket=mc.settings.bucket)
        assert objects.get("KeyCount", 0) == 0


def envelope(**fields: Any) -> str:
    return json.dumps({"type": "message", **fields})


# --------------------------------------------------------------------------- sends

REJECTED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    (
        "meta too large",
        {"body": 1, "meta": "m" * 40_000},
        msgcluster.MetaTooLargeError,
        "meta is 40,002 bytes encoded; the limit is 32,768",
    ),
    (
        "body not encodable",
        {"body": object()},
        msgcluster.ValidationError,
        "body cannot be encoded as JSON: Encoding objects of type object is unsupported",
    ),
    (
        "meta not encodable",
        {"body": 1, "meta": {"when": object()}},
        msgcluster.ValidationError,
        "meta cannot be encoded as JSON",
    ),
    (
        "meta outside DynamoDB numbers",
        {"body": 1, "meta": {"x": 1e300}},
        msgcluster.ValidationError,
        "1e+300 is outside DynamoDB's number range",
    ),
    (
        "group_id on a standard queue",
        {"body": 1, "group_id": "g"},
        msgcluster.ValidationError,
        "is a standard queue: group_id/dedup_id need a FIFO queue",
    ),
    (
        "dedup_id on a standard queue",
        {"body": 1, "dedup_id": "d"},
        msgcluster.ValidationError,
        "is a standard queue",
    ),
    (
        "negative delay",
        {"body": 1, "delay_seconds": -1},
        msgcluster.ValidationError,
        "delay_seconds must be an int in 0..900",
    ),
    (
        "delay over 15 minutes",
        {"body": 1, "delay_seconds": 901},
        msgcluster.ValidationError,
        "delay_seconds must be an int in 0..900",
    ),
    (
        "delay not an int",
        {"body": 1, "delay_seconds": "5"},
        msgcluster.ValidationError,
        "delay_seconds must be an int",
    ),
    (
        "attributes not a mapping",
        {"body": 1, "attributes": ["tenant"]},
        msgcluster.ValidationError,
        "attributes must be a mapping, got list",
    ),
    (
        "too many attributes",
        {"body": 1, "attributes": {f"a{n}": n for n in range(11)}},
        msgcluster.ValidationError,
        "at most 10 message attributes",
    ),
    (
        "reserved attribute name",
        {"body": 1, "attributes": {"AWS.trace": "x"}},
        msgcluster.ValidationError,
        "attribute name 'AWS.trace' is reserved",
    ),
    (
        "attribute of unsupported type",
        {"body": 1, "attributes": {"tags": ["a"]}},
        msgcluster.ValidationError,
        "message attribute 'tags' has unsupported type list",
    ),
    (
        "attribute mapping without a value",
        {"body": 1, "attributes": {"k": {"DataType": "String"}}},
        msgcluster.ValidationError,
        "message attribute 'k': a mapping needs 'DataType' and 'StringValue'",
    ),
    (
        "attributes that cannot fit",
        {"body": 1, "attributes": {"k": "x" * 300_000}},
        msgcluster.MessageTooLargeError,
        "message attributes take 300,007 bytes",
    ),
]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
async def test_rejected_send_writes_nothing(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        await pc.send_message(queue_url, **options)
    await assert_nothing_written(mc, proxy, names, queue_url)

    # The same entry in a batch is reported with the same error, per entry.
    body = options.pop("body")
    result = await pc.send_message_batch(
        queue_url, [OutgoingMessage(body=body, **options)], raise_on_failure=False
    )
    (failure,) = result.failures
    assert failure.index == 0
    assert failure.code == error.__name__
    assert message in failure.message
    assert failure.sender_fault
    assert failure.key is None
    assert list(result) == [None]
    await assert_nothing_written(mc, proxy, names, queue_url)


async def test_fifo_queue_needs_group_id(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    fifo_url = (await mc.provision(queues=[names["fifo"]]))[names["fifo"]]
    with pytest.raises(msgcluster.ValidationError, match="is FIFO: group_id is required") as info:
        await mc.send_message(fifo_url, {"n": 1})
    assert fifo_url in str(info.value)
    with pytest.raises(msgcluster.ValidationError, match="FIFO queues do not support per-message"):
        await mc.send_message(fifo_url, {"n": 1}, group_id="g", delay_seconds=5)
    with pytest.raises(msgcluster.BatchSendError, match="2 of 2") as batch_info:
        await mc.send_message_batch(fifo_url, [{"n": 1}, {"n": 2}])
    assert all("group_id is required" in f.message for f in batch_info.value.result.failures)
    await assert_nothing_written(mc, None, names, fifo_url, queue_url)

    # The same message with a group id goes through (the check is not over-eager).
    key = await mc.send_message(fifo_url, {"n": 1}, group_id="g")
    (message,) = await receive_all(mc, fifo_url, 1)
    assert mc.read_sqs_record(message).key == key


async def test_queue_that_does_not_exist(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    missing = queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    with pytest.raises(msgcluster.QueueNotFoundError) as info:
        await pc.send_message(missing, {"n": 1})
    assert missing in str(info.value)
    assert "does not exist" in str(info.value)
    assert "or create the queue with Client.provision(queues=[...])" in str(info.value)
    assert info.value.operation == "GetQueueAttributes"
    with pytest.raises(msgcluster.QueueNotFoundError):
        await pc.send_message_batch(missing, [{"n": 1}])
    await assert_nothing_written(mc, proxy, names, queue_url)


@pytest.mark.parametrize("url", ["jobs", "", None, 42])
async def test_queue_url_that_is_not_a_url(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
    url: Any,
) -> None:
    expected = "a queue is an SQS queue URL (https://sqs.<region>.amazonaws.com/"
    with pytest.raises(msgcluster.ValidationError, match=re.escape(expected)):
        await pc.send_message(url, {"n": 1})
    with pytest.raises(msgcluster.ValidationError, match=re.escape(expected)):
        await pc.send_message_batch(url, [{"n": 1}])
    assert proxy.requests == []  # rejected before any request
    await assert_nothing_written(mc, proxy, names, queue_url)


async def test_bodies_must_be_an_iterable_of_bodies(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    with pytest.raises(msgcluster.ValidationError, match="not a single str/bytes"):
        await pc.send_message_batch(queue_url, "abc")
    await assert_nothing_written(mc, proxy, names, queue_url)


async def test_large_body_without_a_bucket(
    local_aws: LocalAWS,
    mc: msgcluster.Client,
    queue_url: str,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MSGCLUSTER_BUCKET", raising=False)
    async with client_for(local_aws, {**names, "bucket": ""}) as no_bucket:
        assert no_bucket.settings.bucket is None
        with pytest.raises(msgcluster.ConfigurationError) as info:
            await no_bucket.send_message(queue_url, "x" * 300_000)
        assert str(info.value) == (
            "a body larger than max_message_bytes needs an S3 bucket: pass "
            "Client(bucket=...) or set MSGCLUSTER_BUCKET"
        )
        await assert_nothing_written(mc, None, names, queue_url)

        result = await no_bucket.send_message_batch(
            queue_url, ["small", "x" * 300_000], raise_on_failure=False
        )
        (failure,) = result.failures
        assert failure.index == 1
        assert failure.code == "ConfigurationError"
        assert failure.sender_fault  # retrying the same entry cannot help
        assert "needs an S3 bucket" in failure.message
        assert result.sent == 1
        assert await stored_keys(mc, names["table"]) == {result[0]}


# --------------------------------------------------------------------------- reading


MALFORMED: list[tuple[str, object, str]] = [
    ("not a dict", "just a string", "expected an SQS record"),
    ("missing messageId", {"body": "{}"}, "SQS record has no 'messageId'/'MessageId'"),
    ("empty messageId", {"messageId": "", "body": "{}"}, "has no 'messageId'"),
    ("body not a string", {"messageId": "m-1", "body": 5}, "SQS record m-1 has no string 'body'"),
    ("missing body", {"MessageId": "m-1"}, "SQS record m-1 has no string 'body'/'Body'"),
    (
        "attributes not an object",
        {"messageId": "m-1", "body": "{}", "attributes": ["x"]},
        "SQS record m-1 has non-object attributes",
    ),
]


@pytest.mark.parametrize(
    ("record", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
async def test_malformed_sqs_records(
    bare: msgcluster.Client, proxy: FaultProxy, record: object, message: str
) -> None:
    with pytest.raises(msgcluster.MalformedEventError, match=re.escape(message)):
        bare.read_sqs_record(record)
    with pytest.raises(msgcluster.MalformedEventError, match=re.escape(message)):
        await bare.load_sqs_record(record)
    with pytest.raises(msgcluster.MalformedEventError):
        await bare.is_complete(record)
    with pytest.raises(msgcluster.MalformedEventError):
        await bare.mark_complete(record)
    assert proxy.requests == []  # no AWS call for a record that cannot be read


PLAIN_BODIES: list[tuple[str, str]] = [
    ("not JSON", "hello world"),
    ("truncated JSON", '{"type": "message", "pk"'),
    ("JSON but no type", '{"order_id": 1}'),
    ("JSON array", "[1, 2]"),
    ("unknown envelope type", json.dumps({"type": "batch", "pk": "SQSMessage$a", "rk": "b"})),
    ("no keys", envelope(url="http://x")),
    ("pointer-like keys only", '{"s3BucketName": "uploads", "s3Key": "img/cat.png"}'),
]


@pytest.mark.parametrize(("body"), [c[1] for c in PLAIN_BODIES], ids=[c[0] for c in PLAIN_BODIES])
async def test_bodies_msgcluster_did_not_send_are_plain(
    bare: msgcluster.Client, proxy: FaultProxy, body: str
) -> None:
    """Not an envelope: a plain message, read as it is, with no record to touch."""
    record = {"messageId": "m-1", "body": body}
    parsed = bare.read_sqs_record(record)
    assert (parsed.tracked, parsed.key, parsed.body, parsed["body"]) == (False, None, body, body)
    assert (await bare.load_sqs_record(record, body_type=str)).body == body
    assert await bare.is_complete(record) is False
    assert await bare.mark_complete(record) is False
    assert await bare.mark_failed(record, "boom") is None
    assert proxy.requests == []


async def test_envelope_with_keys_of_the_wrong_shape(
    bare: msgcluster.Client, proxy: FaultProxy
) -> None:
    record = {"messageId": "m-1", "body": envelope(pk="a", rk="b", body=1)}
    with pytest.raises(msgcluster.EnvelopeError, match="message m-1 carries an invalid record key"):
        await bare.mark_complete(record)
    assert proxy.requests == []


async def test_body_that_does_not_match_body_type(mc: msgcluster.Client, queue_url: str) -> None:
    await mc.send_message(queue_url, {"order_id": "seven", "item": "book"})
    (message,) = await receive_all(mc, queue_url, 1)
    message_id = message["MessageId"]
    expected = (
        f"message {message_id}: body does not match Order: "
        "Expected `int`, got `str` - at `$.order_id`"
    )
    with pytest.raises(msgcluster.BodyDecodeError, match=re.escape(expected)) as info:
        mc.read_sqs_record(message, body_type=Order)
    assert info.value.message_id == message_id
    with pytest.raises(msgcluster.BodyDecodeError, match=re.escape(expected)):
        await mc.load_sqs_record(message, body_type=Order)
    with pytest.raises(msgcluster.BodyDecodeError, match=r"does not match list\[int\]"):
        mc.read_sqs_record(message, body_type=list[int])
    # The keys are still readable: the message can be completed or failed.
    assert not await mc.is_complete(message)
    assert mc.read_sqs_record(message).body == {"order_id": "seven", "item": "book"}


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("x", "a record key must be a RecordKey, a mapping with 'pk' and 'rk'"),
        ({"pk": "SQSMessage$a"}, "a record key must be a RecordKey"),
        (("a", "b"), "RecordKey.pk must be a string starting with 'SQSMessage$', got 'a'"),
        (["SQSMessage$a", 7], "RecordKey.rk must be a string starting with 'SQSMessage$'"),
        (("SQSMessage$" + "a" * 1_100, "SQSMessage$m"), "RecordKey.pk is longer than 1024"),
    ],
)
async def test_keys_of_the_wrong_shape(
    bare: msgcluster.Client, proxy: FaultProxy, key: object, message: str
) -> None:
    with pytest.raises(msgcluster.InvalidKeyError, match=re.escape(message)):
        await bare.get_message_record(key)
    with pytest.raises(msgcluster.InvalidKeyError, match=re.escape(message)):
        await bare.get_message_records([key])
    with pytest.raises(msgcluster.InvalidKeyError, match=re.escape(message)):
        await bare.update_message_record(key, meta=1)
    assert proxy.requests == []


def test_record_key_validates() -> None:
    with pytest.raises(msgcluster.InvalidKeyError, match=r"RecordKey.pk must be a string"):
        RecordKey("a", "b")
    with pytest.raises(msgcluster.InvalidKeyError, match=r"RecordKey.rk must be a string"):
        RecordKey("SQSMessage$a", "b")
    assert isinstance(msgcluster.InvalidKeyError("x"), msgcluster.ValidationError)
    assert isinstance(msgcluster.InvalidKeyError("x"), ValueError)
