"""safe_process_batch with the sample Lambda events in tests/events/ against moto."""

from __future__ import annotations

import copy
from typing import Any

import anyio
import msgspec
import pytest
from conftest import load_event, receive_all

import msgcluster
from msgcluster import ParsedRecord, Status

PLACEHOLDER = "{{envelope}}"


class Job(msgspec.Struct):
    n: int


async def fill(mc: msgcluster.Client, url: str, name: str, **send: Any) -> dict[str, Any]:
    """Load an event template; give each placeholder body a real, tracked envelope."""
    event = load_event(name)
    slots = [r for r in event["Records"] if r.get("body") == PLACEHOLDER]
    for i, record in enumerate(slots):
        group = record["attributes"].get("MessageGroupId")
        extra = {"group_id": group} if group else {}
        await mc.send_message(url, Job(i), **(send | extra))
    received = await receive_all(mc, url, len(slots))
    by_n = {msgspec.json.decode(m["Body"])["body"]["n"]: m["Body"] for m in received}
    for i, record in enumerate(slots):
        record["body"] = by_n[i]
    return event


def failures(result: dict[str, list[dict[str, str]]]) -> list[str]:
    return [f["itemIdentifier"] for f in result["batchItemFailures"]]


async def test_all_succeed_records_completed(mc: msgcluster.Client, queue_url: str) -> None:
    event = await fill(mc, queue_url, "sqs_standard.json")
    seen: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        seen.append(record.body.n)

    result = await mc.safe_process_batch(event, handle, body_type=Job)
    assert result == {"batchItemFailures": []}
    assert sorted(seen) == [0, 1, 2]
    for record in event["Records"]:
        assert await mc.is_complete(record)


async def test_one_failure_reported_and_recorded(mc: msgcluster.Client, queue_url: str) -> None:
    event = await fill(mc, queue_url, "sqs_standard.json")

    def handle(record: ParsedRecord[Job]) -> None:  # sync handlers are accepted too
        if record.body.n == 1:
            raise ValueError("no stock for job 1")

    result = await mc.safe_process_batch(event, handle, body_type=Job)
    bad = next(r for r in event["Records"] if mc.read_sqs_record(r, Job).body.n == 1)
    assert failures(result) == [bad["messageId"]]
    stored = await mc.read_sqs_record(bad).get_message_record(consistent_read=True)
    assert stored.error[-1].message == "no stock for job 1"
    assert stored.consumption_count == 1
    assert stored.status is Status.IN_PROGRESS
    others = [r for r in event["Records"] if r is not bad]
    assert all([await mc.is_complete(r) for r in others])


async def test_duplicates_run_once(mc: msgcluster.Client, queue_url: str) -> None:
    event = await fill(mc, queue_url, "sqs_standard.json")
    twice = copy.deepcopy(event)
    twice["Records"].append(copy.deepcopy(event["Records"][0]))  # same message twice in a batch
    calls: list[str] = []

    async def handle(record: ParsedRecord[Any]) -> None:
        calls.append(record.pk)

    assert failures(await mc.safe_process_batch(twice, handle)) == []
    assert len(calls) == 3  # the copy in the same batch shares the first one's outcome
    calls.clear()
    assert failures(await mc.safe_process_batch(event, handle)) == []  # redelivery
    assert calls == []  # already complete: skipped


async def test_concurrency_is_bounded(mc: msgcluster.Client, queue_url: str) -> None:
    keys = await mc.send_message_batch(queue_url, [Job(i) for i in range(12)])
    messages = await receive_all(mc, queue_url, len(keys))
    event = {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]}
    running = peak = 0

    async def handle(record: ParsedRecord[Job]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    assert failures(await mc.safe_process_batch(event, handle, concurrency=3)) == []
    assert peak == 3


async def test_fifo_failure_fails_rest_of_its_group(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    url = (await mc.provision(queues=[names["fifo"]]))[names["fifo"]]
    event = await fill(mc, url, "sqs_fifo_two_groups.json")
    ran: list[tuple[str, int]] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        group = record.message.group_id or ""
        ran.append((group, record.body.n))
        if (group, record.body.n) == ("a", 1):
            raise RuntimeError("group a breaks at its second message")

    result = await mc.safe_process_batch(event, handle, body_type=Job)  # FIFO from the ARN
    records = event["Records"]
    assert failures(result) == [records[1]["messageId"], records[3]["messageId"]]
    assert ran.count(("a", 3)) == 0  # not attempted after its group failed
    assert ("b", 2) in ran
    assert ("b", 4) in ran
    blocked = await mc.read_sqs_record(records[3]).get_message_record(consistent_read=True)
    assert blocked.error == []  # not attempted: no failure recorded


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        {"records": []},
        {"Records": "x"},
        {"Records": [{"body": "{}"}]},
        load_event("not_sqs_s3_event.json"),
        load_event("malformed_missing_message_id.json"),
    ],
)
async def test_malformed_events_raise_before_any_handler(mc: msgcluster.Client, event: Any) -> None:
    called = False

    async def handle(record: ParsedRecord[Any]) -> None:
        nonlocal called
        called = True

    with pytest.raises(msgcluster.MalformedEventError):
        await mc.safe_process_batch(event, handle)
    assert not called


async def test_poison_body_fails_without_calling_handler(
    mc: msgcluster.Client, queue_url: str
) -> None:
    event = await fill(mc, queue_url, "sqs_with_poison_body.json")
    seen: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        seen.append(record.body.n)

    result = await mc.safe_process_batch(event, handle, body_type=Job)
    assert failures(result) == [event["Records"][1]["messageId"]]
    assert sorted(seen) == [0, 1]


async def test_body_type_mismatch_is_a_recorded_failure(
    mc: msgcluster.Client, queue_url: str
) -> None:
    class Other(msgspec.Struct):
        name: str

    event = await fill(mc, queue_url, "sqs_standard.json")
    result = await mc.safe_process_batch(event, lambda r: None, body_type=Other)
    assert len(failures(result)) == 3
    stored = await mc.read_sqs_record(event["Records"][0]).get_message_record(True)
    assert stored.error[-1].type == "BodyDecodeError"
    assert event["Records"][0]["messageId"] in stored.error[-1].message


async def test_offloaded_body_is_loaded_first(
    local_aws: Any, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    from conftest import client_for

    async with client_for(local_aws, names, max_message_bytes=2048) as small:
        await small.send_message(queue_url, {"blob": "x" * 10_000})
        (message,) = await receive_all(small, queue_url, 1)
        assert "bodyS3" in message["Body"]
        sizes: list[int] = []

        async def handle(record: ParsedRecord[Any]) -> None:
            sizes.append(len(record.body["blob"]))

        event = {"Records": [{"messageId": message["MessageId"], "body": message["Body"]}]}
        assert failures(await small.safe_process_batch(event, handle)) == []
        assert sizes == [10_000]
