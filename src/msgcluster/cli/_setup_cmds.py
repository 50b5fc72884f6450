"""Setup and local development: ``provision``, ``local``, ``demo``."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .._provision import dlq_name
from ._cluster_cmds import client
from ._common import EXIT_OK, CliError, Invocation, UsageError, port, positive, table_name

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]


async def provision(inv: Invocation) -> int:
    args = inv.args
    async with client(inv) as mc:
        report = await mc.provision_report(
            queues=args.queue or (),
            max_receive_count=args.max_receive_count,
            visibility_timeout=args.visibility_timeout,
            dry_run=args.dry_run,
        )
        queue_table: str | None = args.dynamodb_queue_table
        if queue_table is not None and not args.dry_run:
            provision_queue_table = _queue_table_provisioner()
            await provision_queue_table(mc.dynamodb, queue_table)
    urls = report.urls
    doc = {
        "table": inv.settings.table,
        "bucket": inv.settings.bucket,
        "queues": {name: {"url": url, "dlq": dlq_name(name)} for name, url in urls.items()},
        "dynamodb_queue_table": queue_table,
        "dry_run": report.dry_run,
        "steps": [msgspec.to_builtins(step) for step in report.steps],
    }
    if inv.out.json:
        inv.out.document(doc)
        return EXIT_OK
    inv.out.table(
        ["RESOURCE", "ACTION", "DETAIL"], [[s.resource, s.action, s.detail] for s in report.steps]
    )
    if not inv.settings.bucket:
        inv.out.note("no bucket: set --bucket or MSGCLUSTER_BUCKET for bodies over the queue limit")
    if queue_table is not None:
        inv.out.note(
            f"dynamodb:// queue table {queue_table}: "
            + ("skipped (dry run)" if args.dry_run else "ready")
        )
    if urls:
        inv.out.table(
            ["QUEUE", "DLQ", "URL"], [[name, dlq_name(name), url] for name, url in urls.items()]
        )
    inv.out.note("dry run: nothing was written" if report.dry_run else "provisioned")
    return EXIT_OK


def _queue_table_provisioner() -> Any:
    try:
        from ..queues._dynamodb_provision import provision_dynamodb_queue_table
    except ImportError as exc:
        raise UsageError(
            f"--dynamodb-queue-table needs the dynamodb:// queue backend, which cannot be "
            f"imported here: {exc}"
        ) from exc
    return provision_dynamodb_queue_table


def local(inv: Invocation) -> int:
    """Run the embedded local AWS until Ctrl-C or SIGTERM (exit code 0)."""
    from ..local import LocalAWS

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # SIGINT is handled too: a shell starts background jobs with SIGINT
    # ignored, and Python would then never raise KeyboardInterrupt.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with LocalAWS(port=inv.args.port, host=inv.args.host) as aws:
            env = aws.env()
            if inv.out.json:
                inv.out.document(
                    {
                        "endpoint_url": aws.endpoint_url,
                        "region": aws.region,
                        "pid": aws.pid,
                        "patched": aws.patched,
                        "env": env,
                    }
                )
            else:
                inv.out.write(
                    f"local AWS (moto) listening on {aws.endpoint_url}\n"
                    f"export {' '.join(f'{k}={v}' for k, v in env.items())}\n"
                    "Ctrl-C to stop\n"
                )
            while not stop.is_set() and aws.running:
                stop.wait(0.25)
            if not aws.running:
                raise CliError("the local AWS server exited unexpectedly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


async def demo(inv: Invocation) -> int:
    from .. import demo as demo_module

    started = time.perf_counter()
    if not inv.out.json:
        await demo_module.main()
        return EXIT_OK
    # One JSON document on stdout: the demo's narration goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        await demo_module.main()
    inv.out.document({"ok": True, "seconds": round(time.perf_counter() - started, 3)})
    return EXIT_OK


def register(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "provision",
        parents=[common],
        help="create the table (+TTL), the bucket (+lifecycle) and queues (+DLQs); idempotent",
        description="Create what msgcluster needs, idempotently: --table with TTL, --bucket "
        "with its expiry rule (if given), and each --queue with a DLQ named <queue>-dlq.",
    )
    parser.add_argument(
        "--queue", action="append", metavar="NAME", help="a queue to create (repeatable)"
    )
    parser.add_argument(
        "--max-receive-count",
        type=positive,
        default=None,
        help="receives before the DLQ (default 5 for new queues; existing ones are kept)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="report what would be created or changed, write nothing",
    )
    parser.add_argument(
        "--visibility-timeout", type=positive, default=None, help="the queues' timeout, seconds"
    )
    parser.add_argument(
        "--dynamodb-queue-table",
        metavar="NAME",
        type=table_name,
        default=None,
        help="also create a table for dynamodb:// queues (with its ready index and TTL)",
    )
    parser.set_defaults(handler=provision)

    parser = commands.add_parser(
        "local",
        parents=[common],
        help="run the embedded local AWS (moto) in the foreground until Ctrl-C",
        description="Run moto (patched for msgcluster) until Ctrl-C; prints the endpoint and "
        "the environment variables that point msgcluster and AWS tools at it.",
    )
    parser.add_argument("--port", type=port, default=0, help="port 0-65535 (default 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.set_defaults(handler=local)

    parser = commands.add_parser(
        "demo",
        parents=[common],
        help="run the demo on its own embedded local AWS (touches no real AWS)",
        description="Tracked messages and a 200-task message cluster, end to end, on an "
        "embedded local AWS started for the demo (global AWS options are ignored).",
    )
    parser.set_defaults(handler=demo)
