"""``msgcluster worker module:app [QUEUE ...]``: the worker runner's command line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..worker._runner import RunOptions, check_app, load_app, run_app
from ._common import EXIT_OK, positive, seconds

if TYPE_CHECKING:
    import argparse

    from ._common import Invocation

__all__ = ["register"]

_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str) -> None:
    """Log lines on stderr at ``level``, unless the app configured logging itself."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("msgcluster").setLevel(level.upper())


async def worker(inv: Invocation) -> int:
    args = inv.args
    configure_logging(args.log_level)
    app = load_app(args.app)
    # The App's own Client wins; the command's options make one only if it has none.
    settings = inv.settings if app.client is None else None
    if args.check:
        for line in await check_app(app, args.queues, settings):
            inv.out.line(line)
        return EXIT_OK
    options = RunOptions(
        queues=args.queues,
        concurrency=args.concurrency,
        burst=args.burst,
        visibility_timeout=args.visibility_timeout,
        wait_seconds=args.wait_seconds,
        grace_seconds=args.grace_seconds,
        progress_seconds=args.progress_seconds,
    )
    return await run_app(app, options, settings)


def register(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "worker",
        parents=[common],
        help="run an App's handlers on one or more queues (graceful on SIGTERM/SIGINT)",
        description="Import APP (module:attribute, an App or a function returning one) and run "
        "a Worker per QUEUE (default: the App's queue) until stopped. SIGTERM or SIGINT stops "
        "gracefully (a second SIGINT at once). Exit codes: 0 stopped (SIGTERM, or --burst found "
        "the queues empty), 130 stopped by SIGINT, 1 a worker failed, 2 bad APP or options, "
        "3 a queue or the table does not exist.",
    )
    parser.add_argument("app", metavar="APP", help="module:attribute, e.g. tasks:app")
    parser.add_argument("queues", metavar="QUEUE", nargs="*", help="queue URIs (sqs://jobs ...)")
    parser.add_argument("--concurrency", type=positive, default=16, help="handler slots per queue")
    parser.add_argument(
        "--burst", action="store_true", help="stop when the queues are empty (batch jobs, tests)"
    )
    parser.add_argument(
        "--log-level", choices=_LEVELS, default="info", help="msgcluster's log level (info)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="health probe: exit 0 if the table and the queues answer, else non-zero",
    )
    parser.add_argument("--visibility-timeout", type=seconds, default=30.0, metavar="SECONDS")
    parser.add_argument("--wait-seconds", type=seconds, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--grace-seconds",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long in-flight messages may finish after a stop (30)",
    )
    parser.add_argument(
        "--progress-seconds",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="a progress line (counts, rate) every SECONDS (60)",
    )
    parser.set_defaults(handler=worker)
