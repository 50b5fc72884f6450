"""Per-handler policies: ``@app.handler(T, retries=, backoff=, timeout=, visibility=)``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest
from test_worker import encode, fast_worker, mem_uri

import msgcluster
from msgcluster import App
from msgcluster.queues import open_queue
from msgcluster.queues._memory import reset_memory_queues
from msgcluster.worker import MessageContext, Outcome


class Resize(msgspec.Struct, tag=True):
    n: int


class Report(msgspec.Struct, tag=True):
    n: int


@pytest.fixture(autouse=True)
def _fresh_memory_queues() -> None:
    reset_memory_queues()


async def _drain(app: App, q: Any, uri: str, dead: int, rounds: int = 100) -> list[Any]:
    """Run burst workers until ``dead`` messages reached the DLQ (retries
    reappear after their backoff); the dead letters."""
    name = uri.removeprefix("memory://").split("?")[0]
    found: dict[str, Any] = {}
    async with open_queue(f"memory://{name}-dlq") as dlq:
        for _ in range(rounds):
            await fast_worker(app, q).run()
            for message in await dlq.receive(10, visibility_timeout=600):
                found[message.id] = message
            if len(found) >= dead:
                return list(found.values())
            await anyio.sleep(0.05)
    raise AssertionError("the messages did not reach the DLQ")


async def _dead(uri: str) -> list[Any]:
    name = uri.removeprefix("memory://").split("?")[0]
    async with open_queue(f"memory://{name}-dlq") as dlq:
        return await dlq.receive(10)


async def test_retries_per_handler_then_the_dlq() -> None:
    """``retries=1``: two tries of Resize, then the DLQ, while Report (no policy)
    gets the queue's five receives."""
    app = App()
    tries: Counter[str] = Counter()

    @app.handler(Resize, retries=1, backoff=lambda attempt: 0.0)
    async def resize(job: Resize) -> None:
        tries["resize"] += 1
        raise RuntimeError("always")

    @app.handler(Report, backoff=0.01)
    async def report(job: Report) -> None:
        tries["report"] += 1
        raise RuntimeError("always")

    uri = mem_uri(max_receives=5)
    async with open_queue(uri) as q:
        await q.send([encode(Resize(n=1)), encode(Report(n=2))])
        dead = await _drain(app, q, uri, 2)
    # Report has the queue's five receives (a burst worker that stops with a
    # prefetched message releases it unrun, which uses one of them).
    assert tries["resize"] == 2
    assert 4 <= tries["report"] <= 5
    assert len(dead) == 2


async def test_timeout_cancels_a_run_and_counts_as_a_failure() -> None:
    app = App()
    runs: list[int] = []

    @app.handler(Resize, timeout=0.2, retries=0)
    async def slow(job: Resize, ctx: MessageContext) -> None:
        runs.append(ctx.receive_count)
        await anyio.sleep(30)

    uri = mem_uri(max_receives=5)
    started = time.monotonic()
    async with open_queue(uri) as q:
        await q.send([encode(Resize(n=1))])
        stats = await fast_worker(app, q).run()
        dead = await _dead(uri)
    assert time.monotonic() - started < 10
    assert runs == [1]
    assert stats[Outcome.DEAD_LETTERED] == 1
    assert len(dead) == 1


async def test_backoff_keeps_the_message_away_for_the_policys_time() -> None:
    app = App()
    runs: list[float] = []

    @app.handler(Resize, backoff=1.0)
    async def flaky(job: Resize) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("first try fails")

    uri = mem_uri(max_receives=5)
    async with open_queue(uri) as q:
        await q.send([encode(Resize(n=1))])
        await fast_worker(app, q).run()
        assert await q.receive(10, wait_seconds=0.3) == []  # backing off
        await anyio.sleep(1.0)
        await fast_worker(app, q, wait_seconds=0.5).run()
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 0.9


async def test_visibility_per_handler_outlasts_the_workers() -> None:
    """The worker's visibility is 1 s; the handler's 30 s: while it runs past
    the worker's, no other consumer receives its message."""
    app = App()
    runs: list[int] = []

    @app.handler(Resize, visibility=30)
    async def slow(job: Resize, ctx: MessageContext) -> None:
        runs.append(ctx.receive_count)
        await anyio.sleep(2.0)

    uri = mem_uri(max_receives=5, visibility_timeout=1)
    async with open_queue(uri) as q:
        await q.send([encode(Resize(n=1))])
        async with anyio.create_task_group() as tg:
            tg.start_soon(fast_worker(app, q, visibility_timeout=1, burst=False).run)
            await anyio.sleep(1.5)
            assert await q.receive(10, wait_seconds=0.2) == []
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
    assert runs == [1]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"visibility": 50_000}, "visibility"),
        ({"backoff": "soon"}, "backoff"),
    ],
)
def test_bad_policy_options_are_configuration_errors(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(msgcluster.ConfigurationError, match=needle):
        App().handler(Resize, **options)


async def test_a_worker_logs_progress(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    @app.handler(Resize)
    async def slow(job: Resize) -> None:
        await anyio.sleep(0.3)

    async with open_queue(mem_uri()) as q:
        await q.send([encode(Resize(n=n)) for n in range(4)])
        with caplog.at_level("INFO", logger="msgcluster"):
            await fast_worker(app, q, concurrency=1, progress_seconds=0.5).run()
    progress = [r.getMessage() for r in caplog.records if "messages in" in r.getMessage()]
    assert len(progress) >= 2  # at least one while running, and the summary at the end
    assert any("/s (succeeded" in line for line in progress)
