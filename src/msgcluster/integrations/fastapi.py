"""FastAPI: one open :class:`~msgcluster.Client` per app, a dependency that
yields it, and optional background workers (extra ``msgcluster[fastapi]``).

::

    from fastapi import FastAPI
    from msgcluster.integrations.fastapi import MsgclusterClient, msgcluster_lifespan

    app = FastAPI(lifespan=msgcluster_lifespan(table="jobs", bucket="jobs-data"))

    @app.get("/clusters/{cluster_id}")
    async def progress(cluster_id: str, mc: MsgclusterClient) -> dict[str, int]:
        cluster = await mc.get_message_cluster(cluster_id)
        return {"total": cluster.total, "completed": cluster.completed}

The lifespan opens the Client at startup, stores it on ``app.state``, enters
your own lifespan (``lifespan=``), then starts the workers built by
``workers(client)`` in a task group. At shutdown it stops the workers
(``Worker.stop()``: a graceful drain bounded by their ``grace_seconds``) and
waits for them, exits your lifespan, then closes the Client. A Client passed
in already open is used as is and left open.

See ``docs/fastapi.md``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the annotations
# of ``get_client`` at runtime, so the names in them must be real imports.

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Annotated, Any, Final, TypeVar, overload

import anyio

try:
    from fastapi import Depends
    from fastapi.requests import HTTPConnection
    from starlette.applications import Starlette
except ImportError as exc:  # fastapi is an optional dependency
    raise ImportError(
        "msgcluster.integrations.fastapi needs FastAPI, which is not installed: "
        'pip install "msgcluster[fastapi]"'
    ) from exc

from .._client import Client
from .._errors import ConfigurationError, ValidationError
from ..worker import Worker

__all__ = [
    "STATE_ATTRIBUTE",
    "MsgclusterClient",
    "WorkerFactory",
    "app_client",
    "get_client",
    "msgcluster_lifespan",
]

log = logging.getLogger("msgcluster.fastapi")

#: The attribute of ``app.state`` that holds the lifespan's Client.
STATE_ATTRIBUTE: Final = "msgcluster_client"

#: Builds the background workers from the lifespan's open Client (called once
#: per startup, after your own lifespan was entered: a Worker runs only once).
WorkerFactory = Callable[[Client], Iterable[Worker]]

AppT = TypeVar("AppT", bound=Starlette)
StateT = TypeVar("StateT", bound=Mapping[str, Any] | None)


@overload
def msgcluster_lifespan(
    client: Client | None = None,
    /,
    *,
    workers: WorkerFactory | None = None,
    lifespan: None = None,
    **client_options: Any,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]: ...


@overload
def msgcluster_lifespan(
    client: Client | None = None,
    /,
    *,
    workers: WorkerFactory | None = None,
    lifespan: Callable[[AppT], AbstractAsyncContextManager[StateT]],
    **client_options: Any,
) -> Callable[[AppT], AbstractAsyncContextManager[StateT]]: ...


def msgcluster_lifespan(
    client: Client | None = None,
    /,
    *,
    workers: WorkerFactory | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    **client_options: Any,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A FastAPI/Starlette lifespan that holds one open :class:`Client`.

    ``client_options`` are :class:`Client` arguments (``table=``, ``bucket=``,
    ...; the environment fills in the rest): the Client is created and opened
    at startup and closed at shutdown. Or pass an **open** ``client``: it is
    used as is and never closed here (you own it; tests share one this way).

    ``workers``: ``workers(client) -> Iterable[Worker]``, run in the
    background for the app's life. They never install signal handlers
    (``handle_signals`` is set to False: the server owns SIGTERM/SIGINT and
    its shutdown stops them). A worker that raises is logged and not
    restarted; the app keeps serving.

    ``lifespan``: your own lifespan, entered once the Client is open and
    before the workers start (it can provision queues), exited after they
    stopped; what it yields is yielded (lifespan state). Or enter this one in
    yours: ``async with msgcluster_lifespan(...)(app): ...``.
    """
    _check_arguments(client, workers=workers, lifespan=lifespan)
    _check_client_options(client, client_options)

    @asynccontextmanager
    async def msgcluster_lifespan_context(app: Any) -> AsyncIterator[Any]:
        async with (
            _installed_client(app, client, client_options) as mc,
            lifespan(app) if lifespan is not None else nullcontext() as state,
        ):
            started = _build_workers(workers, mc)
            if not started:
                yield state
                return
            async with anyio.create_task_group() as background:
                for index, worker in enumerate(started):
                    background.start_soon(
                        _run_worker, worker, index, name=f"msgcluster worker {index}"
                    )
                try:
                    yield state
                finally:
                    for worker in started:
                        worker.stop()
                # Leaving the task group waits for every worker to drain.

    return msgcluster_lifespan_context


def _check_client_options(client: Client | None, client_options: Mapping[str, Any]) -> None:
    if client is not None and client_options:
        raise ConfigurationError(
            "msgcluster_lifespan takes an open Client or Client options, not both"
        )
    if client is None:
        try:  # fail at import time, not at startup: building a Client does no I/O
            Client(**client_options)
        except TypeError as exc:
            raise ConfigurationError(
                f"msgcluster_lifespan: invalid Client options: {exc}"
            ) from None


def _check_arguments(client: object, **functions: object) -> None:
    if client is not None and not isinstance(client, Client):
        raise ValidationError(
            f"msgcluster_lifespan(client): client must be an open msgcluster.Client, "
            f"got {type(client).__name__}"
        )
    for name, value in functions.items():
        if value is not None and not callable(value):
            raise ConfigurationError(
                f"msgcluster_lifespan({name}=...) takes a function, got {type(value).__name__}"
            )


@asynccontextmanager
async def _installed_client(
    app: Any, client: Client | None, options: dict[str, Any]
) -> AsyncIterator[Client]:
    state = app.state
    if getattr(state, STATE_ATTRIBUTE, None) is not None:
        raise ConfigurationError(
            f"app.state.{STATE_ATTRIBUTE} is already set: is a msgcluster lifespan "
            "already running for this app?"
        )
    if client is None:
        async with Client(**options) as owned:
            setattr(state, STATE_ATTRIBUTE, owned)
            try:
                yield owned
            finally:
                delattr(state, STATE_ATTRIBUTE)
        return
    if not client.is_open:
        raise ConfigurationError(
            "the Client given to msgcluster_lifespan is not open: open it first "
            "(`async with Client(...) as mc`), or pass Client options instead and let "
            "the lifespan open and close it"
        )
    setattr(state, STATE_ATTRIBUTE, client)
    try:
        yield client
    finally:
        delattr(state, STATE_ATTRIBUTE)


def _build_workers(factory: WorkerFactory | None, client: Client) -> list[Worker]:
    if factory is None:
        return []
    built = list(factory(client))
    for worker in built:
        if not isinstance(worker, Worker):
            raise ConfigurationError(
                f"workers(client) must return Worker instances, got {type(worker).__name__}"
            )
        worker.handle_signals = False
    return built


async def _run_worker(worker: Worker, index: int) -> None:
    try:
        await worker.run()  # its metrics log the summary
    except Exception:
        log.exception("background worker %d stopped with an error; it is not restarted", index)


def app_client(app: Starlette) -> Client:
    """The open Client of ``app``'s msgcluster lifespan (outside a request: your
    own lifespan, a background task). Raises :class:`ConfigurationError` if the
    lifespan is not running for ``app``."""
    client = getattr(app.state, STATE_ATTRIBUTE, None)
    if not isinstance(client, Client):
        raise ConfigurationError(
            "no msgcluster Client on this app: install the lifespan, "
            "FastAPI(lifespan=msgcluster_lifespan(...)). It runs only under a server "
            "that sends lifespan events (httpx.ASGITransport does not: in tests, enter "
            "`async with app.router.lifespan_context(app):` around the requests)"
        )
    return client


async def get_client(connection: HTTPConnection) -> Client:
    """FastAPI dependency: the app's open Client (HTTP and WebSocket routes).

    Without the lifespan it raises :class:`ConfigurationError` (a server error:
    the app is misconfigured, not the request). Prefer :data:`MsgclusterClient`.
    """
    return app_client(connection.app)


#: ``mc: MsgclusterClient`` in an endpoint's parameters injects the Client.
MsgclusterClient = Annotated[Client, Depends(get_client)]
