"""Running an App from the shell: ``msgcluster worker module:app``.

The runner imports the App, opens its Client (or one made from the CLI's
options and the environment when the App has none), runs one
:class:`~msgcluster.Worker` per queue URI (the App's ``queue`` when none is
given) and owns the signals: SIGTERM or SIGINT stops every worker gracefully
(receiving stops, in-flight messages finish, within ``grace_seconds``); a
second SIGINT cancels at once. A long run logs a progress line every
``progress_seconds``.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._errors import ConfigurationError
from ._app import App
from ._runtime import Worker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._settings import Settings

__all__ = ["RunOptions", "check_app", "load_app", "run_app"]

log = logging.getLogger("msgcluster")

EXIT_OK: Final = 0
EXIT_INTERRUPTED: Final = 130
# The table is checked with a read of a key no record has.
_PROBE_KEY: Final = {"pk": {"S": "SQSMessage$health-check"}, "rk": {"S": "SQSMessage$probe"}}


class AppLoadError(ConfigurationError):
    """The ``module:app`` given to the runner cannot be loaded."""


def load_app(spec: str) -> App:
    """The App named by ``module:attribute`` (the attribute may be a dotted path,
    or a function returning an App). The current directory is importable, as
    with ``python -m``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(f"expected module:attribute (for example tasks:app), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(
                f"no module named {module_name!r} (run from the directory that contains it, "
                "or put it on PYTHONPATH)"
            ) from exc
        raise
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, App | type):
        found = found()
    if not isinstance(found, App):
        raise AppLoadError(f"{spec} is a {type(found).__name__}, not a msgcluster.App")
    return found


@dataclass(frozen=True)
class RunOptions:
    """What the command line sets for a run."""

    queues: Sequence[str] = ()
    concurrency: int = 16
    burst: bool = False
    visibility_timeout: float = 30.0
    wait_seconds: float = 10.0
    grace_seconds: float = 30.0
    progress_seconds: float = 60.0


def queues_for(app: App, queues: Sequence[str]) -> list[str]:
    chosen = list(queues) or ([app.queue] if app.queue else [])
    if not chosen:
        raise ConfigurationError(
            f"App {app.name!r} has no default queue: pass one or more queue URIs "
            "(msgcluster worker module:app sqs://jobs), or create it with App(queue=...)"
        )
    return chosen


async def run_app(app: App, options: RunOptions, settings: Settings | None = None) -> int:
    """Run until every worker stopped; the exit code (0, or 130 after SIGINT)."""
    app.check_ready()
    uris = queues_for(app, options.queues)
    async with app.opened(settings):
        workers = [
            Worker(
                app,
                uri,
                concurrency=options.concurrency,
                burst=options.burst,
                visibility_timeout=options.visibility_timeout,
                wait_seconds=options.wait_seconds,
                grace_seconds=options.grace_seconds,
                progress_seconds=0,  # the runner logs one line for all
                handle_signals=False,
            )
            for uri in uris
        ]
        interrupted = False
        started = time.monotonic()
        log.info("worker %s: %s, concurrency %d", app.name, ", ".join(uris), options.concurrency)

        async def signals(scope: anyio.CancelScope) -> None:
            nonlocal interrupted
            try:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                    async for signum in received:
                        if signum == signal.SIGINT:
                            if interrupted:  # the second Ctrl-C: no more waiting
                                scope.cancel()
                                return
                            interrupted = True
                        log.info("%s: stopping gracefully", signal.Signals(signum).name)
                        for worker in workers:
                            worker.stop()
            except (NotImplementedError, ValueError):  # not the main thread
                return

        async def progress() -> None:
            while True:
                await anyio.sleep(options.progress_seconds)
                log.info("progress: %s", _progress(workers, started))

        with anyio.CancelScope() as everything:
            async with anyio.create_task_group() as service:
                service.start_soon(signals, everything)
                service.start_soon(progress)
                async with anyio.create_task_group() as running:
                    for worker in workers:
                        running.start_soon(worker.run)
                service.cancel_scope.cancel()
        log.info("stopped: %s", _progress(workers, started))
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _progress(workers: list[Worker], started: float) -> str:
    totals: dict[str, int] = {}
    for worker in workers:
        stats = getattr(worker, "stats", None)
        if stats is None:
            continue
        for outcome, count in stats.outcomes.items():
            totals[outcome.value] = totals.get(outcome.value, 0) + count
    done = sum(totals.values())
    elapsed = max(time.monotonic() - started, 1e-9)
    parts = ", ".join(f"{name} {count}" for name, count in sorted(totals.items()))
    return f"{done} messages ({parts or 'none'}) in {elapsed:.0f} s, {done / elapsed:.1f}/s"


async def check_app(app: App, queues: Sequence[str], settings: Settings | None = None) -> list[str]:
    """The health probe: the table answers and every queue opens. Returns one
    line per check; raises the first failure (a typed MsgclusterError)."""
    uris = queues_for(app, queues)
    lines: list[str] = []
    async with app.opened(settings) as client:
        ctx = client.ctx
        from .._aws_errors import aws_errors

        with aws_errors(resource=ctx.table):
            await ctx.ddb.get_item(TableName=ctx.table, Key=_PROBE_KEY, ProjectionExpression="pk")
        lines.append(f"table {ctx.table}: ok")
        for uri in uris:
            if uri.startswith("memory://"):
                lines.append(f"queue {uri}: ok (in process)")
                continue
            await ctx.queue(uri)  # opening reads the queue: a missing one raises here
            lines.append(f"queue {uri}: ok")
    return lines
