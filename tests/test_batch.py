"""send_message_batch at scale and under injected faults (and send_message under faults).

Every request goes to a real moto server; the faults moto never produces
(partial failures, throttling, lost responses) come from the fault proxy. A
client routed through the proxy (``pc``) sends, while the direct client
(``mc``) inspects the queue and the table, so inspection does not disturb the
proxy's request counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from conftest import client_for, queue_depth, receive_all, stored_keys
from faultproxy import (
    FaultProxy,
    ProxyRequest,
    drop_response,
    error,
    fail_sqs_batch_entries,
    passthrough,
    throttle,
    unprocessed_dynamodb_items,
)

import msgcluster
from msgcluster import OutgoingMessage, RecordKey, Status
from msgcluster.local import LocalAWS
from msgcluster.messages._sending import WINDOW


class Order(msgspec.Struct):
    order_id: int
    item: str


@pytest.fixture
async def pc1(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, proxy: FaultProxy
) -> AsyncIterator[msgcluster.Client]:
    """Like ``pc`` with ``max_attempts=1``: botocore does not retry, faults surface."""
    async with client_for(local_aws, names, endpoint_url=proxy.url, max_attempts=1) as client:
        yield client


def capture_entries(proxy: FaultProxy) -> list[list[dict[str, Any]]]:
    """Record the Entries of every SendMessageBatch the proxy forwards (one list per request)."""
    requests: list[list[dict[str, Any]]] = []

    def matcher(request: ProxyRequest) -> bool:
        if request.operation == "SendMessageBatch":
            requests.append(request.json()["Entries"])
        return False  # never "matches": the request is forwarded untouched

    proxy.add_rule(matcher, passthrough())
    return requests


def bodies_of(mc: msgcluster.Client, messages: list[dict[str, Any]]) -> list[Any]:
    return sorted(
        (mc.read_sqs_record(m).body for m in messages), key=lambda b: msgspec.json.encode(b)
    )


# --------------------------------------------------------------------------- happy paths


async def test_thousand_messages_batched_exactly(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    count = 1_000
    result = await pc.send_message_batch(queue_url, ({"n": n} for n in range(count)), meta="big")
    assert result.ok
    assert result.failures == []
    assert len(result) == count
    assert result.sent == count
    keys = list(result)
    assert all(keys)
    assert len(set(keys)) == count
    assert all(result.message_ids)
    assert len(set(result.message_ids)) == count

    # The queue URL from the direct client works through the proxy: the JSON
    # SQS protocol puts QueueUrl in the body and routes to endpoint_url.
    assert proxy.count("SendMessageBatch", status=200) == math.ceil(count / 10)
    assert proxy.count("BatchWriteItem", status=200) == math.ceil(count / 25)
    assert proxy.count("SendMessage") == 0
    assert proxy.count("PutItem") == 0
    assert proxy.count("GetQueueAttributes") == 1  # queue info is cached per client
    assert len(proxy.requests) == 1 + math.ceil(count / 10) + math.ceil(count / 25)

    messages = await receive_all(mc, queue_url, count, wait=60)
    assert {m["MessageId"] for m in messages} == set(result.message_ids)
    assert await queue_depth(mc, queue_url) == count  # no duplicates on the queue
    by_id = {m["MessageId"]: m for m in messages}
    for index, (key, message_id) in enumerate(zip(keys, result.message_ids, strict=True)):
        parsed = mc.read_sqs_record(by_id[message_id])
        assert parsed.key == key
        assert parsed.body == {"n": index}  # keys and ids are in input order

    records = await mc.get_message_records(keys)
    assert [r.key if r else None for r in records] == keys
    assert all(r is not None and r.status is Status.PRE_FLIGHT and r.meta == "big" for r in records)
    assert len(await stored_keys(mc, names["table"])) == count


async def test_async_iterable_is_streamed_in_windows(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("msgcluster.messages._sending.WINDOW", 20)
    sends_seen_at: dict[int, int] = {}

    async def orders() -> AsyncIterator[Order]:
        for n in range(50):
            if n % 20 == 0:
                sends_seen_at[n] = proxy.count("SendMessageBatch")
            await anyio.lowlevel.checkpoint()
            yield Order(n, f"item-{n}")

    result = await pc.send_message_batch(queue_url, orders())
    assert result.ok
    assert len(result) == 50
    assert all(result)
    # Window 0 (20 bodies = 2 requests) was sent before the generator was
    # asked for window 2: the input is consumed as it is sent, not up front.
    assert sends_seen_at[0] == 0
    assert sends_seen_at[40] >= 2
    assert proxy.count("SendMessageBatch") == 2 + 2 + 1
    messages = await receive_all(mc, queue_url, 50)
    received = sorted(
        (mc.read_sqs_record(m, body_type=Order).body for m in messages), key=lambda o: o.order_id
    )
    assert received == [Order(n, f"item-{n}") for n in range(50)]
    assert WINDOW == 500  # the real window divides by 10 and 25 (request counts stay minimal)


async def test_outgoing_messages_carry_their_own_options(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    entries = capture_entries(proxy)
    started = time.monotonic()
    result = await pc.send_message_batch(
        queue_url,
        [
            OutgoingMessage(body={"n": 0}, attributes={"tenant": "a", "priority": 5, "raw": b"\0"}),
            OutgoingMessage(body={"n": 1}, delay_seconds=2, meta={"own": True}),
            {"n": 2},
        ],
        meta={"default": True},
        attributes={"source": "batch"},
    )
    assert result.ok

    (sent,) = entries
    wire = {msgspec.json.decode(e["MessageBody"])["body"]["n"]: e for e in sent}
    assert "DelaySeconds" not in wire[0]
    assert "DelaySeconds" not in wire[2]
    assert wire[1]["DelaySeconds"] == 2
    assert set(wire[0]["MessageAttributes"]) == {"tenant", "priority", "raw"}
    assert wire[1]["MessageAttributes"] == wire[2]["MessageAttributes"]  # the call's defaults
    assert wire[2]["MessageAttributes"]["source"] == {"DataType": "String", "StringValue": "batch"}

    records = await mc.get_message_records(result)
    default, own = {"default": True}, {"own": True}
    assert [r.meta if r else None for r in records] == [default, own, default]

    # Receive until all three arrived, noting when each became visible.
    by_n: dict[int, dict[str, Any]] = {}
    arrived: dict[int, float] = {}
    with anyio.fail_after(20):
        while len(by_n) < 3:
            response = await mc.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                n = mc.read_sqs_record(message).body["n"]
                by_n[n], arrived[n] = message, time.monotonic() - started
    assert arrived[1] >= 1.5  # DelaySeconds=2 (moto's clock has 1 s resolution)
    assert arrived[0] <= arrived[1]
    assert arrived[2] <= arrived[1]
    attrs = by_n[0]["MessageAttributes"]
    assert attrs["tenant"] == {"DataType": "String", "StringValue": "a"}
    assert attrs["priority"] == {"DataType": "Number", "StringValue": "5"}
    assert attrs["raw"] == {"DataType": "Binary", "BinaryValue": b"\0"}
    assert by_n[1]["MessageAttributes"]["source"]["StringValue"] == "batch"


async def test_requests_are_split_at_one_mib(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    entries = capture_entries(proxy)
    bodies = [f"{n}:" + "x" * 200_000 for n in range(10)]
    result = await pc.send_message_batch(queue_url, bodies)
    assert result.ok
    assert result.sent == 10
    # Five ~200 KB envelopes fit in 1 MiB, six do not (moto would answer
    # BatchRequestTooLong); none is large enough to be offloaded to S3.
    assert [len(request) for request in entries] == [5, 5]
    for request in entries:
        assert sum(len(e["MessageBody"].encode()) for e in request) <= 1_048_576
    assert proxy.count("SendMessageBatch") == 2
    assert proxy.count("S3 PUT") == 0
    messages = await receive_all(mc, queue_url, 10)
    assert bodies_of(mc, messages) == sorted(bodies, key=lambda b: msgspec.json.encode(b))


# --------------------------------------------------------------------------- partial failures


async def test_failed_entries_without_sender_fault_are_retried(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    rule = proxy.add_rule(
        "SendMessageBatch", fail_sqs_batch_entries(["1", "3"], code="InternalError"), times=2
    )
    result = await pc.send_message_batch(queue_url, [{"n": n} for n in range(5)])
    assert result.ok
    assert result.sent == 5
    assert rule.hits == 2
    assert proxy.count("SendMessageBatch") == 3  # first try, two retries of entries 1 and 3
    messages = await receive_all(mc, queue_url, 5)
    assert bodies_of(mc, messages) == [{"n": n} for n in range(5)]
    assert await queue_depth(mc, queue_url) == 5


async def test_sender_fault_entry_is_reported_and_the_rest_sent(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    proxy.add_rule(
        "SendMessageBatch",
        fail_sqs_batch_entries(
            "2", code="InvalidParameterValue", sender_fault=True, message="body rejected"
        ),
        times=1,
    )
    with pytest.raises(msgcluster.BatchSendError, match="1 of 5") as info:
        await pc.send_message_batch(queue_url, [{"n": n} for n in range(5)])
    assert "entry 2: InvalidParameterValue: body rejected" in str(info.value)
    result = info.value.result
    (failure,) = result.failures
    assert failure.index == 2
    assert failure.code == "InvalidParameterValue"
    assert failure.sender_fault
    assert not failure.maybe_sent
    assert failure.key is None  # its record was removed
    assert result[2] is None
    assert result.message_ids[2] is None
    assert result.sent == 4
    assert proxy.count("SendMessageBatch") == 1  # a sender fault is not retried

    messages = await receive_all(mc, queue_url, 4)
    assert bodies_of(mc, messages) == [{"n": n} for n in (0, 1, 3, 4)]
    assert await stored_keys(mc, names["table"]) == {k for k in result if k is not None}


async def test_entries_that_keep_failing_are_reported_not_dropped(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    rule = proxy.add_rule("SendMessageBatch", fail_sqs_batch_entries("0", code="InternalError"))
    result = await pc.send_message_batch(
        queue_url, [{"n": n} for n in range(3)], raise_on_failure=False
    )
    (failure,) = result.failures
    assert failure.index == 0
    assert failure.code == "InternalError"
    assert not failure.sender_fault
    assert not failure.maybe_sent
    assert "gave up after 8 attempts" in failure.message
    assert rule.hits == 8
    assert result.sent == 2
    messages = await receive_all(mc, queue_url, 2)
    assert bodies_of(mc, messages) == [{"n": 1}, {"n": 2}]
    assert await stored_keys(mc, names["table"]) == {result[1], result[2]}


async def test_invalid_entries_are_reported_per_entry(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    bodies: list[Any] = [
        Order(0, "ok"),
        object(),  # msgspec cannot encode it
        Order(2, "ok"),
        OutgoingMessage(body=3, meta="m" * 40_000),  # over max_meta_bytes
        OutgoingMessage(body=4, delay_seconds=901),
        OutgoingMessage(body=5, attributes={"AWS.reserved": "x"}),
        Order(6, "ok"),
    ]
    result = await mc.send_message_batch(queue_url, bodies, raise_on_failure=False)
    assert not result.ok
    assert [(f.index, f.code) for f in result.failures] == [
        (1, "ValidationError"),
        (3, "MetaTooLargeError"),
        (4, "ValidationError"),
        (5, "ValidationError"),
    ]
    messages = {f.index: f.message for f in result.failures}
    assert "body cannot be encoded as JSON" in messages[1]
    assert "meta is 40,002 bytes" in messages[3]
    assert "delay_seconds" in messages[4]
    assert "'AWS.reserved'" in messages[5]
    assert all(f.sender_fault and not f.maybe_sent and f.key is None for f in result.failures)
    assert [k is not None for k in result] == [True, False, True, False, False, False, True]
    assert result.sent == 3

    received = await receive_all(mc, queue_url, 3)
    assert sorted(mc.read_sqs_record(m, body_type=Order).body.order_id for m in received) == [
        0,
        2,
        6,
    ]
    assert await stored_keys(mc, names["table"]) == {k for k in result if k is not None}

    with pytest.raises(msgcluster.BatchSendError, match="4 of 7") as info:
        await mc.send_message_batch(queue_url, bodies)  # raise_on_failure defaults to True
    assert info.value.result.sent == 3


async def test_unprocessed_items_are_retried(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    rule = proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(3), times=2)
    result = await pc.send_message_batch(queue_url, [{"n": n} for n in range(20)])
    assert result.ok
    assert result.sent == 20
    assert rule.hits == 2
    assert proxy.count("BatchWriteItem") == 3  # 20 items, then 3 unprocessed twice
    records = await mc.get_message_records(result, consistent_read=True)
    assert all(r is not None and r.status is Status.PRE_FLIGHT for r in records)
    await receive_all(mc, queue_url, 20)


async def test_completing_a_batch_of_messages_deletes_in_batches(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    """30 message records (one twice) in two BatchWriteItems, unprocessed retried;
    a delete that never applies raises, so nothing gets acknowledged."""
    keys = await mc.send_message_batch(queue_url, [{"n": n} for n in range(30)])
    messages = await receive_all(mc, queue_url, 30)
    records = [await mc.load_sqs_record(m) for m in messages]
    proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(2), times=1)
    assert await pc.mark_complete_batch([*records, records[0]]) == [True] * 31
    assert proxy.count("BatchWriteItem") == 3  # 25 + 5, then the 2 left unprocessed
    assert proxy.count("DeleteItem") == 0
    assert await stored_keys(mc, names["table"]) == set()
    assert await mc.is_complete_batch(records) == [True] * 30

    more = await mc.send_message_batch(queue_url, [{"n": n} for n in range(2)])
    records = [await mc.load_sqs_record(m) for m in await receive_all(mc, queue_url, 2)]
    proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(1))
    with pytest.raises(msgcluster.ThrottledError):
        await pc.mark_complete_batch(records)
    assert len(await stored_keys(mc, names["table"])) == 1
    assert more.ok
    assert keys.ok


async def test_records_never_written_are_not_sent(
    pc: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    """Items DynamoDB keeps leaving unprocessed: those entries fail, nothing orphaned."""
    proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(lambda table, w, i: i < 2))
    result = await pc.send_message_batch(
        queue_url, [{"n": n} for n in range(6)], raise_on_failure=False
    )
    assert [f.index for f in result.failures] == [0, 1]
    assert all(f.code == "UnprocessedItems" and f.key is None for f in result.failures)
    assert result.sent == 4
    messages = await receive_all(mc, queue_url, 4)
    assert bodies_of(mc, messages) == [{"n": n} for n in range(2, 6)]
    assert await stored_keys(mc, names["table"]) == set(result[2:])


# --------------------------------------------------------------------------- request faults


async def test_throttled_send_message_batch_is_retried_by_botocore(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    rule = proxy.add_rule("SendMessageBatch", throttle(), times=2)
    result = await pc.send_message_batch(queue_url, [{"n": n} for n in range(5)])
    assert result.ok
    assert result.sent == 5
    assert rule.hits == 2
    assert proxy.count("SendMessageBatch", status=400) == 2
    assert proxy.count("SendMessageBatch", status=200) == 1
    await receive_all(mc, queue_url, 5)
    assert await queue_depth(mc, queue_url) == 5  # a throttled request was not applied


async def test_dropped_batch_response_is_maybe_sent_and_records_kept(
    pc1: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    proxy.add_rule("SendMessageBatch", drop_response(), times=1)
    result = await pc1.send_message_batch(
        queue_url, [{"n": n} for n in range(4)], raise_on_failure=False
    )
    assert result.sent == 0
    assert [f.index for f in result.failures] == [0, 1, 2, 3]
    for failure in result.failures:
        assert failure.maybe_sent
        assert not failure.sender_fault
        assert failure.key is not None
    keys = [f.key for f in result.failures]
    assert list(result) == [None] * 4  # not known to be sent
    records = await mc.get_message_records(keys, consistent_read=True)
    assert all(r is not None and r.status is Status.PRE_FLIGHT for r in records)

    # The request was applied: the messages arrive and carry the kept records' keys.
    messages = await receive_all(mc, queue_url, 4)
    assert {mc.read_sqs_record(m).key for m in messages} == set(keys)


# --------------------------------------------------------------------------- send_message


async def test_send_message_refused_removes_its_record(
    pc1: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    proxy.add_rule("SendMessageBatch", error(400, "InvalidParameterValue", "no thanks"), times=1)
    with pytest.raises(msgcluster.AwsValidationError, match="no thanks") as info:
        await pc1.send_message(queue_url, {"n": 1})
    assert info.value.code == "InvalidParameterValue"
    assert info.value.operation == "SendMessageBatch"  # one entry: the queue layer's
    assert proxy.count("PutItem") == 1
    assert proxy.count("BatchWriteItem") == 1  # the record, removed again
    assert await stored_keys(mc, names["table"]) == set()
    assert await queue_depth(mc, queue_url) == 0


async def test_send_message_server_error_keeps_its_record(
    pc1: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    """A 5xx is ambiguous (AWS may have enqueued the message): the record stays.

    Removing it would be worse than an orphan PRE FLIGHT record that TTL
    expires: a consumer treats "no record" as "already completed" and would
    skip a message that did arrive.
    """
    proxy.add_rule("SendMessageBatch", error(500, "InternalError", "try later"), times=1)
    with pytest.raises(msgcluster.AwsError, match="try later") as info:
        await pc1.send_message(queue_url, {"n": 1})
    assert info.value.code == "InternalError"
    assert info.value.status == 500
    assert proxy.count("SendMessageBatch") == 1  # max_attempts=1: botocore did not retry
    (key,) = await stored_keys(mc, names["table"])
    assert (await mc.get_message_record(key, consistent_read=True)).status is Status.PRE_FLIGHT


async def test_send_message_5xx_is_retried_by_default(
    pc: msgcluster.Client, mc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    proxy.add_rule("SendMessageBatch", error(500, "InternalError", "try later"), times=1)
    key = await pc.send_message(queue_url, {"n": 1})
    assert proxy.count("SendMessageBatch", status=500) == 1
    assert proxy.count("SendMessageBatch", status=200) == 1
    (message,) = await receive_all(mc, queue_url, 1)
    assert mc.read_sqs_record(message).key == key


async def test_send_message_dropped_response_keeps_its_record(
    pc1: msgcluster.Client,
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
    names: dict[str, str],
) -> None:
    proxy.add_rule("SendMessageBatch", drop_response(), times=1)
    with pytest.raises(msgcluster.AwsConnectionError, match="may have been sent") as caught:
        await pc1.send_message(queue_url, {"n": 1})
    (key,) = await stored_keys(mc, names["table"])
    assert caught.value.record_key == key
    record = await mc.get_message_record(key, consistent_read=True)
    assert record.status is Status.PRE_FLIGHT
    (message,) = await receive_all(mc, queue_url, 1)  # it was sent after all
    parsed = mc.read_sqs_record(message)
    assert parsed.key == key
    assert parsed.body == {"n": 1}
    assert isinstance(key, RecordKey)
