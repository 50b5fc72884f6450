"""The worker runtime: typed dispatch, flow control, poison, heartbeat,
shutdown, and tracked messages / clusters on SQS (moto)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest

import msgcluster
from msgcluster import ConfigurationError
from msgcluster.queues import open_queue
from msgcluster.queues._memory import reset_memory_queues
from msgcluster.worker import App, MessageContext, Outcome, Reject, Retry, Worker


class Resize(msgspec.Struct, tag=True):
    image: str
    width: int


class Notify(msgspec.Struct, tag=True):
    user: str


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


@pytest.fixture(autouse=True)
def _fresh_memory_queues() -> None:
    reset_memory_queues()


def mem_uri(**params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"memory://w-{uuid.uuid4().hex[:8]}" + (f"?{query}" if query else "")


def fast_worker(app: App, queue: Any, **options: Any) -> Worker:
    options.setdefault("burst", True)
    options.setdefault("wait_seconds", 0.05)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("handle_signals", False)
    return Worker(app, queue, **options)


async def test_tagged_bodies_dispatch_to_their_handler() -> None:
    app = App()
    seen: list[Any] = []

    @app.handler(Resize)
    async def resize(job: Resize) -> None:
        seen.append(job)

    @app.handler(Notify)
    async def notify(job: Notify, ctx: MessageContext) -> None:
        assert ctx.receive_count == 1
        seen.append(job)

    async with open_queue(mem_uri()) as q:
        await q.send([encode(Resize(image="a", width=i)) for i in range(5)])
        await q.send([encode(Notify(user="u"))])
        stats = await fast_worker(app, q).run()
    assert stats[Outcome.SUCCEEDED] == 6
    assert sorted(type(s).__name__ for s in seen) == ["Notify"] + ["Resize"] * 5


def test_handlers_msgspec_cannot_tell_apart_are_refused() -> None:
    class A(msgspec.Struct):
        x: int

    class B(msgspec.Struct):
        y: int

    app = App()
    app.handler(A)(_noop)
    with pytest.raises(ConfigurationError, match="tagged Structs"):
        app.handler(B)(_noop)
    with pytest.raises(ConfigurationError, match="async"):
        app.handler(int)(lambda body: None)  # type: ignore[arg-type, return-value]


async def _noop(body: Any) -> None:
    return None


async def test_failures_back_off_then_dead_letter_after_max_receives() -> None:
    app = App()
    attempts: Counter[int] = Counter()

    @app.handler(Resize)
    async def resize(job: Resize) -> None:
        attempts[job.width] += 1
        if job.width == 0:
            raise RuntimeError("always fails")
        if job.width == 1 and attempts[1] < 2:
            raise Retry(delay=0)

    uri = mem_uri(max_receives=3)
    async with open_queue(uri) as q:
        await q.send([encode(Resize(image="x", width=i)) for i in range(3)])
        # Backoff keeps a failed message invisible for a while: run until it
        # has used its receives (burst stops at the first empty receive).
        for _ in range(50):
            await fast_worker(app, q).run()
            if attempts[0] >= 3:
                break
            await anyio.sleep(0.02)
        # Its next receive moves it to the DLQ instead (SQS's redrive rule).
        await anyio.sleep(0.1)
        assert await q.receive(10) == []
        name = uri.removeprefix("memory://").split("?")[0]
        async with open_queue(f"memory://{name}-dlq") as dlq:
            dead = await dlq.receive(10)
    assert attempts == {0: 3, 1: 2, 2: 1}
    assert [msgspec.json.decode(m.body, type=Resize).width for m in dead] == [0]


async def test_reject_and_poison_go_to_the_dlq_at_once() -> None:
    app = App()

    @app.handler(Resize)
    async def resize(job: Resize) -> None:
        raise Reject("bad image")

    uri = mem_uri(max_receives=5)
    async with open_queue(uri) as q:
        await q.send([encode(Resize(image="x", width=1)), b"\xff not json", b'{"type":"Nope"}'])
        stats = await fast_worker(app, q).run()
        name = uri.removeprefix("memory://").split("?")[0]
        async with open_queue(f"memory://{name}-dlq") as dlq:
            dead = await dlq.receive(10)
    assert stats[Outcome.DEAD_LETTERED] == 3
    assert sorted(m.receive_count for m in dead) == [1, 1, 1]


async def test_heartbeat_keeps_a_long_handler_invisible() -> None:
    app = App()
    runs: list[int] = []

    @app.handler(Resize)
    async def slow(job: Resize, ctx: MessageContext) -> None:
        runs.append(ctx.receive_count)
        await anyio.sleep(2.5)  # > the 1 s visibility timeout

    async with open_queue(mem_uri()) as q:
        await q.send([encode(Resize(image="x", width=1))])
        worker = fast_worker(app, q, visibility_timeout=1.0, receivers=2)
        stats = await worker.run()
    assert runs == [1]  # never redelivered while it ran
    assert stats[Outcome.SUCCEEDED] == 1


async def test_graceful_stop_releases_unstarted_and_drains_running() -> None:
    app = App()
    started: list[int] = []
    finished: list[int] = []
    gate = anyio.Event()
    two_started = anyio.Event()

    @app.handler(Resize)
    async def job(body: Resize) -> None:
        started.append(body.width)
        if len(started) == 2:
            two_started.set()
        await gate.wait()
        finished.append(body.width)

    async with open_queue(mem_uri()) as q:
        await q.send([encode(Resize(image="x", width=i)) for i in range(10)])
        worker = fast_worker(app, q, concurrency=2, burst=False, prefetch=8)
        async with anyio.create_task_group() as tg:
            result: list[Any] = []

            async def run() -> None:
                result.append(await worker.run())

            tg.start_soon(run)
            with anyio.fail_after(5):
                await two_started.wait()
            worker.stop()
            await anyio.sleep(0.1)
            gate.set()
        stats = result[0]
        left = await q.receive(10)
    assert len(finished) == 2
    assert stats[Outcome.SUCCEEDED] == 2
    assert stats[Outcome.RELEASED] == 8
    assert len(left) == 8  # visible again at once, nothing lost


async def test_grace_period_cancels_and_releases() -> None:
    app = App()

    @app.handler(Resize)
    async def stuck(body: Resize) -> None:
        await anyio.sleep(60)

    async with open_queue(mem_uri()) as q:
        await q.send([encode(Resize(image="x", width=1))])
        worker = fast_worker(app, q, burst=False, grace_seconds=0.2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.sleep(0.2)
            worker.stop()
        left = await q.receive(10)
    assert worker.stats[Outcome.RELEASED] == 1
    assert len(left) == 1


# ------------------------------------------------------------- on SQS (moto)


async def test_tracked_messages_and_a_cluster_on_sqs(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    urls = await mc.provision(queues=[names["queue"]], max_receive_count=3)
    url = urls[names["queue"]]
    app = App(client=mc)
    handled: Counter[int] = Counter()
    callbacks: list[tuple[int, int]] = []

    @app.handler(Resize)
    async def resize(job: Resize) -> None:
        handled[job.width] += 1
        if job.width == 7:
            raise Reject("cannot resize")

    @app.on_cluster_complete
    async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        callbacks.append((cluster.completed, cluster.failed))

    keys = await mc.send_message_batch(url, [Resize(image="m", width=100 + i) for i in range(5)])
    key = await mc.create_message_cluster(
        url, [Resize(image="t", width=i) for i in range(30)], tolerated_failures=1
    )
    stats = await fast_worker(
        app, f"sqs://{names['queue']}", queue_options={"client": mc.sqs}
    ).run()
    assert handled[7] == 1
    assert all(n == 1 for n in handled.values()), handled
    assert len(handled) == 35
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.completed, record.failed) == (29, 1)
    assert record.status == msgcluster.Status.COMPLETE
    assert callbacks == [(29, 1)]
    for k in keys:
        with pytest.raises(msgcluster.RecordNotFoundError):
            await mc.get_message_record(k, consistent_read=True)
    assert stats[Outcome.DEAD_LETTERED] == 1


async def test_a_completion_event_waits_out_another_process_callback_lease(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    """The event must not be retried every visibility timeout while a (possibly
    crashed) holder's lease runs: that would walk it to the DLQ first."""
    urls = await mc.provision(queues=[names["queue"], names["queue"] + "-events"])
    tasks_url, events_url = urls[names["queue"]], urls[names["queue"] + "-events"]
    key = await mc.create_message_cluster(
        tasks_url, [Resize(image="t", width=i) for i in range(3)], completion_queue_url=events_url
    )
    tasks_app = App(client=mc)  # no callback: only completes the tasks

    @tasks_app.handler(Resize)
    async def resize(job: Resize) -> None:
        pass

    await fast_worker(tasks_app, f"sqs://{names['queue']}", queue_options={"client": mc.sqs}).run()
    holding, release = anyio.Event(), anyio.Event()

    async def elsewhere(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        holding.set()
        await release.wait()

    events_app = App(client=mc)
    ran_here: list[str] = []

    @events_app.on_cluster_complete
    async def here(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        ran_here.append(cluster.id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(mc.on_cluster_complete, key, elsewhere)  # "another process"
        await holding.wait()
        worker = fast_worker(
            events_app,
            events_url,
            queue_options={"client": mc.sqs},
            wait_seconds=1,
            visibility_timeout=1,
        )
        stats = await worker.run()
        await anyio.sleep(2)  # past the worker's visibility timeout: still hidden
        release.set()
    assert stats[Outcome.RETRIED] == 1
    assert ran_here == []
    attributes = await mc.sqs.get_queue_attributes(
        QueueUrl=events_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert record.status == msgcluster.Status.COMPLETE


async def test_stop_lets_polls_finish_and_releases_what_they_return(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    """A message the server hands to a poll still open at stop() is made
    visible again at once, not left invisible by an abandoned request (real
    SQS, and LocalStack, deliver to a poll whose client has gone)."""
    url = (await mc.provision([names["queue"]]))[names["queue"]]
    app = App(mc)
    handled: list[str] = []

    @app.handler(str)
    async def handle(body: str) -> None:
        handled.append(body)

    worker = Worker(
        app,
        f"sqs://{names['queue']}",
        receivers=2,
        wait_seconds=2,
        visibility_timeout=300,
        handle_signals=False,
        queue_options={"client": mc.sqs},
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await anyio.sleep(0.5)  # both receivers are in a long poll now
        worker.stop()
        await mc.sqs.send_message(QueueUrl=url, MessageBody="sent while stopping")
    assert handled == []  # received after stop(): released, not run
    response = await mc.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=3)
    assert [m["Body"] for m in response.get("Messages", [])] == ["sent while stopping"]
