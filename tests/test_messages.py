"""Tracked messages end to end against moto: send, read, complete, fail, records."""

from __future__ import annotations

import msgspec
import pytest
from conftest import receive_all

import msgcluster
from msgcluster import RecordKey, Status


class Order(msgspec.Struct):
    order_id: int
    item: str


async def test_send_read_complete(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.send_message(queue_url, Order(1, "book"), meta={"source": "test"})
    record = await mc.get_message_record(key, consistent_read=True)
    assert record.status is Status.PRE_FLIGHT
    assert record.meta == {"source": "test"}
    assert record.url == queue_url

    (message,) = await receive_all(mc, queue_url, 1)
    parsed = mc.read_sqs_record(message, body_type=Order)
    assert parsed.body == Order(1, "book")
    assert (parsed.pk, parsed.rk) == (key.pk, key.rk)
    assert parsed.url == queue_url
    assert parsed.type == "message"
    assert parsed.task is None
    assert (await parsed.get_message_record(consistent_read=True)).id == record.id

    assert not await mc.is_complete(message)
    assert await mc.mark_complete(message) is True
    assert await mc.is_complete(message)
    assert await mc.mark_complete(message) is False  # duplicate delivery: no-op
    with pytest.raises(msgcluster.RecordNotFoundError):
        await mc.get_message_record(key, consistent_read=True)


async def test_mark_failed_bounded_and_error_at_max_receives(
    mc: msgcluster.Client, queue_url: str
) -> None:
    key = await mc.send_message(queue_url, {"n": 1})
    (message,) = await receive_all(mc, queue_url, 1)
    for attempt in range(1, 15):
        message["Attributes"]["ApproximateReceiveCount"] = str(min(attempt, 2))
        record = await mc.mark_failed(message, ValueError(f"boom {attempt}"))
        assert record is not None
    assert len(record.error) == mc.settings.max_errors
    assert record.error[-1].message == "boom 14"
    assert record.error[-1].type == "ValueError"
    assert record.status is Status.IN_PROGRESS
    assert record.consumption_count == 2

    message["Attributes"]["ApproximateReceiveCount"] = "3"  # the queue's maxReceiveCount
    record = await mc.mark_failed(message, "gave up")
    assert record is not None
    assert record.status is Status.ERROR
    assert record.status_code == 400

    await mc.mark_complete(message)
    assert await mc.mark_failed(message, "late") is None  # never resurrects a record
    assert await mc.get_message_records([key]) == [None]


async def test_update_message_record(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.send_message(queue_url, "x")
    updated = await mc.update_message_record(key, meta={"a": 1}, status="IN PROGRESS")
    assert updated.meta == {"a": 1}
    assert updated.status is Status.IN_PROGRESS
    with pytest.raises(msgcluster.ConditionFailedError):
        await mc.update_message_record(key, status=Status.COMPLETE, expected_status="PRE FLIGHT")
    done = await mc.update_message_record(
        {"pk": key.pk, "rk": key.rk}, status=Status.COMPLETE, expected_status=Status.IN_PROGRESS
    )
    assert done.status_code == 200
    missing = RecordKey("SQSMessage$nope", "SQSMessage$message")
    with pytest.raises(msgcluster.RecordNotFoundError):
        await mc.update_message_record(missing, meta=1)
