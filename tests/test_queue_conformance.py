"""The one conformance suite every queue backend passes (gocloud's drivertest).

Adding a backend is one entry in ``BACKENDS``: an async *maker* that creates a
fresh, uniquely named queue for a :class:`QueueSpec` and returns a
:class:`Harness`. Queues it opens go on the ``stack`` (closed after the
test); queues it creates outside the process should be deleted through it too
(``stack.push_async_callback``). A maker may call
``request.getfixturevalue`` for *synchronous* fixtures only (``local_aws`` is
one; async fixtures cannot be started from inside the running event loop).

Time: tests never sleep themselves. They call ``harness.elapse(seconds)``,
which for memory:// shifts the queue's clock (instant) and for a remote
backend sleeps for real (plus whatever margin the backend needs). Real-time
costs are kept to ~1 s visibility timeouts, so a remote run stays short.
Receives that must come back empty use ``harness.empty_wait`` as their
long-poll time (0 where the backend answers exactly, ~1 s where a short poll
might miss messages).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiobotocore.session import AioSession

import msgcluster
from msgcluster.queues import (
    OutgoingMessage,
    Queue,
    ReceivedMessage,
    open_queue,
    provision_dynamodb_queue_table,
)

# --------------------------------------------------------------------------
# harness


@dataclass(frozen=True)
class QueueSpec:
    """What a test needs from a fresh queue."""

    fifo: bool = False
    visibility_timeout: int = 1
    max_receives: int | None = None  # None: no dead-letter queue


@dataclass
class Harness:
    queue: Queue
    dlq: Queue | None  # set when the spec has max_receives
    elapse: Callable[[float], Awaitable[None]]
    empty_wait: float = 0.0


Maker = Callable[[pytest.FixtureRequest, AsyncExitStack, QueueSpec], Awaitable[Harness]]


class ShiftedClock:
    """Real monotonic time plus manual shifts: long polls still end in real
    time, and visibility timeouts or delays can be skipped instantly."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    async def elapse(self, seconds: float) -> None:
        self.offset += seconds
        await anyio.lowlevel.checkpoint()


async def memory_backend(
    request: pytest.FixtureRequest, stack: AsyncExitStack, spec: QueueSpec
) -> Harness:
    base = f"conf-{uuid.uuid4().hex[:12]}"
    suffix = ".fifo" if spec.fifo else ""
    clock = ShiftedClock()
    query = f"visibility_timeout={spec.visibility_timeout}"
    if spec.max_receives is not None:
        query += f"&max_receives={spec.max_receives}&dlq={base}-dlq{suffix}"
    queue = await stack.enter_async_context(
        open_queue(f"memory://{base}{suffix}?{query}", clock=clock)
    )
    dlq = None
    if spec.max_receives is not None:
        dlq = await stack.enter_async_context(open_queue(f"memory://{base}-dlq{suffix}"))
    return Harness(queue=queue, dlq=dlq, elapse=clock.elapse)


async def sqs_backend(
    request: pytest.FixtureRequest, stack: AsyncExitStack, spec: QueueSpec
) -> Harness:
    """SQS on the embedded moto server: real time, so ``elapse`` sleeps."""
    aws = request.getfixturevalue("local_aws")
    sqs = await stack.enter_async_context(AioSession().create_client("sqs", **aws.client_kwargs()))
    base = f"conf-{uuid.uuid4().hex[:12]}"
    suffix = ".fifo" if spec.fifo else ""
    fifo = {"FifoQueue": "true"} if spec.fifo else {}
    attributes = {"VisibilityTimeout": str(spec.visibility_timeout), **fifo}
    dlq_url = None
    if spec.max_receives is not None:
        dlq_url = (await sqs.create_queue(QueueName=f"{base}-dlq{suffix}", Attributes=fifo))[
            "QueueUrl"
        ]
        stack.push_async_callback(sqs.delete_queue, QueueUrl=dlq_url)
        arn = (await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": arn, "maxReceiveCount": str(spec.max_receives)}
        )
    url = (await sqs.create_queue(QueueName=f"{base}{suffix}", Attributes=attributes))["QueueUrl"]
    stack.push_async_callback(sqs.delete_queue, QueueUrl=url)
    queue = await stack.enter_async_context(open_queue(url, client=sqs))
    dlq = None
    if dlq_url is not None:
        dlq = await stack.enter_async_context(open_queue(dlq_url, client=sqs))

    async def elapse(seconds: float) -> None:
        await anyio.sleep(seconds + 0.25)  # moto's clock, and whole seconds

    return Harness(queue=queue, dlq=dlq, elapse=elapse, empty_wait=1.0)


async def dynamodb_backend(
    request: pytest.FixtureRequest, stack: AsyncExitStack, spec: QueueSpec
) -> Harness:
    """dynamodb:// on the embedded moto server: every test's queues are new
    named queues in one shared table (several queues per table is the point)."""
    aws = request.getfixturevalue("local_aws")
    ddb = await stack.enter_async_context(
        AioSession().create_client("dynamodb", **aws.client_kwargs())
    )
    await provision_dynamodb_queue_table(ddb, "conformance-queues")
    base = f"conf-{uuid.uuid4().hex[:12]}"
    suffix = ".fifo" if spec.fifo else ""
    query = f"queue={base}{suffix}&visibility_timeout={spec.visibility_timeout}"
    if spec.max_receives is not None:
        query += f"&max_receives={spec.max_receives}&dlq={base}-dlq"
    else:
        query += "&max_receives=0"
    uri = f"dynamodb://conformance-queues?{query}"
    queue = await stack.enter_async_context(open_queue(uri, client=ddb))
    dlq = None
    if spec.max_receives is not None:
        dlq_uri = f"dynamodb://conformance-queues?queue={base}-dlq"
        dlq = await stack.enter_async_context(open_queue(dlq_uri, client=ddb))

    async def elapse(seconds: float) -> None:
        await anyio.sleep(seconds + 0.05)  # wall-clock leases, no rounding

    return Harness(queue=queue, dlq=dlq, elapse=elapse, empty_wait=0.1)


BACKENDS: dict[str, Maker] = {
    "memory": memory_backend,
    "sqs": sqs_backend,
    "dynamodb": dynamodb_backend,
}

MakeQueue = Callable[..., Awaitable[Harness]]


@pytest.fixture(params=sorted(BACKENDS))
async def queue_factory(request: pytest.FixtureRequest) -> AsyncIterator[MakeQueue]:
    """``await queue_factory(fifo=..., visibility_timeout=..., max_receives=...)``."""
    maker = BACKENDS[request.param]
    async with AsyncExitStack() as stack:

        async def make(**spec: Any) -> Harness:
            return await maker(request, stack, QueueSpec(**spec))

        yield make


@pytest.fixture
async def h(queue_factory: MakeQueue) -> Harness:
    """A standard queue, 1 s visibility timeout, no DLQ."""
    return await queue_factory()


# --------------------------------------------------------------------------
# helpers


async def receive_n(
    queue: Queue, n: int, *, within: float = 10.0, **options: Any
) -> list[ReceivedMessage]:
    """Receive until ``n`` distinct messages arrived (fails after ``within`` s)."""
    got: dict[str, ReceivedMessage] = {}
    with anyio.fail_after(within):
        while len(got) < n:
            for message in await queue.receive(wait_seconds=1, **options):
                got.setdefault(message.id, message)
    assert len(got) == n
    return list(got.values())


async def receive_nothing(h: Harness, queue: Queue | None = None) -> None:
    assert await (queue or h.queue).receive(wait_seconds=h.empty_wait) == []


async def send_ok(queue: Queue, messages: list[Any]) -> list[str]:
    results = await queue.send(messages)
    assert [r.error for r in results] == [None] * len(messages)
    assert [r.index for r in results] == list(range(len(messages)))
    return [r.id for r in results if r.id is not None]


def fifo(body: bytes, group: str) -> OutgoingMessage:
    return OutgoingMessage(body=body, group_id=group, dedup_id=uuid.uuid4().hex)


# --------------------------------------------------------------------------
# sending and receiving


async def test_send_receive_round_trip(h: Harness) -> None:
    assert isinstance(h.queue, Queue)
    ids = await send_ok(
        h.queue,
        [b"bytes", "text \N{SNOWMAN}", OutgoingMessage(body=b"with attrs", attributes={"k": "v"})],
    )
    assert len(set(ids)) == 3
    received = {m.id: m for m in await receive_n(h.queue, 3)}
    assert set(received) == set(ids)
    assert [received[i].body for i in ids] == [b"bytes", "text ☃".encode(), b"with attrs"]
    assert [received[i].attributes for i in ids] == [{}, {}, {"k": "v"}]
    assert all(m.receive_count == 1 for m in received.values())
    assert all(isinstance(m.receipt, str) and m.receipt for m in received.values())


async def test_invalid_entries_are_reported_and_the_rest_sent(h: Harness) -> None:
    results = await h.queue.send(
        [
            b"first",
            OutgoingMessage(body=b"x", attributes={"msgcluster.mine": "1"}),  # reserved
            OutgoingMessage(body=b"x", attributes={"empty": ""}),
            OutgoingMessage(body=b"x", attributes={"bad name": "1"}),
            12345,
            "last",
        ]
    )
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    for result in results[1:5]:
        assert isinstance(result.error, msgcluster.ValidationError)
        assert result.id is None
    received = await receive_n(h.queue, 2)
    assert sorted(m.body for m in received) == [b"first", b"last"]


async def test_empty_batches_and_bare_bodies(h: Harness) -> None:
    assert await h.queue.send([]) == []
    assert await h.queue.ack([]) == []
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.send(b"not in a list")  # type: ignore[arg-type]


async def test_receive_respects_max_messages(h: Harness) -> None:
    await send_ok(h.queue, [f"m{i}" for i in range(5)])
    with anyio.fail_after(10):
        while not (batch := await h.queue.receive(max_messages=2, wait_seconds=1)):
            pass
    assert 1 <= len(batch) <= 2


async def test_long_poll_returns_when_a_message_arrives(h: Harness) -> None:
    received: list[ReceivedMessage] = []

    async def poll() -> None:
        received.extend(await h.queue.receive(wait_seconds=10))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.2)
        await send_ok(h.queue, [b"wake up"])
    assert [m.body for m in received] == [b"wake up"]
    assert time.monotonic() - started < 5


async def test_delayed_message(h: Harness) -> None:
    # 2 s: the empty receive waits 1 s on a real clock, which must end
    # before the delay does.
    await send_ok(h.queue, [OutgoingMessage(body=b"later", delay_seconds=2), b"now"])
    (first,) = await receive_n(h.queue, 1)
    assert first.body == b"now"
    await h.queue.ack([first])
    await receive_nothing(h)
    await h.elapse(2)
    (later,) = await receive_n(h.queue, 1)
    assert later.body == b"later"


async def test_delay_over_the_limit_is_an_entry_error(h: Harness) -> None:
    too_long = h.queue.capabilities.max_delay_seconds + 1
    (result,) = await h.queue.send([OutgoingMessage(body=b"x", delay_seconds=too_long)])
    assert isinstance(result.error, msgcluster.ValidationError)


async def test_standard_queue_refuses_dedup_id(h: Harness) -> None:
    (result,) = await h.queue.send([OutgoingMessage(body=b"x", dedup_id="d")])
    assert isinstance(result.error, msgcluster.ValidationError)


# --------------------------------------------------------------------------
# bodies


BODIES = [
    b"",
    b"\x00",
    b"\xff\xfe\xfd",
    bytes(range(256)),
    b"\x00 control \x1f characters",  # valid UTF-8 that SQS refuses
    "\ufffe non-character".encode(),
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    "h\N{LATIN SMALL LETTER E WITH ACUTE}llo \N{SNOWMAN} \N{GRINNING FACE}".encode(),
    b"  spaces around  ",
    b"line\r\nbreaks\n",
]


async def test_arbitrary_bytes_round_trip_exactly(h: Harness) -> None:
    sent = [*BODIES, ""]
    messages: list[Any] = [
        OutgoingMessage(body=b, attributes={"n": str(i)}) for i, b in enumerate(sent)
    ]
    for start in range(0, len(messages), h.queue.capabilities.max_send_batch):
        await send_ok(h.queue, messages[start : start + h.queue.capabilities.max_send_batch])
    received = await receive_n(h.queue, len(sent))
    by_index = {int(m.attributes["n"]): m for m in received}
    for index, body in enumerate(sent):
        expected = body.encode() if isinstance(body, str) else body
        assert by_index[index].body == expected, index
        # Whatever a backend adds to carry a body (an encoding flag) is its own.
        assert by_index[index].attributes == {"n": str(index)}


async def test_attributes_count_as_sqs_counts_them(h: Harness) -> None:
    """Name, data type and value count against the size limit; a Binary value
    as its bytes, not their base64 text."""
    limit = h.queue.capabilities.max_body_bytes
    text = {"k": "v"}  # 1 + len("String") + 1 bytes
    (over,) = await h.queue.send([OutgoingMessage(body="x" * (limit - 2), attributes=text)])
    assert isinstance(over.error, msgcluster.MessageTooLargeError)
    blob = bytes(3072)  # 4,096 bytes as base64
    exact = limit - (len("b") + len("Binary") + len(blob))
    (fits,) = await h.queue.send([OutgoingMessage(body="y" * exact, attributes={"b": blob})])
    assert fits.ok, fits.error
    (message,) = await receive_n(h.queue, 1)
    assert len(message.body) == exact
    await h.queue.ack([message])


async def test_largest_body_fits_and_one_byte_more_does_not(h: Harness) -> None:
    limit = h.queue.capabilities.max_body_bytes
    (result,) = await h.queue.send(["x" * (limit + 1)])
    assert isinstance(result.error, msgcluster.MessageTooLargeError)
    await send_ok(h.queue, ["x" * limit])
    (message,) = await receive_n(h.queue, 1)
    assert message.body == b"x" * limit
    await h.queue.ack([message])

    binary = bytes(range(256)) * (limit // 2 // 256)
    await send_ok(h.queue, [binary])
    (message,) = await receive_n(h.queue, 1)
    assert message.body == binary


async def test_attribute_count_limit(h: Harness) -> None:
    most = h.queue.capabilities.max_attributes
    ok, over = await h.queue.send(
        [
            OutgoingMessage(body=b"ok", attributes={f"a{i}": "v" for i in range(most)}),
            OutgoingMessage(body=b"over", attributes={f"a{i}": "v" for i in range(most + 1)}),
        ]
    )
    assert ok.ok
    assert isinstance(over.error, msgcluster.ValidationError)
    (message,) = await receive_n(h.queue, 1)
    assert len(message.attributes) == most


# --------------------------------------------------------------------------
# ack, nack, visibility


async def test_ack_removes_and_is_idempotent(h: Harness) -> None:
    (sent,) = await send_ok(h.queue, [b"once"])
    (message,) = await receive_n(h.queue, 1)
    (result,) = await h.queue.ack([message])
    assert (result.ok, result.id, result.index) == (True, sent, 0)
    # A retried ack (its response was lost) must not fail.
    (again,) = await h.queue.ack([message])
    assert again.ok
    await h.elapse(1)
    await receive_nothing(h)


async def test_ack_reports_a_foreign_receipt_per_message(queue_factory: MakeQueue) -> None:
    one, other = await queue_factory(), await queue_factory()
    await send_ok(one.queue, [b"mine"])
    await send_ok(other.queue, [b"theirs"])
    (mine,) = await receive_n(one.queue, 1)
    (theirs,) = await receive_n(other.queue, 1)
    results = await one.queue.ack([theirs, mine])
    assert isinstance(results[0].error, msgcluster.ReceiptError)
    assert results[0].id == theirs.id
    assert results[1].ok
    assert results[1].id == mine.id


async def test_nack_redelivers_now(h: Harness) -> None:
    await send_ok(h.queue, [b"retry me"])
    (first,) = await receive_n(h.queue, 1)
    await h.queue.nack(first)
    (second,) = await receive_n(h.queue, 1)
    assert (second.id, second.body, second.receive_count) == (first.id, b"retry me", 2)
    assert second.receipt != first.receipt


async def test_nack_with_delay(h: Harness) -> None:
    await send_ok(h.queue, [b"later"])
    (first,) = await receive_n(h.queue, 1, visibility_timeout=30)
    await h.queue.nack(first, delay=1)
    await receive_nothing(h)
    await h.elapse(1)
    (second,) = await receive_n(h.queue, 1)
    assert (second.id, second.receive_count) == (first.id, 2)


async def test_visibility_expiry_redelivers(h: Harness) -> None:
    await send_ok(h.queue, [b"slow"])
    # 2 s: the empty receive waits 1 s on a real clock, which must end
    # before the message is visible again.
    (first,) = await receive_n(h.queue, 1, visibility_timeout=2)
    await receive_nothing(h)
    await h.elapse(2)
    (second,) = await receive_n(h.queue, 1)
    assert (second.id, second.receive_count) == (first.id, 2)
    (result,) = await h.queue.ack([second])
    assert result.ok


async def test_receive_visibility_timeout_overrides_the_queue_default(h: Harness) -> None:
    await send_ok(h.queue, [b"long"])
    # 4 s, not 2: on a real clock the sqs harness's elapse(1) plus the empty
    # receive's wait already take ~2.3 s.
    (first,) = await receive_n(h.queue, 1, visibility_timeout=4)
    await h.elapse(1)
    await receive_nothing(h)
    await h.elapse(3)
    (second,) = await receive_n(h.queue, 1)
    assert second.id == first.id


async def test_extend_keeps_the_message_invisible(h: Harness) -> None:
    await send_ok(h.queue, [b"heartbeat"])
    (message,) = await receive_n(h.queue, 1)
    await h.queue.extend(message, 3)
    await h.elapse(1)
    await receive_nothing(h)
    await h.queue.extend(message, 3)  # the receipt still holds
    (result,) = await h.queue.ack([message])
    assert result.ok


async def test_nack_and_extend_after_ack_raise_receipt_error(h: Harness) -> None:
    await send_ok(h.queue, [b"gone"])
    (message,) = await receive_n(h.queue, 1)
    await h.queue.ack([message])
    with pytest.raises(msgcluster.ReceiptError):
        await h.queue.extend(message, 5)
    with pytest.raises(msgcluster.ReceiptError):
        await h.queue.nack(message)


async def test_stale_receipt(h: Harness) -> None:
    """A receipt superseded by a later delivery never lets its holder steal
    the message back; strict backends refuse it outright."""
    await send_ok(h.queue, [b"contended"])
    (old,) = await receive_n(h.queue, 1)
    await h.elapse(1)
    (new,) = await receive_n(h.queue, 1)
    assert (new.id, new.receive_count) == (old.id, 2)
    if h.queue.capabilities.strict_receipts:
        with pytest.raises(msgcluster.ReceiptError):
            await h.queue.extend(old, 5)
        with pytest.raises(msgcluster.ReceiptError):
            await h.queue.nack(old)
        (stale,) = await h.queue.ack([old])
        assert isinstance(stale.error, msgcluster.ReceiptError)
        assert stale.error.message_id == old.id
    else:
        (stale,) = await h.queue.ack([old])
        assert stale.ok or isinstance(stale.error, msgcluster.ReceiptError)
    (current,) = await h.queue.ack([new])
    assert current.ok
    await h.elapse(1)
    await receive_nothing(h)


async def test_batched_visibility_changes(h: Harness) -> None:
    """``change_visibility`` is optional (the worker falls back to nack):
    where a backend has it, it is the batch form of nack/extend."""
    batch = getattr(h.queue, "change_visibility", None)
    if batch is None:
        pytest.skip("optional method; the worker uses nack/extend instead")
    await send_ok(h.queue, [b"soon", b"later"])
    received = {m.body: m for m in await receive_n(h.queue, 2, visibility_timeout=30)}
    results = await batch([(received[b"soon"], 0), (received[b"later"], 30)])
    assert [r.ok for r in results] == [True, True]
    (again,) = await receive_n(h.queue, 1, visibility_timeout=30)
    assert again.body == b"soon"
    await receive_nothing(h)
    with pytest.raises(msgcluster.BatchLimitError):  # the driver never splits
        await h.queue.driver.change_visibility(
            [(again, 1)] * (h.queue.capabilities.max_ack_batch + 1)
        )
    assert all(r.ok for r in await h.queue.ack([again, received[b"later"]]))


async def test_argument_limits(h: Harness) -> None:
    caps = h.queue.capabilities
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.receive(wait_seconds=caps.max_wait_seconds + 1)
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.receive(visibility_timeout=caps.max_visibility_seconds + 1)
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.receive(visibility_timeout=-1)
    await send_ok(h.queue, [b"x"])
    (message,) = await receive_n(h.queue, 1)
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.nack(message, delay=-1)
    with pytest.raises(msgcluster.ValidationError):
        await h.queue.extend(message, caps.max_visibility_seconds + 1)
    (result,) = await h.queue.ack([message])  # the bad calls changed nothing
    assert result.ok


# --------------------------------------------------------------------------
# batch limits: a driver never splits, it refuses the whole call


async def test_driver_batch_limits(h: Harness) -> None:
    driver = h.queue.driver
    caps = driver.capabilities
    assert min(caps.max_send_batch, caps.max_receive_batch, caps.max_ack_batch) >= 1
    with pytest.raises(msgcluster.BatchLimitError):
        await driver.send([b"x"] * (caps.max_send_batch + 1))
    await receive_nothing(h)  # nothing of the refused call was sent

    for max_messages in (0, caps.max_receive_batch + 1):
        with pytest.raises(msgcluster.BatchLimitError):
            await driver.receive(max_messages=max_messages)
        with pytest.raises(msgcluster.BatchLimitError):
            await h.queue.receive(max_messages=max_messages)

    await send_ok(h.queue, [f"m{i}" for i in range(caps.max_send_batch)])
    received = await receive_n(h.queue, caps.max_send_batch, visibility_timeout=30)
    with pytest.raises(msgcluster.BatchLimitError):
        await driver.ack([received[0]] * (caps.max_ack_batch + 1))
    results = await driver.ack(received[: caps.max_ack_batch])
    assert all(r.ok for r in results)


async def test_driver_send_bytes_limit(h: Harness) -> None:
    caps = h.queue.capabilities
    half = caps.max_send_batch_bytes // 2 + 1
    if half > caps.max_body_bytes or caps.max_send_batch < 2:
        pytest.skip("two messages over half the batch bytes do not fit one message each")
    with pytest.raises(msgcluster.BatchLimitError):
        await h.queue.driver.send(["a" * half, "b" * half])
    await receive_nothing(h)


# --------------------------------------------------------------------------
# the portable layer: any number of messages per call


async def test_a_thousand_messages_in_one_send(h: Harness) -> None:
    bodies = [f"m{i}".encode() for i in range(1_000)]
    results = await h.queue.send(body for body in bodies)  # any iterable, a generator too
    assert [r.index for r in results] == list(range(1_000))
    assert all(r.ok for r in results)
    received = await receive_n(h.queue, 1_000, within=60, visibility_timeout=60)
    assert sorted(m.body for m in received) == sorted(bodies)
    # Acks and visibility changes take any number as well; a receipt given twice
    # is acted on once and both entries get its result.
    changed = await h.queue.change_visibility([(m, 60) for m in received])
    assert all(r.ok for r in changed)
    acked = await h.queue.ack([*received, received[0]])
    assert len(acked) == 1_001
    assert all(r.ok for r in acked)
    assert acked[-1].id == received[0].id
    await receive_nothing(h)


async def test_an_out_of_range_visibility_fails_its_own_entry(h: Harness) -> None:
    await send_ok(h.queue, [b"a", b"b", b"c"])
    received = sorted(await receive_n(h.queue, 3), key=lambda m: m.body)
    too_long = h.queue.capabilities.max_visibility_seconds + 1
    results = await h.queue.change_visibility(
        [(received[0], 60), (received[1], too_long), (received[2], -1)]
    )
    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].ok
    assert isinstance(results[1].error, msgcluster.ValidationError)
    assert isinstance(results[2].error, msgcluster.ValidationError)
    await h.elapse(1)  # past the 1 s timeout: b and c are back, a is still hidden
    back = await receive_n(h.queue, 2)
    assert sorted(m.body for m in back) == [b"b", b"c"]


async def test_mixed_sizes_up_to_the_byte_limit(h: Harness) -> None:
    caps = h.queue.capabilities
    largest = caps.max_body_bytes
    sizes = [largest, 1, largest // 2, largest - 1, 3, largest // 3, largest]
    bodies = [bytes([97 + i]) * size for i, size in enumerate(sizes)]
    results = await h.queue.send([*bodies, b"x" * (largest + 1)])
    assert [r.ok for r in results] == [True] * len(bodies) + [False]
    assert isinstance(results[-1].error, msgcluster.MessageTooLargeError)
    received = await receive_n(h.queue, len(bodies), within=30)
    assert sorted(m.body for m in received) == sorted(bodies)
    assert all(r.ok for r in await h.queue.ack(received))


async def test_async_iterables_in_and_async_for_out(h: Harness) -> None:
    async def produce() -> AsyncIterator[bytes]:
        for i in range(15):
            yield f"a{i}".encode()

    assert all(r.ok for r in await h.queue.send(produce()))
    seen: list[bytes] = []
    with anyio.fail_after(20):
        async for message in h.queue.messages(wait_seconds=1):
            seen.append(message.body)
            await h.queue.ack([message])
            if len(set(seen)) == 15:
                break
    assert sorted(set(seen)) == sorted(f"a{i}".encode() for i in range(15))


async def test_dead_letter_now(queue_factory: MakeQueue) -> None:
    h = await queue_factory(max_receives=5)
    assert h.dlq is not None
    await send_ok(h.queue, [OutgoingMessage(body=b"bad", attributes={"k": "v"})])
    (message,) = await receive_n(h.queue, 1, visibility_timeout=30)
    assert await h.queue.dead_letter(message, "poison: cannot decode") is True
    (dead,) = await receive_n(h.dlq, 1)
    assert dead.body == b"bad"
    assert dead.attributes.get("k") == "v"
    await receive_nothing(h)


async def test_a_dead_letter_keeps_attribute_types_and_fits_at_the_limits(
    queue_factory: MakeQueue,
) -> None:
    """A message with as many attributes as the queue takes, one Binary, and a
    body the backend must encode: its dead letter is one the queue accepts,
    with the attributes as sent; the backend's bookkeeping (the reason) never
    shows among a received message's attributes."""
    h = await queue_factory(max_receives=5)
    assert h.dlq is not None
    count = h.queue.capabilities.max_attributes
    attributes: dict[str, Any] = {f"a{i}": f"v{i}" for i in range(count - 1)}
    attributes["bin"] = b"\x00\x01\x02"
    await send_ok(h.queue, [OutgoingMessage(body=b"\x00\xff", attributes=attributes)])
    (message,) = await receive_n(h.queue, 1, visibility_timeout=30)
    assert await h.queue.dead_letter(message, "poison: cannot decode") is True
    (dead,) = await receive_n(h.dlq, 1)
    assert dead.body == b"\x00\xff"
    assert dead.attributes == message.attributes
    assert base64.b64decode(dead.attributes["bin"]) == b"\x00\x01\x02"
    assert dead.attribute_types == message.attribute_types


async def test_dead_letter_without_a_dlq_keeps_the_message(h: Harness) -> None:
    await send_ok(h.queue, [b"kept"])
    (message,) = await receive_n(h.queue, 1, visibility_timeout=30)
    assert await h.queue.dead_letter(message, "no dlq") is False
    assert all(r.ok for r in await h.queue.ack([message]))  # it was left where it was


# --------------------------------------------------------------------------
# dead-letter queue


async def test_dead_letter_after_max_receives(queue_factory: MakeQueue) -> None:
    h = await queue_factory(max_receives=2)
    assert h.dlq is not None
    assert h.queue.capabilities.native_dlq
    await send_ok(h.queue, [OutgoingMessage(body=b"poison", attributes={"k": "v"})])
    for count in (1, 2):
        (message,) = await receive_n(h.queue, 1)
        assert message.receive_count == count
        await h.elapse(1)
    # The third delivery would exceed max_receives: it moves to the DLQ instead.
    await receive_nothing(h)
    (dead,) = await receive_n(h.dlq, 1)
    assert (dead.id, dead.body, dead.attributes) == (message.id, b"poison", {"k": "v"})


# --------------------------------------------------------------------------
# FIFO


async def test_fifo_keeps_order_within_each_group(queue_factory: MakeQueue) -> None:
    h = await queue_factory(fifo=True)
    assert h.queue.capabilities.fifo
    sent = [(f"g{i % 2}", f"{i}".encode()) for i in range(10)]
    await send_ok(h.queue, [fifo(body, group) for group, body in sent])
    seen: list[ReceivedMessage] = []
    with anyio.fail_after(10):
        while len(seen) < len(sent):
            batch = await h.queue.receive(wait_seconds=1)
            seen.extend(batch)
            assert all(r.ok for r in await h.queue.ack(batch))
    for group in ("g0", "g1"):
        expected = [body for g, body in sent if g == group]
        assert [m.body for m in seen if m.group_id == group] == expected


async def test_fifo_group_is_blocked_while_a_message_is_in_flight(
    queue_factory: MakeQueue,
) -> None:
    h = await queue_factory(fifo=True, visibility_timeout=30)
    await send_ok(h.queue, [fifo(b"a1", "a"), fifo(b"a2", "a"), fifo(b"b1", "b"), fifo(b"b2", "b")])
    (first,) = await receive_n(h.queue, 1, max_messages=1)
    assert first.body in {b"a1", b"b1"}  # the head of a group
    others: list[ReceivedMessage] = []
    while batch := await h.queue.receive(wait_seconds=max(h.empty_wait, 0.1)):
        others.extend(batch)
    other_group = "b" if first.group_id == "a" else "a"
    assert [m.body for m in others] == [f"{other_group}1".encode(), f"{other_group}2".encode()]
    assert all(r.ok for r in await h.queue.ack([first, *others]))
    (rest,) = await receive_n(h.queue, 1)
    assert rest.body == f"{first.group_id}2".encode()


async def test_fifo_group_unblocks_when_visibility_expires(queue_factory: MakeQueue) -> None:
    # Longer than receive_nothing's wait, so the group is still blocked then.
    h = await queue_factory(fifo=True, visibility_timeout=2)
    await send_ok(h.queue, [fifo(b"a1", "a"), fifo(b"a2", "a")])
    (first,) = await receive_n(h.queue, 1, max_messages=1)
    assert first.body == b"a1"
    await receive_nothing(h)
    await h.elapse(2)
    with anyio.fail_after(10):
        while not (batch := await h.queue.receive(wait_seconds=1)):
            pass
    assert (batch[0].body, batch[0].receive_count) == (b"a1", 2)
    assert [m.body for m in batch] in ([b"a1"], [b"a1", b"a2"])


async def test_fifo_deduplicates(queue_factory: MakeQueue) -> None:
    h = await queue_factory(fifo=True)
    message = OutgoingMessage(body=b"once", group_id="g", dedup_id="same")
    await send_ok(h.queue, [message])
    await send_ok(h.queue, [OutgoingMessage(body=b"again", group_id="g", dedup_id="same")])
    (received,) = await receive_n(h.queue, 1)
    assert received.body == b"once"
    await h.queue.ack([received])
    await receive_nothing(h)


async def test_fifo_entry_rules(queue_factory: MakeQueue) -> None:
    h = await queue_factory(fifo=True)
    results = await h.queue.send(
        [
            OutgoingMessage(body=b"no group", dedup_id="d1"),
            OutgoingMessage(body=b"no dedup", group_id="g"),
            OutgoingMessage(body=b"delay", group_id="g", dedup_id="d2", delay_seconds=1),
            fifo(b"fine", "g"),
        ]
    )
    assert [r.ok for r in results] == [False, False, False, True]
    assert all(isinstance(r.error, msgcluster.ValidationError) for r in results[:3])


# --------------------------------------------------------------------------
# closing


async def test_closed_queue_refuses_everything(h: Harness) -> None:
    await send_ok(h.queue, [b"x"])
    (message,) = await receive_n(h.queue, 1)
    await h.queue.aclose()
    await h.queue.aclose()  # idempotent
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: h.queue.send([b"y"]),
        lambda: h.queue.receive(),
        lambda: h.queue.ack([message]),
        lambda: h.queue.nack(message),
        lambda: h.queue.extend(message, 5),
        # With nothing to do too: a call after close is a bug, reported.
        lambda: h.queue.send([]),
        lambda: h.queue.ack([]),
        lambda: h.queue.change_visibility([]),
    ]
    for call in calls:
        with pytest.raises(msgcluster.QueueClosedError):
            await call()


async def test_aclose_ends_a_waiting_receive(h: Harness) -> None:
    async def poll() -> None:
        with pytest.raises(msgcluster.QueueClosedError):
            await h.queue.receive(wait_seconds=h.queue.capabilities.max_wait_seconds)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.1)
            await h.queue.aclose()


async def test_capabilities_are_declared(h: Harness) -> None:
    caps = h.queue.capabilities
    assert not caps.fifo
    assert caps.max_body_bytes > 0
    assert caps.max_send_batch_bytes >= caps.max_body_bytes
    assert caps.max_attributes >= 1
    assert caps.max_visibility_seconds >= 1
    assert caps.max_wait_seconds >= 1
    assert caps.max_delay_seconds >= 1
    # The optional driver methods are declared, and there when declared.
    driver = h.queue.driver
    assert caps.batch_visibility == callable(getattr(driver, "change_visibility", None))
    assert caps.dead_letter_now == callable(getattr(driver, "dead_letter", None))


async def test_bodies_over_the_limit_offloaded_with_a_payload_store(
    h: Harness, request: pytest.FixtureRequest
) -> None:
    """With ``payloads=PayloadStore(s3, bucket)`` a body larger than the queue
    takes goes to S3 in the SQS Extended Client's format and comes back whole."""
    from msgcluster.queues import PayloadStore, PortableQueue

    aws = request.getfixturevalue("local_aws")
    async with AioSession().create_client("s3", **aws.client_kwargs()) as s3:
        bucket = f"conf-{uuid.uuid4().hex[:12]}"
        await s3.create_bucket(Bucket=bucket)
        queue = PortableQueue(h.queue.driver, payloads=PayloadStore(s3, bucket))
        big = b"z" * (queue.capabilities.max_body_bytes + 1)
        results = await queue.send([big, b"small"])
        assert all(r.ok for r in results)
        objects = (await s3.list_objects_v2(Bucket=bucket)).get("Contents", [])
        assert [o["Size"] for o in objects] == [len(big)]
        received: dict[str, ReceivedMessage] = {}
        with anyio.fail_after(10):
            while len(received) < 2:
                for message in await queue.receive(wait_seconds=1):
                    received[message.id] = message
        assert sorted(m.body for m in received.values()) == sorted([big, b"small"])
        assert all(m.attributes == {} for m in received.values())
        assert all(r.ok for r in await queue.ack(list(received.values())))
