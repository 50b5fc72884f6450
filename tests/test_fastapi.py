"""The FastAPI adapter: lifespan, dependency, background workers (against moto).

No ``from __future__ import annotations``: FastAPI resolves endpoint
annotations at runtime, and some endpoints here are defined in functions.
"""

import importlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import msgcluster
from msgcluster import ConfigurationError
from msgcluster.integrations.fastapi import (
    STATE_ATTRIBUTE,
    MsgclusterClient,
    WorkerFactory,
    app_client,
    msgcluster_lifespan,
)
from msgcluster.local import LocalAWS
from msgcluster.queues._memory import reset_memory_queues
from msgcluster.worker import App, Worker


class Item(msgspec.Struct):
    name: str


class NewCluster(BaseModel):
    items: list[str]


class Progress(BaseModel):
    key: str
    status: str
    total: int
    completed: int
    failed: int


def example_app(queue_url: str, lifespan: Any) -> FastAPI:
    """The example of docs/fastapi.md: create a cluster, report its progress."""
    app = FastAPI(lifespan=lifespan)

    @app.post("/clusters", status_code=202)
    async def create(body: NewCluster, mc: MsgclusterClient) -> dict[str, str]:
        key = uuid.uuid4().hex
        await mc.create_message_cluster(
            queue_url, [Item(i) for i in body.items], cluster_id=key, omit_globals=True
        )
        return {"key": key}

    @app.get("/clusters/{key}")
    async def progress(key: str, mc: MsgclusterClient) -> Progress:
        try:
            cluster = await mc.get_message_cluster(key, consistent_read=True)
        except msgcluster.RecordNotFoundError:
            raise HTTPException(404, key) from None
        return Progress(
            key=key,
            status=cluster.status.value,
            total=cluster.total,
            completed=cluster.completed,
            failed=cluster.failed,
        )

    @app.get("/table")
    async def table(mc: MsgclusterClient) -> dict[str, Any]:
        return {"table": mc.settings.table, "same": mc is app_client(app)}

    return app


def http(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def worker_factory(
    queue_url: str,
    handle: Callable[[Item], Awaitable[None]],
    started: list[Worker],
    callbacks: list[tuple[int, int]] | None = None,
    **options: Any,
) -> WorkerFactory:
    def build(client: msgcluster.Client) -> list[Worker]:
        app = App(client=client)
        app.handler(Item)(handle)
        if callbacks is not None:

            async def done(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
                callbacks.append((cluster.completed, cluster.failed))

            app.on_cluster_complete(done)
        options.setdefault("wait_seconds", 1)
        options.setdefault("backoff_base", 0.01)
        worker = Worker(app, queue_url, queue_options={"client": client.sqs}, **options)
        started.append(worker)
        return [worker]

    return build


async def wait_complete(client: httpx.AsyncClient, key: str) -> Any:
    with anyio.fail_after(15):
        while True:
            response = await client.get(f"/clusters/{key}")
            assert response.status_code == 200, response.text
            progress = response.json()
            if progress["status"] != "IN PROGRESS":
                return progress
            await anyio.sleep(0.1)


# ------------------------------------------------------------------ lifespan


async def test_lifespan_opens_its_client_and_closes_it(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client
) -> None:
    lifespan = msgcluster_lifespan(
        table=names["table"], bucket=names["bucket"], **local_aws.settings()
    )
    app = example_app("unused", lifespan)
    seen: list[msgcluster.Client] = []
    for _ in range(2):  # a second startup opens a fresh client
        async with app.router.lifespan_context(app), http(app) as client:
            owned = app_client(app)
            seen.append(owned)
            assert owned is not mc
            assert repr(owned).endswith("open>")
            assert (await client.get("/table")).json() == {"table": names["table"], "same": True}
            # usable: a real request to moto through the lifespan's client
            with pytest.raises(msgcluster.RecordNotFoundError):
                await owned.get_message_cluster("no-such-cluster", consistent_read=True)
        assert repr(owned).endswith("closed>")
        with pytest.raises(ConfigurationError):
            _ = owned.sqs
        assert not hasattr(app.state, STATE_ATTRIBUTE)
    assert seen[0] is not seen[1]


async def test_an_open_client_passed_in_is_used_and_left_open(mc: msgcluster.Client) -> None:
    app = example_app("unused", msgcluster_lifespan(mc))
    async with app.router.lifespan_context(app), http(app) as client:
        assert app_client(app) is mc
        assert (await client.get("/table")).json()["same"] is True
    assert repr(mc).endswith("open>")
    with pytest.raises(msgcluster.RecordNotFoundError):  # still usable
        await mc.get_message_cluster("no-such-cluster")


async def test_lifespan_arguments_are_checked(local_aws: LocalAWS) -> None:
    closed = msgcluster.Client(table="ttt", **local_aws.settings())
    app = FastAPI(lifespan=msgcluster_lifespan(closed))
    with pytest.raises(ConfigurationError, match="not open"):
        async with app.router.lifespan_context(app):
            pass
    assert not hasattr(app.state, STATE_ATTRIBUTE)
    with pytest.raises(ConfigurationError, match="not both"):
        msgcluster_lifespan(closed, table="t")
    with pytest.raises(ConfigurationError, match="invalid Client options"):
        msgcluster_lifespan(tabel="t")


async def test_two_lifespans_on_one_app_are_refused(mc: msgcluster.Client) -> None:
    app = FastAPI()
    async with msgcluster_lifespan(mc)(app):
        with pytest.raises(ConfigurationError, match="already"):
            async with msgcluster_lifespan(mc)(app):
                pass
        assert app_client(app) is mc  # the outer one is untouched
    assert not hasattr(app.state, STATE_ATTRIBUTE)


# ---------------------------------------------------------------- dependency


async def test_dependency_without_the_lifespan_is_a_clear_server_error() -> None:
    app = example_app("unused", None)
    async with http(app) as client:
        with pytest.raises(ConfigurationError, match=r"msgcluster_lifespan\(\.\.\.\)"):
            await client.get("/table")
    async with http(app, raise_app_exceptions=False) as client:
        response = await client.get("/table")
        assert response.status_code == 500
    with pytest.raises(ConfigurationError, match="lifespan_context"):
        app_client(app)


def test_import_without_fastapi_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    monkeypatch.delitem(sys.modules, "msgcluster.integrations.fastapi")
    with pytest.raises(ImportError, match=r'pip install "msgcluster\[fastapi\]"'):
        importlib.import_module("msgcluster.integrations.fastapi")


# ------------------------------------------------------ background workers


async def test_example_flow_with_a_background_worker(mc: msgcluster.Client, queue_url: str) -> None:
    handled: list[str] = []
    started: list[Worker] = []
    callbacks: list[tuple[int, int]] = []

    async def handle(item: Item) -> None:
        handled.append(item.name)
        if item.name == "bad":
            raise msgcluster.worker.Reject("bad item")

    workers = worker_factory(queue_url, handle, started, callbacks, concurrency=8)
    app = example_app(queue_url, msgcluster_lifespan(mc, workers=workers))
    items = [f"item-{n}" for n in range(19)] + ["bad"]
    async with app.router.lifespan_context(app), http(app) as client:
        (worker,) = started
        assert not worker.handle_signals  # the server owns the signals
        assert (await client.get("/clusters/nope")).status_code == 404
        created = await client.post("/clusters", json={"items": items})
        assert created.status_code == 202
        key = created.json()["key"]
        progress = await wait_complete(client, key)
        # one failure, not tolerated: the cluster is final as ERROR, counts exact
        assert progress == {
            "key": key,
            "status": "ERROR",
            "total": 20,
            "completed": 19,
            "failed": 1,
        }
        created = await client.post("/clusters", json={"items": items[:19]})
        progress = await wait_complete(client, created.json()["key"])
        assert (progress["status"], progress["completed"], progress["failed"]) == (
            "COMPLETE",
            19,
            0,
        )
        assert worker.stats.stopped_at is None  # still running
    # shutdown: stopped gracefully, and waited for
    assert worker.stopping
    assert worker.stats.stopped_at is not None
    assert sorted(handled) == sorted(items + items[:19])
    assert worker.stats["succeeded"] == 38
    assert worker.stats["dead_lettered"] == 1
    assert sorted(callbacks) == [(19, 0), (19, 1)]


async def test_shutdown_drains_handlers_before_closing_the_client(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """The lifespan owns the client: a handler running at shutdown finishes, its
    task is counted (which needs the client), and only then is the client closed."""
    running, release = anyio.Event(), anyio.Event()
    started: list[Worker] = []

    async def handle(item: Item) -> None:
        running.set()
        await release.wait()

    workers = worker_factory(queue_url, handle, started, grace_seconds=10)
    lifespan = msgcluster_lifespan(
        table=names["table"], bucket=names["bucket"], workers=workers, **local_aws.settings()
    )
    app = example_app(queue_url, lifespan)

    leaving = anyio.Event()

    async def release_during_shutdown() -> None:
        await leaving.wait()
        await anyio.sleep(0.2)  # the lifespan is shutting down, the handler still runs
        assert started[0].stopping
        assert repr(owned).endswith("open>")  # still draining: the client stays open
        release.set()

    with anyio.fail_after(20):  # a regression would hang the lifespan exit
        async with anyio.create_task_group() as tasks:
            async with app.router.lifespan_context(app), http(app) as client:
                created = await client.post("/clusters", json={"items": ["slow"]})
                key = created.json()["key"]
                owned = app_client(app)
                with anyio.fail_after(10):
                    await running.wait()
                tasks.start_soon(release_during_shutdown)
                leaving.set()
            # the lifespan exit returned only after the handler finished
            assert release.is_set()
            assert repr(owned).endswith("closed>")
    assert started[0].stats["succeeded"] == 1
    cluster = await mc.get_message_cluster(key, consistent_read=True)
    assert (cluster.status, cluster.completed) == (msgcluster.Status.COMPLETE, 1)


def handling_app(client: msgcluster.Client) -> App:
    """An App with one handler (a Worker refuses an App with none)."""
    app = App(client=client)

    @app.handler(str)
    async def handle(body: str) -> None: ...

    return app


async def test_a_worker_that_fails_is_logged_and_the_app_keeps_serving(
    mc: msgcluster.Client, caplog: pytest.LogCaptureFixture
) -> None:
    reset_memory_queues()

    # A queue that does not exist: the URI is valid, so it fails only when run.
    missing = f"sqs://no-such-queue-{uuid.uuid4().hex[:8]}"

    def broken(client: msgcluster.Client) -> list[Worker]:
        return [Worker(handling_app(client), missing)]

    app = example_app("unused", msgcluster_lifespan(mc, workers=broken))
    with caplog.at_level(logging.ERROR, logger="msgcluster.fastapi"):
        async with app.router.lifespan_context(app), http(app) as client:
            await anyio.sleep(0.1)
            assert (await client.get("/table")).status_code == 200
    assert "background worker 0 stopped with an error" in caplog.text
    assert "QueueNotFoundError" in caplog.text


async def test_a_worker_with_a_bad_queue_uri_fails_the_startup(mc: msgcluster.Client) -> None:
    """A bad URI is refused when the Worker is built (in workers(client)), so the
    app does not start serving with a worker that can never run."""

    def broken(client: msgcluster.Client) -> list[Worker]:
        return [Worker(handling_app(client), "memory://jobs?no_such_option=1")]

    app = example_app("unused", msgcluster_lifespan(mc, workers=broken))
    with pytest.raises(msgcluster.QueueURIError, match="unknown query parameter"):
        async with app.router.lifespan_context(app):
            pass


async def test_own_lifespan_wraps_the_workers(mc: msgcluster.Client) -> None:
    """Yours is entered before the workers start and exited after they stopped;
    its lifespan state is passed on."""
    reset_memory_queues()
    events: list[str] = []
    started: list[Worker] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        assert app_client(app) is mc
        events.append("own startup")
        yield {"answer": 42}
        assert started[0].stats.stopped_at is not None
        events.append("own shutdown")

    def workers(client: msgcluster.Client) -> list[Worker]:
        events.append("workers built")
        worker = Worker(handling_app(client), "memory://jobs", wait_seconds=0.05)
        started.append(worker)
        return [worker]

    app = FastAPI(lifespan=msgcluster_lifespan(mc, workers=workers, lifespan=own))
    async with app.router.lifespan_context(app) as state:
        assert state == {"answer": 42}
        await anyio.sleep(0.1)
        assert started[0].stats.stopped_at is None
    assert events == ["own startup", "workers built", "own shutdown"]
