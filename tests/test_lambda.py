"""``safe_process_batch``: Lambda SQS batches with partial failures, against moto.

The sample events in ``tests/events/`` are templates in the exact shape Lambda
delivers. A record whose body is ``{{envelope}}`` is a *slot*: :func:`fill`
sends a real tracked message for it (so its DynamoDB record exists), receives
it, and writes what Lambda would deliver for that message into the template
(messageId, receiptHandle, body, md5OfBody, attributes, the queue's ARN),
keeping everything else, including whatever makes a record malformed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from conftest import EVENTS, as_lambda_record, client_for, load_event, receive_all, stored_keys
from faultproxy import FaultProxy, error

import msgcluster
from msgcluster import OutgoingMessage, ParsedRecord, RecordKey, RecordType, Status, StatusCode
from msgcluster.local import LocalAWS

PLACEHOLDER = "{{envelope}}"


class Job(msgspec.Struct):
    n: int


@dataclass
class Filled:
    """A filled template: the event and, per record, the key of the message sent for it."""

    event: dict[str, Any]
    keys: list[RecordKey | None]

    @property
    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.event["Records"]
        return records

    def id(self, index: int) -> str:
        return str(self.records[index]["messageId"])


async def queue_arn(mc: msgcluster.Client, url: str) -> str:
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(response["Attributes"]["QueueArn"])


async def fill(mc: msgcluster.Client, url: str, template: str | dict[str, Any]) -> Filled:
    """Give every slot of ``template`` a real message: slot ``n`` carries ``Job(n)``.

    FIFO slots are sent with the template's ``MessageGroupId``; the template's
    ``ApproximateReceiveCount`` is kept so a test can play a redelivery.
    """
    event = load_event(template) if isinstance(template, str) else copy.deepcopy(template)
    records: list[Any] = event["Records"]
    slots = [
        i for i, r in enumerate(records) if isinstance(r, dict) and r.get("body") == PLACEHOLDER
    ]
    keys: list[RecordKey | None] = [None] * len(records)
    for n, index in enumerate(slots):
        group = records[index].get("attributes", {}).get("MessageGroupId")
        keys[index] = await mc.send_message(
            url, Job(n), meta={"slot": n}, attributes={"tenant": "acme"}, group_id=group
        )
    arn = await queue_arn(mc, url)
    received = await receive_all(mc, url, len(slots))
    by_n = {mc.read_sqs_record(message, Job).body.n: message for message in received}
    for n, index in enumerate(slots):
        record, real = records[index], as_lambda_record(by_n[n], arn)
        if "messageId" in record:  # a template without one stays malformed
            record["messageId"] = real["messageId"]
        record["receiptHandle"] = real["receiptHandle"]
        record["body"] = real["body"]
        record["md5OfBody"] = real["md5OfBody"]
        record["messageAttributes"] = {
            name: {k: v for k, v in value.items() if v is not None}
            for name, value in real["messageAttributes"].items()
        }
        attributes = record.setdefault("attributes", {})
        attributes.update(
            {k: v for k, v in real["attributes"].items() if k != "ApproximateReceiveCount"}
        )
    for record in records:
        if isinstance(record, dict) and record.get("eventSource") == "aws:sqs":
            record["eventSourceARN"] = arn
    return Filled(event, keys)


def failures(result: dict[str, list[dict[str, str]]]) -> list[str]:
    assert set(result) == {"batchItemFailures"}
    return [failure["itemIdentifier"] for failure in result["batchItemFailures"]]


async def gone(mc: msgcluster.Client, key: RecordKey | None) -> bool:
    """The record was removed: the message's work is complete."""
    assert key is not None
    try:
        await mc.get_message_record(key, consistent_read=True)
    except msgcluster.RecordNotFoundError:
        return True
    return False


async def stored(mc: msgcluster.Client, key: RecordKey | None) -> msgcluster.MessageRecord:
    assert key is not None
    return await mc.get_message_record(key, consistent_read=True)


@pytest.fixture
async def fifo_url(mc: msgcluster.Client, names: dict[str, str]) -> str:
    urls = await mc.provision(queues=[names["fifo"]], max_receive_count=3)
    return urls[names["fifo"]]


# --------------------------------------------------------------------------- the templates


@pytest.mark.parametrize("template", ["sqs_standard.json", "sqs_fifo_two_groups.json"])
async def test_filled_events_keep_the_lambda_shape(
    mc: msgcluster.Client, queue_url: str, fifo_url: str, template: str
) -> None:
    url = fifo_url if "fifo" in template else queue_url
    filled = await fill(mc, url, template)
    original = load_event(template)["Records"]
    assert len(filled.records) == len(original)
    for record, before in zip(filled.records, original, strict=True):
        assert record.keys() == before.keys()
        assert record["attributes"].keys() >= before["attributes"].keys()
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
        assert record["eventSourceARN"].endswith(":" + url.rsplit("/", 1)[1])
        assert record["messageAttributes"] == before["messageAttributes"]
        if "MessageGroupId" in before["attributes"]:
            assert record["attributes"]["MessageGroupId"] == before["attributes"]["MessageGroupId"]
            assert record["attributes"]["SequenceNumber"].isdigit()
            assert record["attributes"]["MessageDeduplicationId"]
    assert len({r["messageId"] for r in filled.records}) == len(original)


# --------------------------------------------------------------------------- success / failure


async def test_all_succeed_and_records_are_removed(mc: msgcluster.Client, queue_url: str) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")
    seen: dict[str, tuple[ParsedRecord[Job], msgcluster.MessageRecord]] = {}

    async def handle(record: ParsedRecord[Job]) -> None:
        seen[record.id] = (record, await record.get_message_record(consistent_read=True))

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)
    assert result == {"batchItemFailures": []}
    assert set(seen) == {filled.id(i) for i in range(3)}
    for index, key in enumerate(filled.keys):
        parsed, record = seen[filled.id(index)]
        assert parsed.key == key
        assert parsed.body == Job(index)
        assert parsed.url == queue_url
        assert parsed.type is RecordType.MESSAGE
        assert parsed.receive_count == 1
        assert not parsed.offloaded
        assert parsed.message.message_attributes["tenant"]["stringValue"] == "acme"
        assert record.meta == {"slot": index}  # the record exists while the handler runs
        assert await gone(mc, key)
        assert await mc.is_complete(filled.records[index])


class SyncCallable:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, record: ParsedRecord[Job]) -> None:
        self.seen.append(record.body.n)


class AsyncCallable(SyncCallable):
    async def __call__(self, record: ParsedRecord[Job]) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        self.seen.append(record.body.n)


async def _append(seen: list[int], record: ParsedRecord[Job]) -> None:
    seen.append(record.body.n)


@pytest.mark.parametrize("kind", ["function", "lambda", "callable", "async callable", "partial"])
async def test_sync_and_async_handlers_are_accepted(
    mc: msgcluster.Client, queue_url: str, kind: str
) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")
    seen: list[int] = []

    def function(record: ParsedRecord[Job]) -> str:
        seen.append(record.body.n)
        return "ignored"

    handler: Any = {
        "function": function,
        "lambda": lambda record: seen.append(record.body.n),
        "callable": SyncCallable(),
        "async callable": AsyncCallable(),
        "partial": functools.partial(_append, seen),
    }[kind]
    assert failures(await mc.safe_process_batch(filled.event, handler, body_type=Job)) == []
    assert sorted(getattr(handler, "seen", seen)) == [0, 1, 2]
    assert all([await gone(mc, key) for key in filled.keys])


async def test_one_failure_is_reported_and_recorded(mc: msgcluster.Client, queue_url: str) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")

    def handle(record: ParsedRecord[Job]) -> None:
        if record.body.n == 1:
            raise ValueError("no stock for job 1")

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)
    assert failures(result) == [filled.id(1)]
    record = await stored(mc, filled.keys[1])
    assert len(record.error) == 1
    assert record.error[0].message == "no stock for job 1"
    assert record.error[0].type == "ValueError"
    assert record.error[0].receive_count == 1
    assert record.consumption_count == 1
    assert record.status is Status.IN_PROGRESS  # retried by SQS; not final yet
    assert record.meta == {"slot": 1}
    assert await gone(mc, filled.keys[0])
    assert await gone(mc, filled.keys[2])


async def test_failure_on_the_last_receive_marks_the_record_error(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """At ApproximateReceiveCount == the queue's maxReceiveCount (3) the DLQ is next."""
    event = load_event("sqs_standard.json")
    for record in event["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "3"
    filled = await fill(mc, queue_url, event)

    def handle(record: ParsedRecord[Job]) -> None:
        assert record.receive_count == 3
        raise RuntimeError(f"job {record.body.n} gave up")

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)
    assert failures(result) == [filled.id(i) for i in range(3)]
    for index, key in enumerate(filled.keys):
        record = await stored(mc, key)
        assert record.status is Status.ERROR
        assert record.status_code is StatusCode.ERROR
        assert record.consumption_count == 3
        assert [e.message for e in record.error] == [f"job {index} gave up"]


# --------------------------------------------------------------------------- duplicates


async def test_duplicate_in_one_event_runs_once(mc: msgcluster.Client, queue_url: str) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")
    records = filled.records
    event = {"Records": [*records, copy.deepcopy(records[0]), copy.deepcopy(records[1])]}
    event["Records"][4]["receiptHandle"] += "-redelivered"  # same message, second receipt
    calls: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        calls.append(record.body.n)
        if record.body.n == 1:
            raise ValueError("job 1 fails")

    result = await mc.safe_process_batch(event, handle, body_type=Job)
    assert sorted(calls) == [0, 1, 2]
    # Copies share the outcome of the first: the failed message is reported for both.
    assert failures(result) == [filled.id(1), filled.id(1)]
    assert len((await stored(mc, filled.keys[1])).error) == 1  # recorded once
    assert await gone(mc, filled.keys[0])
    assert await gone(mc, filled.keys[2])


async def test_same_event_twice_skips_what_is_complete(
    mc: msgcluster.Client, queue_url: str
) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")
    calls: list[int] = []
    fail = {1}

    async def handle(record: ParsedRecord[Job]) -> None:
        calls.append(record.body.n)
        if record.body.n in fail:
            raise ValueError("not yet")

    assert failures(await mc.safe_process_batch(filled.event, handle, body_type=Job)) == [
        filled.id(1)
    ]
    assert sorted(calls) == [0, 1, 2]

    calls.clear()
    fail.clear()
    # The whole event again (a duplicate Lambda invocation): only the failed one runs.
    assert failures(await mc.safe_process_batch(filled.event, handle, body_type=Job)) == []
    assert calls == [1]

    calls.clear()
    assert failures(await mc.safe_process_batch(filled.event, handle, body_type=Job)) == []
    assert calls == []
    assert all([await gone(mc, key) for key in filled.keys])


async def test_concurrent_duplicate_invocations(mc: msgcluster.Client, queue_url: str) -> None:
    """Two invocations with the same event at once (SQS is at-least-once).

    Guaranteed: neither raises or reports a failure, no error is recorded, and
    every record ends complete. Not guaranteed: that a handler runs once.
    Nothing claims a simple message before its handler runs, so invocations
    that both start before either completes both run it: handlers must be
    idempotent. (Sequential duplicates are skipped; see the test above.)
    """
    filled = await fill(mc, queue_url, "sqs_standard.json")
    calls: list[int] = []
    results: list[dict[str, list[dict[str, str]]]] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        calls.append(record.body.n)
        await anyio.sleep(0.05)

    async def invoke() -> None:
        results.append(await mc.safe_process_batch(filled.event, handle, body_type=Job))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(invoke)
            tg.start_soon(invoke)
    assert results == [{"batchItemFailures": []}] * 2
    assert sorted(set(calls)) == [0, 1, 2]
    assert all(1 <= calls.count(n) <= 2 for n in range(3))
    assert all([await gone(mc, key) for key in filled.keys])


async def test_late_failure_never_resurrects_a_completed_record(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """Invocation A fails a message after invocation B completed it.

    A still reports the failure (Lambda redelivers; the redelivery is then
    skipped as complete), but recording it must not bring the record back.
    """
    filled = await fill(mc, queue_url, "sqs_standard.json")
    a_started, b_done = anyio.Event(), anyio.Event()

    async def failing(record: ParsedRecord[Job]) -> None:
        a_started.set()
        await b_done.wait()
        raise RuntimeError("A lost the race")

    async def succeeding(record: ParsedRecord[Job]) -> None:
        await a_started.wait()

    results: dict[str, list[str]] = {}

    async def invoke(name: str, handler: Any) -> None:
        results[name] = failures(await mc.safe_process_batch(filled.event, handler))
        if name == "B":
            b_done.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(invoke, "A", failing)
            tg.start_soon(invoke, "B", succeeding)
    assert results == {"A": [filled.id(i) for i in range(3)], "B": []}
    assert all([await gone(mc, key) for key in filled.keys])
    assert await stored_keys(mc, mc.settings.table) == set()
    called: list[str] = []
    assert failures(await mc.safe_process_batch(filled.event, called.append)) == []
    assert called == []


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("concurrency", [1, 3, 10])
async def test_concurrency_is_bounded(
    mc: msgcluster.Client, queue_url: str, concurrency: int
) -> None:
    keys = await mc.send_message_batch(queue_url, [Job(i) for i in range(12)])
    arn = await queue_arn(mc, queue_url)
    messages = await receive_all(mc, queue_url, len(keys))
    event = {"Records": [as_lambda_record(m, arn) for m in messages]}
    running = peak = 0

    async def handle(record: ParsedRecord[Job]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.03)
        running -= 1

    result = await mc.safe_process_batch(event, handle, concurrency=concurrency, body_type=Job)
    assert failures(result) == []
    assert peak == concurrency
    assert await stored_keys(mc, mc.settings.table) == set()


# --------------------------------------------------------------------------- FIFO


async def test_fifo_failure_fails_the_rest_of_its_group(
    mc: msgcluster.Client, fifo_url: str
) -> None:
    """Records: a0 a1 b2 a3 b4. a1 fails: a3 is reported without running; b completes."""
    filled = await fill(mc, fifo_url, "sqs_fifo_two_groups.json")
    assert filled.records[0]["eventSourceARN"].endswith(".fifo")
    ran: list[tuple[str | None, int]] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        ran.append((record.message.group_id, record.body.n))
        await anyio.sleep(0.01)
        if record.body.n == 1:
            raise RuntimeError("group a breaks at its second message")

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)  # FIFO detected
    assert failures(result) == [filled.id(1), filled.id(3)]
    assert [n for group, n in ran if group == "a"] == [0, 1]  # in order; a3 never ran
    assert [n for group, n in ran if group == "b"] == [2, 4]
    for index in (0, 2, 4):
        assert await gone(mc, filled.keys[index])
    failed = await stored(mc, filled.keys[1])
    assert [e.type for e in failed.error] == ["RuntimeError"]
    blocked = await stored(mc, filled.keys[3])
    assert blocked.error == []  # not attempted: nothing to record
    assert blocked.status is Status.PRE_FLIGHT


@pytest.mark.parametrize("entry", ["client", "lambda_handler"])
async def test_fifo_rest_of_batch_stops_at_the_first_failure(
    mc: msgcluster.Client, fifo_url: str, entry: str
) -> None:
    """Records: a0 a1 b2 a3 b4. With ``fifo_failure="rest_of_batch"`` (Powertools'
    default) a1 fails and everything after it, b2 and b4 included, is reported
    without running."""
    filled = await fill(mc, fifo_url, "sqs_fifo_two_groups.json")
    ran: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        ran.append(record.body.n)
        if record.body.n == 1:
            raise RuntimeError("a1 breaks")

    if entry == "client":
        result = await mc.safe_process_batch(
            filled.event, handle, body_type=Job, fifo_failure="rest_of_batch"
        )
    else:
        app = msgcluster.App(mc.with_options())

        @app.handler(Job)
        async def job(body: Job) -> None:
            ran.append(body.n)
            if body.n == 1:
                raise RuntimeError("a1 breaks")

        from msgcluster.integrations.aws_lambda import lambda_handler

        handler = lambda_handler(app, fifo_failure="rest_of_batch")
        try:
            result = await anyio.to_thread.run_sync(handler, filled.event)
        finally:
            await anyio.to_thread.run_sync(handler.close)
    assert ran == [0, 1]
    assert failures(result) == [filled.id(n) for n in (1, 2, 3, 4)]
    with pytest.raises(msgcluster.ValidationError, match="fifo_failure"):
        await mc.safe_process_batch(filled.event, handle, fifo_failure="sometimes")  # type: ignore[arg-type]


async def test_fifo_detected_from_the_queue_arn_alone(mc: msgcluster.Client, fifo_url: str) -> None:
    """Without MessageGroupId attributes the ``.fifo`` ARN still makes the batch ordered."""
    filled = await fill(mc, fifo_url, "sqs_fifo_two_groups.json")
    for record in filled.records:
        del record["attributes"]["MessageGroupId"]
    ran: list[int] = []

    def handle(record: ParsedRecord[Job]) -> None:
        ran.append(record.body.n)
        if record.body.n == 1:
            raise RuntimeError("stop")

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)
    assert ran == [0, 1]  # one (unnamed) group: everything after the failure waits
    assert failures(result) == [filled.id(i) for i in (1, 2, 3, 4)]


async def test_fifo_flag_overrides_detection(
    mc: msgcluster.Client, queue_url: str, fifo_url: str
) -> None:
    fifo = await fill(mc, fifo_url, "sqs_fifo_two_groups.json")
    ran: list[int] = []

    def handle(record: ParsedRecord[Job]) -> None:
        ran.append(record.body.n)
        if record.body.n in (0, 1):
            raise RuntimeError("fails")

    result = await mc.safe_process_batch(fifo.event, handle, fifo=False, body_type=Job)
    assert sorted(ran) == [0, 1, 2, 3, 4]  # unordered: nothing is held back
    assert sorted(failures(result)) == sorted([fifo.id(0), fifo.id(1)])

    standard = await fill(mc, queue_url, "sqs_standard.json")
    ran.clear()
    result = await mc.safe_process_batch(standard.event, handle, fifo=True, body_type=Job)
    assert ran == [0]  # no group ids: one group, stopped at its first failure
    assert failures(result) == [standard.id(i) for i in range(3)]


async def test_fifo_poison_blocks_its_group(mc: msgcluster.Client, fifo_url: str) -> None:
    filled = await fill(mc, fifo_url, "sqs_fifo_two_groups.json")
    filled.records[0]["body"] = "not an envelope"
    ran: list[int] = []
    result = await mc.safe_process_batch(
        filled.event, lambda r: ran.append(r.body.n), body_type=Job
    )
    assert ran == [2, 4]
    assert failures(result) == [filled.id(0), filled.id(1), filled.id(3)]
    assert (await stored(mc, filled.keys[1])).error == []


async def test_fifo_groups_run_concurrently_within_the_limit(
    mc: msgcluster.Client, fifo_url: str
) -> None:
    bodies = [OutgoingMessage(body=Job(i), group_id=f"g{i % 4}") for i in range(8)]
    await mc.send_message_batch(fifo_url, bodies)
    arn = await queue_arn(mc, fifo_url)
    messages = await receive_all(mc, fifo_url, 8)  # in order (moto's SequenceNumbers are not)
    event = {"Records": [as_lambda_record(m, arn) for m in messages]}
    in_group: dict[str | None, int] = {}
    order: dict[str | None, list[int]] = {}
    running = peak = 0

    async def handle(record: ParsedRecord[Job]) -> None:
        nonlocal running, peak
        group = record.message.group_id
        in_group[group] = in_group.get(group, 0) + 1
        assert in_group[group] == 1  # a group's messages never overlap
        order.setdefault(group, []).append(record.body.n)
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        in_group[group] -= 1

    result = await mc.safe_process_batch(event, handle, concurrency=2, body_type=Job)
    assert failures(result) == []
    assert peak == 2
    assert order == {f"g{g}": [g, g + 4] for g in range(4)}


# --------------------------------------------------------------------------- bad input


MALFORMED: list[Any] = [
    None,
    [],
    "Records",
    42,
    {},
    {"records": []},
    {"Records": None},
    {"Records": "x"},
    {"Records": {"0": {"messageId": "m", "body": "{}"}}},
    {"Records": [None]},
    {"Records": ["body"]},
    {"Records": [{"body": "{}"}]},
    {"Records": [{"messageId": "", "body": "{}"}]},
    {"Records": [{"messageId": 7, "body": "{}"}]},
    {"Records": [{"messageId": "m", "body": "{}", "eventSource": "aws:kinesis"}]},
    load_event("not_sqs_s3_event.json"),
    load_event("malformed_missing_message_id.json"),
]


@pytest.mark.parametrize("event", MALFORMED)
async def test_malformed_events_raise_before_any_handler(mc: msgcluster.Client, event: Any) -> None:
    called: list[Any] = []
    with pytest.raises(msgcluster.MalformedEventError):
        await mc.safe_process_batch(event, called.append)
    assert called == []


# Records with a message id but a bad shape: reported by id, alone.
MALFORMED_WITH_ID: list[Any] = [
    {"messageId": "m", "body": None},
    {"messageId": "m"},
    {"messageId": "m", "body": "{}", "attributes": [["SenderId", "x"]]},
    {"messageId": "m", "body": "{}", "receiptHandle": 5},
]


@pytest.mark.parametrize("record", MALFORMED_WITH_ID)
async def test_a_malformed_record_with_an_id_fails_alone(
    mc: msgcluster.Client, record: Any
) -> None:
    called: list[Any] = []
    event = {"Records": [{"messageId": "good", "body": "plain"}, record]}
    result = await mc.safe_process_batch(event, called.append)
    assert [r["messageId"] for r in called] == ["good"]
    assert result == {"batchItemFailures": [{"itemIdentifier": "m"}]}


async def test_malformed_record_after_good_ones_fails_the_whole_batch(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """A malformed event is a trigger bug, not a message to retry: nothing runs."""
    filled = await fill(mc, queue_url, "malformed_missing_message_id.json")
    called: list[Any] = []
    with pytest.raises(msgcluster.MalformedEventError, match=r"Records\[1\].*messageId"):
        await mc.safe_process_batch(filled.event, called.append)
    s3_event = load_event("not_sqs_s3_event.json")
    mixed = {"Records": [filled.records[0], *s3_event["Records"]]}
    with pytest.raises(msgcluster.MalformedEventError, match=r"Records\[1\]"):
        await mc.safe_process_batch(mixed, called.append)
    assert called == []
    for key in filled.keys:
        record = await stored(mc, key)
        assert (record.status, record.error) == (Status.PRE_FLIGHT, [])


async def test_empty_batch(mc: msgcluster.Client) -> None:
    called: list[Any] = []
    assert await mc.safe_process_batch({"Records": []}, called.append) == {"batchItemFailures": []}
    assert called == []


async def test_poison_bodies_fail_without_calling_the_handler(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    filled = await fill(mc, queue_url, "sqs_with_poison_body.json")
    template = filled.records[1]
    poison_bodies = [
        '{"hello": "world"}',  # JSON, not an envelope
        '{"type": "other", "pk": "SQSMessage$x", "rk": "SQSMessage$message"}',
        '{"type": "message", "pk": "x", "rk": "y"}',  # not a msgcluster key
        '{"type": "message", "rk": "SQSMessage$message"}',
        '["not", "an", "extended", "client", "pointer"]',
        "",
    ]
    for i, body in enumerate(poison_bodies):
        filled.records.append(template | {"messageId": f"poison-{i}", "body": body})
    seen: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        seen.append(record.body.n)

    result = await mc.safe_process_batch(filled.event, handle, body_type=Job)
    assert sorted(seen) == [0, 1]
    assert failures(result) == [filled.id(1)] + [f"poison-{i}" for i in range(len(poison_bodies))]
    # The good ones are complete, and poison never creates records.
    assert await stored_keys(mc, names["table"]) == set()


async def test_envelope_whose_record_is_gone_counts_as_complete(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """Records are written before their message is sent, so a missing record
    means "completed and removed" (or expired): the handler is not run."""
    filled = await fill(mc, queue_url, "sqs_standard.json")
    assert filled.keys[1] is not None
    await mc.mark_complete(filled.keys[1])
    seen: list[int] = []
    result = await mc.safe_process_batch(
        filled.event, lambda r: seen.append(r.body.n), body_type=Job
    )
    assert failures(result) == []
    assert sorted(seen) == [0, 2]


async def test_body_type_mismatch_is_a_recorded_failure(
    mc: msgcluster.Client, queue_url: str
) -> None:
    keys = await mc.send_message_batch(queue_url, [Job(0), {"n": "zero"}, Job(2)])
    arn = await queue_arn(mc, queue_url)
    messages = await receive_all(mc, queue_url, 3)
    by_pk = {mc.read_sqs_record(m).pk: as_lambda_record(m, arn) for m in messages}
    event = {"Records": [by_pk[key.pk] for key in keys]}  # type: ignore[union-attr]
    seen: list[int] = []

    async def handle(record: ParsedRecord[Job]) -> None:
        seen.append(record.body.n)

    result = await mc.safe_process_batch(event, handle, body_type=Job)
    bad = event["Records"][1]["messageId"]
    assert failures(result) == [bad]
    assert sorted(seen) == [0, 2]
    record = await stored(mc, keys[1])
    (entry,) = record.error
    assert entry.type == "BodyDecodeError"
    assert bad in entry.message
    assert "Job" in entry.message
    assert record.consumption_count == 1
    assert await gone(mc, keys[0])
    assert await gone(mc, keys[2])


# --------------------------------------------------------------------------- S3 bodies


class Blob(msgspec.Struct):
    blob: str


async def test_offloaded_body_is_loaded_before_the_handler(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    async with client_for(local_aws, names, max_message_bytes=2048) as small:
        big = await small.send_message(queue_url, Blob("x" * 10_000))
        inline = await small.send_message(queue_url, Blob("small"))
        arn = await queue_arn(small, queue_url)
        messages = await receive_all(small, queue_url, 2)
        assert any("PayloadS3Pointer" in m["Body"] for m in messages)
        event = {"Records": [as_lambda_record(m, arn) for m in messages]}
        seen: dict[RecordKey, tuple[bool, int]] = {}

        async def handle(record: ParsedRecord[Blob]) -> None:
            seen[record.key] = (record.offloaded, len(record.body.blob))

        result = await small.safe_process_batch(event, handle, body_type=Blob)
        assert failures(result) == []
        assert seen == {big: (True, 10_000), inline: (False, 5)}
        assert await gone(mc, big)


async def test_offloaded_body_that_is_gone_is_a_recorded_failure(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    async with client_for(local_aws, names, max_message_bytes=2048) as small:
        key = await small.send_message(queue_url, Blob("y" * 5_000))
    listed = await mc.s3.list_objects_v2(Bucket=names["bucket"], Prefix="SQSMessage$")
    for obj in listed["Contents"]:  # as the lifecycle rule would, eventually
        await mc.s3.delete_object(Bucket=names["bucket"], Key=obj["Key"])
    (message,) = await receive_all(mc, queue_url, 1)
    event = {"Records": [as_lambda_record(message, await queue_arn(mc, queue_url))]}
    called: list[Any] = []
    result = await mc.safe_process_batch(event, called.append, body_type=Blob)
    assert failures(result) == [message["MessageId"]]
    assert called == []
    (entry,) = (await stored(mc, key)).error
    assert entry.type == "ObjectNotFoundError"


# --------------------------------------------------------------------------- AWS faults


async def test_record_that_cannot_be_completed_is_reported(
    mc: msgcluster.Client, pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    """Work done but not recorded as done: reported, so it runs again (at least once)."""
    filled = await fill(mc, queue_url, "sqs_standard.json")
    rule = proxy.add_rule("BatchWriteItem", error(400, "ValidationException", "injected"), times=1)
    calls: list[int] = []
    result = await pc.safe_process_batch(
        filled.event, lambda r: calls.append(r.body.n), body_type=Job
    )
    assert rule.hits == 1
    assert failures(result) == [filled.id(i) for i in range(3)]
    for key in filled.keys:
        (entry,) = (await stored(mc, key)).error
        assert "could not be marked complete" in entry.message
    calls.clear()
    result = await pc.safe_process_batch(
        filled.event, lambda r: calls.append(r.body.n), body_type=Job
    )
    assert failures(result) == []
    assert sorted(calls) == [0, 1, 2]
    assert all([await gone(mc, key) for key in filled.keys])


async def test_failure_that_cannot_be_recorded_is_still_reported(
    mc: msgcluster.Client, pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    filled = await fill(mc, queue_url, "sqs_standard.json")
    proxy.add_rule("UpdateItem", error(400, "ValidationException", "injected"))

    def handle(record: ParsedRecord[Job]) -> None:
        if record.body.n == 2:
            raise RuntimeError("fails")

    result = await pc.safe_process_batch(filled.event, handle, body_type=Job)
    assert failures(result) == [filled.id(2)]
    assert (await stored(mc, filled.keys[2])).error == []  # logged, not recorded


async def test_completion_check_that_fails_raises_before_any_handler(
    mc: msgcluster.Client, pc: msgcluster.Client, queue_url: str, proxy: FaultProxy
) -> None:
    """Nothing ran, so the whole batch is retried: the exception propagates."""
    filled = await fill(mc, queue_url, "sqs_standard.json")
    proxy.add_rule("BatchGetItem", error(400, "ValidationException", "injected"), times=1)
    called: list[Any] = []
    with pytest.raises(msgcluster.AwsError, match="injected"):
        await pc.safe_process_batch(filled.event, called.append)
    assert called == []


# --------------------------------------------------------------------------- every sample


# Expected outcome of each sample event as delivered: the indices of the records
# reported as failures, or the exception the whole batch raises.
SAMPLE_OUTCOMES: dict[str, list[int] | type[Exception]] = {
    "sqs_standard.json": [],
    "sqs_fifo_two_groups.json": [],
    "sqs_with_poison_body.json": [],  # plain text: not msgcluster's, processed as it is
    "sqs_sns_notification_body.json": [],  # SNS -> SQS without raw message delivery
    "malformed_missing_message_id.json": msgcluster.MalformedEventError,
    "not_sqs_s3_event.json": msgcluster.MalformedEventError,
}


def test_every_sample_event_has_an_expected_outcome() -> None:
    assert {path.name for path in EVENTS.glob("*.json")} == set(SAMPLE_OUTCOMES)
    for path in EVENTS.glob("*.json"):
        json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(SAMPLE_OUTCOMES))
async def test_sample_event(
    mc: msgcluster.Client, queue_url: str, fifo_url: str, names: dict[str, str], name: str
) -> None:
    filled = await fill(mc, fifo_url if "fifo" in name else queue_url, name)
    slots = [key for key in filled.keys if key is not None]
    seen: list[RecordKey] = []
    expected = SAMPLE_OUTCOMES[name]
    if isinstance(expected, type):
        with pytest.raises(expected):
            await mc.safe_process_batch(filled.event, lambda r: seen.append(r.key))
        assert seen == []
        assert await stored_keys(mc, names["table"]) == set(slots)
        return
    plain: list[str] = []
    result = await mc.safe_process_batch(
        filled.event, lambda r: seen.append(r.key) if r.tracked else plain.append(r["body"])
    )
    assert failures(result) == [filled.id(i) for i in expected]
    assert sorted(seen, key=str) == sorted(slots, key=str)
    # Records msgcluster did not send reach the handler with their body as sent.
    assert plain == [
        r["body"] for r, k in zip(filled.records, filled.keys, strict=True) if k is None
    ]
    assert await stored_keys(mc, names["table"]) == set()
