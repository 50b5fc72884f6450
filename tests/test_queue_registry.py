"""open_queue's registry (schemes, parameters, plug-ins) and what only
memory:// promises (exact clock control, namespace, memory bounds)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import msgcluster
from msgcluster.queues import (
    ENTRY_POINT_GROUP,
    OutgoingMessage,
    Queue,
    QueueURI,
    _registry,
    open_queue,
    register_backend,
    registered_schemes,
    reset_memory_queues,
)
from msgcluster.queues._memory import MemoryQueue


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test (or by docs snippets run earlier) stay out."""
    monkeypatch.setattr(_registry, "_registered", {})


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> list[importlib.metadata.EntryPoint]:
    points: list[importlib.metadata.EntryPoint] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [p for p in points if p.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return points


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mem(queue: Queue) -> MemoryQueue:
    driver = queue.driver  # type: ignore[attr-defined]
    assert isinstance(driver, MemoryQueue)
    return driver


# --------------------------------------------------------------------------
# schemes


def test_builtin_schemes_are_registered() -> None:
    assert registered_schemes() == ("dynamodb", "memory", "sqs")


def test_unknown_scheme_lists_the_registered_and_suggests_the_closest() -> None:
    with pytest.raises(msgcluster.UnknownSchemeError) as info:
        open_queue("memroy://jobs")
    error = info.value
    assert error.scheme == "memroy"
    assert error.suggestion == "memory"
    assert error.registered == ("dynamodb", "memory", "sqs")
    assert "memory://" in str(error)
    assert "sqs://" in str(error)
    assert "did you mean memory://?" in str(error)
    assert isinstance(error, msgcluster.QueueURIError)


def test_unknown_scheme_without_a_close_match() -> None:
    with pytest.raises(msgcluster.UnknownSchemeError) as info:
        open_queue("zzzzzz://jobs")
    assert info.value.suggestion is None
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("uri", ["jobs", "", "memory:jobs"])
def test_not_a_uri(uri: str) -> None:
    with pytest.raises(msgcluster.QueueURIError):
        open_queue(uri)


async def test_dynamodb_scheme_is_available_and_checks_its_parameters() -> None:
    # Implemented (docs/dynamodb-queue.md): unknown parameters are refused
    # before any request is made, naming the valid ones.
    with pytest.raises(msgcluster.QueueURIError, match="visibility_timeout"):
        await open_queue("dynamodb://table?visiblity_timeout=5")


def test_missing_builtin_module_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_registry._BUILTIN, "sqs", "msgcluster.queues._nope:open_nope_queue")
    with pytest.raises(msgcluster.BackendUnavailableError) as info:
        open_queue("sqs://jobs")
    assert "msgcluster.queues._nope" in str(info.value)
    assert "reinstall" in str(info.value)


def test_missing_dependency_of_a_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_backend("dep", "needs_missing_dep:factory")
    with pytest.raises(msgcluster.BackendUnavailableError, match="not_installed_anywhere_xyz"):
        open_queue("dep://x")


@pytest.mark.parametrize(
    "uri",
    [
        "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
        "http://localhost:4566/000000000000/jobs",
    ],
)
async def test_sqs_queue_urls_open_with_the_sqs_backend(uri: str) -> None:
    seen: list[QueueURI] = []

    async def fake_sqs(parsed: QueueURI, /, **options: Any) -> Queue:
        seen.append(parsed)
        return await open_queue(f"memory://{unique()}")

    register_backend("sqs", fake_sqs, replace=True)
    queue = await open_queue(uri)
    await queue.aclose()
    (parsed,) = seen
    assert parsed.uri == uri
    assert parsed.scheme == uri.partition(":")[0]
    assert parsed.location.endswith("/jobs")


# --------------------------------------------------------------------------
# URI validation


def test_password_is_refused_and_never_echoed() -> None:
    with pytest.raises(msgcluster.QueueURIError) as info:
        open_queue("memory://alice:hunter2@jobs?visibility_timeout=5")
    message = str(info.value)
    assert "hunter2" not in message
    assert "alice" not in message
    assert "credentials" in message
    assert "jobs" in message


def test_user_without_password_is_refused_too() -> None:
    with pytest.raises(msgcluster.QueueURIError, match="credentials"):
        open_queue("sqs://AKIAEXAMPLE@jobs")


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("memory://jobs?visibility_timeout=1&visibility_timeout=2", "twice"),
        ("memory://jobs?flag", "malformed"),
        ("memory://jobs#frag", "fragment"),
    ],
)
def test_malformed_uris(uri: str, match: str) -> None:
    with pytest.raises(msgcluster.QueueURIError, match=match):
        open_queue(uri)


async def test_unknown_parameter_names_the_valid_ones() -> None:
    with pytest.raises(msgcluster.QueueURIError) as info:
        await open_queue(f"memory://{unique()}?visiblity_timeout=5")
    message = str(info.value)
    assert "'visiblity_timeout'" in message
    assert "visibility_timeout" in message.partition("valid:")[2]
    assert "clock" not in message.partition("valid:")[2]  # keyword option only


@pytest.mark.parametrize(
    "query",
    [
        "visibility_timeout=abc",
        "visibility_timeout=-1",
        "visibility_timeout=50000",
        "visibility_timeout=nan",
        "max_receives=0",
        "max_receives=1.5",
        "fifo=maybe",
        "delay=901",
        "dlq=",
        "clock=time",
    ],
)
async def test_invalid_parameter_values(query: str) -> None:
    name = query.partition("=")[0]
    with pytest.raises(msgcluster.QueueURIError, match=name):
        await open_queue(f"memory://{unique()}?{query}")


async def test_unknown_option() -> None:
    with pytest.raises(msgcluster.QueueURIError, match="unknown option 'colour'"):
        await open_queue(f"memory://{unique()}", colour="blue")


async def test_options_override_query_parameters() -> None:
    clock = FakeClock()
    async with open_queue(
        f"memory://{unique()}?visibility_timeout=100", visibility_timeout=1, clock=clock
    ) as queue:
        await queue.send([b"x"])
        await queue.receive()
        clock.advance(1)
        assert len(await queue.receive()) == 1


async def test_options_accept_native_values() -> None:
    async with open_queue(
        f"memory://{unique()}", fifo=True, max_receives=3, content_based_dedup="true"
    ) as queue:
        assert queue.capabilities.fifo


# --------------------------------------------------------------------------
# open_queue's two forms


async def test_await_form_and_context_form() -> None:
    name = unique()
    queue = await open_queue(f"memory://{name}")
    assert isinstance(queue, Queue)
    assert queue.uri == f"memory://{name}"
    await queue.send([b"x"])
    await queue.aclose()
    async with open_queue(f"memory://{name}") as again:
        assert len(await again.receive()) == 1
    with pytest.raises(msgcluster.QueueClosedError):
        await again.receive()


# --------------------------------------------------------------------------
# registering backends


class Wrapped:
    """A third-party-style backend: delegates to memory://, adds a prefix."""

    def __init__(self, inner: Queue, uri: str) -> None:
        self.inner = inner
        self.uri = uri
        self.capabilities = inner.capabilities
        self.send = inner.send
        self.receive = inner.receive
        self.ack = inner.ack
        self.nack = inner.nack
        self.extend = inner.extend
        self.aclose = inner.aclose

    async def __aenter__(self) -> Wrapped:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def wrapped_factory(uri: QueueURI, /, **options: Any) -> Wrapped:
    inner = await open_queue(f"memory://{uri.location}", **options)
    return Wrapped(inner, uri.uri)


async def test_register_backend() -> None:
    register_backend("Wrapped", wrapped_factory)
    assert "wrapped" in registered_schemes()
    async with open_queue(f"wrapped://{unique()}", visibility_timeout=5) as queue:
        assert isinstance(queue.driver, Wrapped)
        await queue.send([b"x"])
        assert [m.body for m in await queue.receive()] == [b"x"]


def test_register_backend_refuses_to_replace_silently() -> None:
    register_backend("wrapped", wrapped_factory)
    for scheme in ("wrapped", "memory", "https"):
        with pytest.raises(msgcluster.ConfigurationError, match="replace=True"):
            register_backend(scheme, wrapped_factory)
    register_backend("wrapped", wrapped_factory, replace=True)


@pytest.mark.parametrize("scheme", ["", "1abc", "has space", "under_score"])
def test_register_backend_checks_the_scheme(scheme: str) -> None:
    with pytest.raises(msgcluster.ConfigurationError):
        register_backend(scheme, wrapped_factory)


def test_register_backend_checks_the_factory() -> None:
    with pytest.raises(msgcluster.ConfigurationError):
        register_backend("x", "no-colon-here")


async def test_lazy_string_factory_is_imported_on_first_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = f"lazy_backend_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from msgcluster.queues._memory import open_memory_queue as factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register_backend("lazy", f"{module}:factory")
    assert module not in sys.modules
    async with open_queue(f"lazy://{unique()}"):
        assert module in sys.modules


async def test_factory_must_return_a_queue() -> None:
    async def not_a_queue(uri: QueueURI, /, **options: Any) -> Any:
        return object()

    register_backend("bogus", not_a_queue)
    with pytest.raises(msgcluster.ConfigurationError, match="does not implement"):
        await open_queue("bogus://x")


# --------------------------------------------------------------------------
# entry points


async def test_entry_point_backend(fake_entry_points: list[importlib.metadata.EntryPoint]) -> None:
    fake_entry_points.append(
        importlib.metadata.EntryPoint(
            "plug", "msgcluster.queues._memory:open_memory_queue", ENTRY_POINT_GROUP
        )
    )
    fake_entry_points.append(importlib.metadata.EntryPoint("other", "x:y", "some.other.group"))
    assert registered_schemes() == ("dynamodb", "memory", "plug", "sqs")
    async with open_queue(f"plug://{unique()}") as queue:
        assert isinstance(queue.driver, MemoryQueue)


async def test_entry_point_cannot_shadow_a_builtin(
    fake_entry_points: list[importlib.metadata.EntryPoint],
) -> None:
    fake_entry_points.append(importlib.metadata.EntryPoint("memory", "x:y", ENTRY_POINT_GROUP))
    async with open_queue(f"memory://{unique()}") as queue:
        assert isinstance(queue.driver, MemoryQueue)


def test_broken_entry_point(fake_entry_points: list[importlib.metadata.EntryPoint]) -> None:
    fake_entry_points.append(
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz:f", ENTRY_POINT_GROUP)
    )
    with pytest.raises(msgcluster.BackendUnavailableError, match="no_such_module_xyz"):
        open_queue("broken://x")


def test_unknown_scheme_suggests_entry_points(
    fake_entry_points: list[importlib.metadata.EntryPoint],
) -> None:
    fake_entry_points.append(importlib.metadata.EntryPoint("redis", "x:y", ENTRY_POINT_GROUP))
    with pytest.raises(msgcluster.UnknownSchemeError) as info:
        open_queue("rediss://x")
    assert info.value.suggestion == "redis"


# --------------------------------------------------------------------------
# memory:// namespace and settings


async def test_handles_share_one_queue() -> None:
    name = unique()
    async with open_queue(f"memory://{name}") as a, open_queue(f"memory://{name}") as b:
        await a.send([b"shared"])
        assert [m.body for m in await b.receive()] == [b"shared"]
        await a.aclose()  # closing one handle leaves the queue and the other handle
        await b.send([b"still"])
        assert len(await b.receive()) == 1


async def test_reset_memory_queues() -> None:
    name = unique()
    async with open_queue(f"memory://{name}") as before:
        await before.send([b"x"])
        (message,) = await before.receive(visibility_timeout=0)
        reset_memory_queues()
        async with open_queue(f"memory://{name}") as after:
            assert await after.receive() == []
            (result,) = await after.ack([message])  # a receipt from before the reset
            assert isinstance(result.error, msgcluster.ReceiptError)


async def test_reopening_may_restate_but_not_change_settings() -> None:
    name = unique()
    clock = FakeClock()
    async with open_queue(f"memory://{name}?visibility_timeout=5", clock=clock):
        async with open_queue(f"memory://{name}?visibility_timeout=5.0"):
            pass
        async with open_queue(f"memory://{name}", clock=clock):
            pass
        with pytest.raises(msgcluster.QueueURIError, match="already exists"):
            await open_queue(f"memory://{name}?visibility_timeout=6")
        with pytest.raises(msgcluster.QueueURIError, match="another clock"):
            await open_queue(f"memory://{name}", clock=FakeClock())


@pytest.mark.parametrize(
    "uri",
    [
        "memory://bad name",
        "memory://has.dot",
        f"memory://{'x' * 81}",
        "memory://a/b",
        "memory://jobs.fifo?fifo=false",
        "memory://jobs?dlq=other",
        "memory://jobs?max_receives=2&dlq=jobs",
    ],
)
async def test_invalid_memory_queue_settings(uri: str) -> None:
    with pytest.raises(msgcluster.QueueURIError):
        await open_queue(uri)


async def test_fifo_by_parameter_and_by_name() -> None:
    async with open_queue(f"memory://{unique()}?fifo=true") as by_param:
        assert by_param.capabilities.fifo
    async with open_queue(f"memory://{unique()}.fifo") as by_name:
        assert by_name.capabilities.fifo


async def test_default_and_named_dlq() -> None:
    clock = FakeClock()
    cases = [
        (f"{(base := unique())}?max_receives=1", f"{base}-dlq"),
        (f"{(base := unique())}.fifo?max_receives=1", f"{base}-dlq.fifo"),
        (f"{unique()}?max_receives=1&dlq={(dlq := unique('dead'))}", dlq),
    ]
    for query, dlq_name in cases:
        async with open_queue(f"memory://{query}", clock=clock) as queue:
            fifo = queue.capabilities.fifo
            await queue.send(
                [OutgoingMessage(body=b"x", group_id="g", dedup_id="d") if fifo else b"x"]
            )
            await queue.nack((await queue.receive())[0])
            assert await queue.receive() == []
            async with open_queue(f"memory://{dlq_name}") as dlq:
                assert [m.body for m in await dlq.receive()] == [b"x"]


async def test_dlq_kind_must_match() -> None:
    dead = unique("dead")
    async with open_queue(f"memory://{dead}"):
        with pytest.raises(msgcluster.QueueURIError, match="FIFO"):
            await open_queue(f"memory://{unique()}?fifo=true&max_receives=1&dlq={dead}")


async def test_max_body_bytes_parameter_counts_attributes() -> None:
    async with open_queue(f"memory://{unique()}?max_body_bytes=10") as queue:
        (fits,) = await queue.send([b"0123456789"])
        assert fits.ok
        results = await queue.send(
            [OutgoingMessage(body=b"01234", attributes={"ab": "cdef"}), b"x" * 11]
        )
        assert [r.ok for r in results] == [False, False]
        assert all(isinstance(r.error, msgcluster.MessageTooLargeError) for r in results)


# --------------------------------------------------------------------------
# memory:// time, with a fake clock


@pytest.fixture
async def clocked() -> Any:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}", clock=clock) as queue:
        yield queue, clock


async def test_default_visibility_timeout_is_30_seconds(clocked: Any) -> None:
    queue, clock = clocked
    await queue.send([b"x"])
    await queue.receive()
    clock.advance(29.9)
    assert await queue.receive() == []
    clock.advance(0.1)
    assert [m.receive_count for m in await queue.receive()] == [2]


async def test_queue_default_delay_and_per_message_override() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}?delay=10", clock=clock) as queue:
        await queue.send([b"queue delay", OutgoingMessage(body=b"no delay", delay_seconds=0)])
        assert [m.body for m in await queue.receive()] == [b"no delay"]
        clock.advance(9.99)
        assert await queue.receive() == []
        clock.advance(0.01)
        assert [m.body for m in await queue.receive()] == [b"queue delay"]


async def test_long_poll_follows_a_fake_clock(clocked: Any) -> None:
    queue, clock = clocked
    result: list[Any] = []

    async def poll() -> None:
        result.append(await queue.receive(wait_seconds=5))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.05)
            assert result == []  # fake time has not moved: still waiting
            clock.advance(5)
    assert result == [[]]


async def test_long_poll_sees_a_message_become_visible_on_a_fake_clock(clocked: Any) -> None:
    queue, clock = clocked
    await queue.send([OutgoingMessage(body=b"delayed", delay_seconds=3)])
    result: list[Any] = []

    async def poll() -> None:
        result.extend(await queue.receive(wait_seconds=10))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.05)
            clock.advance(3)
    assert [m.body for m in result] == [b"delayed"]


async def test_long_poll_on_the_real_clock_sleeps_until_the_deadline() -> None:
    async with open_queue(f"memory://{unique()}") as queue:
        started = time.monotonic()
        assert await queue.receive(wait_seconds=0.3) == []
        assert 0.25 <= time.monotonic() - started < 1.5


async def test_long_poll_on_the_real_clock_wakes_when_visibility_expires() -> None:
    async with open_queue(f"memory://{unique()}?visibility_timeout=0.2") as queue:
        await queue.send([b"x"])
        await queue.receive()
        started = time.monotonic()
        (again,) = await queue.receive(wait_seconds=5)
        assert again.receive_count == 2
        assert time.monotonic() - started < 1.5


async def test_long_poll_wakes_for_a_shorter_nack_delay() -> None:
    async with open_queue(f"memory://{unique()}?visibility_timeout=60") as queue:
        await queue.send([b"x"])
        (message,) = await queue.receive()
        received: list[Any] = []

        async def poll() -> None:
            received.extend(await queue.receive(wait_seconds=10))

        with anyio.fail_after(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.05)
                await queue.nack(message, delay=0.2)
        assert [m.receive_count for m in received] == [2]


async def test_zero_visibility_does_not_deliver_twice_in_one_call(clocked: Any) -> None:
    queue, _ = clocked
    await queue.send([b"x"])
    assert len(await queue.receive(visibility_timeout=0)) == 1
    assert [m.receive_count for m in await queue.receive()] == [2]


async def test_ack_after_expiry_with_the_latest_receipt_succeeds(clocked: Any) -> None:
    queue, clock = clocked
    await queue.send([b"x"])
    (message,) = await queue.receive()
    clock.advance(31)
    (result,) = await queue.ack([message])  # nobody received it since: still ours
    assert result.ok
    assert await queue.receive() == []


async def test_nack_or_extend_after_expiry_is_refused(clocked: Any) -> None:
    queue, clock = clocked
    await queue.send([b"x"])
    (message,) = await queue.receive()
    clock.advance(30)
    with pytest.raises(msgcluster.ReceiptError, match="not in flight"):
        await queue.extend(message, 10)
    with pytest.raises(msgcluster.ReceiptError, match="not in flight"):
        await queue.nack(message)


async def test_total_visibility_is_capped_at_12_hours(clocked: Any) -> None:
    queue, clock = clocked
    await queue.send([b"x"])
    (message,) = await queue.receive()
    for _ in range(4):
        await queue.extend(message, 13_000)
        clock.advance(10_000)
    # 40,000 s after the receive: 10,000 more would pass 43,200 s.
    with pytest.raises(msgcluster.ValidationError, match="43200"):
        await queue.extend(message, 10_000)
    await queue.extend(message, 3_000)


async def test_fifo_dedup_window_is_five_minutes() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo", clock=clock) as queue:
        message = OutgoingMessage(body=b"x", group_id="g", dedup_id="same")
        (first,) = await queue.send([message])
        clock.advance(299)
        (second,) = await queue.send([message])
        assert second.id == first.id  # a duplicate: accepted, not queued
        clock.advance(1)
        (third,) = await queue.send([message])
        assert third.id != first.id
        assert len(mem(queue)._store) == 2


async def test_content_based_dedup() -> None:
    async with open_queue(f"memory://{unique()}.fifo?content_based_dedup=true") as queue:
        results = await queue.send(
            [
                OutgoingMessage(body=b"same", group_id="g"),
                OutgoingMessage(body=b"same", group_id="h"),
                OutgoingMessage(body=b"other", group_id="g"),
            ]
        )
        assert results[0].id == results[1].id != results[2].id


async def test_fifo_group_stays_blocked_through_a_nack_delay() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo", clock=clock) as queue:
        await queue.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=f"{i}") for i in range(2)]
        )
        (first,) = await queue.receive(max_messages=1)
        await queue.nack(first, delay=5)
        assert await queue.receive() == []
        clock.advance(5)
        assert [m.body for m in await queue.receive()] == [b"0", b"1"]


async def test_fifo_acks_out_of_order_keep_the_order() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo", clock=clock) as queue:
        await queue.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=f"{i}") for i in range(3)]
        )
        first, second = await queue.receive(max_messages=2)
        await queue.ack([second])
        await queue.nack(first)
        # Nothing of the group is in flight now: "0" comes back first.
        assert [m.body for m in await queue.receive()] == [b"0", b"2"]


async def test_fifo_dead_letters_the_head_and_moves_on() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo?max_receives=1", clock=clock) as queue:
        await queue.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=f"{i}") for i in range(2)]
        )
        (first,) = await queue.receive(max_messages=1)
        await queue.nack(first)
        assert [m.body for m in await queue.receive()] == [b"1"]


# --------------------------------------------------------------------------
# memory:// bounds


async def test_memory_is_bounded_by_the_messages_held(clocked: Any) -> None:
    queue, _ = clocked
    store = mem(queue)._store
    for _ in range(100):
        await queue.send([f"m{i}".encode() for i in range(10)])
        batch = await queue.receive(max_messages=10)
        for message in batch:
            await queue.extend(message, 60)
            await queue.extend(message, 120)
        await queue.ack(batch)
    assert len(store) == 0
    assert len(store._ready) + len(store._pending) <= 64
    assert store.waiters == set()


async def test_dedup_ids_are_forgotten_after_the_window() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo", clock=clock) as queue:
        store = mem(queue)._store
        for i in range(50):
            await queue.send([OutgoingMessage(body=b"x", group_id="g", dedup_id=str(i))])
        clock.advance(301)
        await queue.send([OutgoingMessage(body=b"x", group_id="g", dedup_id="last")])
        assert len(store._dedup) == 1


async def test_fifo_group_is_blocked_by_any_message_in_flight() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo", clock=clock) as queue:
        await queue.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=f"{i}") for i in range(2)]
        )
        first, second = await queue.receive()
        await queue.nack(first)  # visible again, but "1" is still in flight
        assert await queue.receive() == []
        await queue.ack([second])
        assert [m.body for m in await queue.receive()] == [b"0"]


async def test_fifo_queue_delay_keeps_later_messages_back() -> None:
    clock = FakeClock()
    async with open_queue(f"memory://{unique()}.fifo?delay=10", clock=clock) as queue:
        await queue.send([OutgoingMessage(body=b"0", group_id="g", dedup_id="0")])
        clock.advance(5)
        await queue.send([OutgoingMessage(body=b"1", group_id="g", dedup_id="1")])
        clock.advance(5)
        assert [m.body for m in await queue.receive()] == [b"0"]


async def test_fifo_ack_wakes_a_receive_waiting_on_the_group() -> None:
    async with open_queue(f"memory://{unique()}.fifo") as queue:
        await queue.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=f"{i}") for i in range(2)]
        )
        (first,) = await queue.receive(max_messages=1)
        received: list[Any] = []

        async def poll() -> None:
            received.extend(await queue.receive(wait_seconds=10))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.05)
                await queue.ack([first])
        assert [m.body for m in received] == [b"1"]
