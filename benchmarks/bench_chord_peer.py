"""A Celery chord and a msgcluster cluster side by side: N tasks, one callback.

Run: ``.venv/bin/python -m benchmarks.bench_chord_peer`` (defaults: 500
tasks, 16 worker slots per peer, both modes; about 80 seconds on the
development machine). Options: ``--tasks``, ``--concurrency``, ``--mode``.

Both peers run on one embedded local AWS (:class:`msgcluster.local.LocalAWS`),
each against its own queue and table, behind one counting proxy
(:mod:`benchmarks._countproxy`) that every request of either goes through:

* **Celery** (the real package): broker = kombu's SQS transport (boto3 to
  send, pycurl to receive), result backend = Celery's DynamoDB backend
  (boto3; its chord counter is an atomic ``UpdateItem``), a worker started in
  this process in a thread (``celery.contrib.testing.worker.start_worker``,
  ``threads`` pool). The work is ``chord(add.s(i, i) for i in range(N))(total.s())``.
* **msgcluster**: ``Client.create_message_cluster`` of N ``{"x": i, "y": i}``
  tasks, consumed by one :class:`msgcluster.Worker` whose handler adds them;
  the cluster's ``on_cluster_complete`` is the callback.

Each peer first runs a warm-up of ``2 x concurrency`` tasks on the same
worker (Celery makes one DynamoDB client per worker thread, and checks its
table from each, the first time that thread stores a result), so the
measured run is steady state. Then, per run:

* **tasks/s**: N / (time from just before the first task is sent to the
  moment the callback body starts);
* **requests per task**: every request the peer sent through the proxy from
  just before the first send until the run is quiet (queue empty, no request
  but long polls for 2 s), divided by N, by API;
* **header tasks run** (handler bodies executed; distinct tasks in
  parentheses) and **callback runs**, counted in the bodies themselves.

Mode "every message twice": the proxy forwards every ``SendMessage`` /
``SendMessageBatch`` to the run's queue twice, so SQS holds two copies of
every message sent (Celery's chord callback message included: it is a task
message on the same queue). That is a standard queue's at-least-once
delivery at its worst, and both peers get it from the same mechanism. The
second copies are not counted as requests (no client sent them).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import anyio
import anyio.to_thread
import boto3
from celery import Celery, chord
from celery.contrib.testing.worker import start_worker
from celery.signals import setup_logging

from benchmarks._countproxy import CountingProxy
from benchmarks._metrics import CallCounter
from msgcluster import App, Client, Worker
from msgcluster.local import LocalAWS

MODES = {"once": "once", "twice": "every message twice"}
QUIET_SECONDS = 2.0  # no request but long polls for this long: the run is over
DRAIN_TIMEOUT = 120.0
# Both peers long-poll for 1 s (kombu's wait_time_seconds, the Worker's
# wait_seconds) and poll again at once after an empty receive.
WAIT_SECONDS = 1
VISIBILITY_TIMEOUT = 60


@dataclass
class Run:
    peer: str
    mode: str
    tasks: int
    elapsed: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    injected: int = 0
    runs: int = 0
    distinct: int = 0
    callbacks: int = 0
    callback_ok: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.elapsed if self.elapsed else 0.0

    @property
    def requests_per_task(self) -> float:
        return sum(self.counts.values()) / self.tasks


class Tally:
    """What the task bodies saw, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[int] = Counter()
        self.callbacks = 0
        self.callback_ok = False
        self.first_callback_at = 0.0
        self.done = threading.Event()

    def ran(self, x: int) -> None:
        with self.lock:
            self.runs[x] += 1

    def called_back(self, ok: bool) -> None:
        with self.lock:
            self.callbacks += 1
            if self.callbacks == 1:
                self.first_callback_at = time.perf_counter()
                self.callback_ok = ok
            else:
                self.callback_ok = self.callback_ok and ok
        self.done.set()


def wait_until_quiet(proxy: CountingProxy, queue_empty: Callable[[], bool]) -> Counter[str]:
    """Counts when the run is over: the queue empty, and no request but
    ReceiveMessage for QUIET_SECONDS (late effects, such as a Celery chord
    join still polling results, are inside the window). The counts returned
    are those at the last request that was not a receive."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last_change, last_key, snapshot = time.monotonic(), -1, Counter[str]()
    while time.monotonic() < deadline:
        counts = proxy.counts()
        key = sum(n for op, n in counts.items() if not op.endswith(".ReceiveMessage"))
        if key != last_key:
            last_change, last_key, snapshot = time.monotonic(), key, counts
        elif time.monotonic() - last_change >= QUIET_SECONDS and queue_empty():
            return snapshot
        time.sleep(0.2)
    raise TimeoutError("the run did not become quiet")


def queue_probe(aws: LocalAWS, url: str) -> Callable[[], bool]:
    """Whether the queue holds no message, asked of the server directly (not counted)."""
    sqs = boto3.client("sqs", **aws.client_kwargs())
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def empty() -> bool:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return all(attributes[name] == "0" for name in names)

    return empty


# ----------------------------------------------------------------- Celery


class CeleryLog(logging.Handler):
    """Counts the warnings and errors Celery logs, by message template (chord
    errors, "incremented too many times", failed tasks), instead of printing
    their tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        template = record.msg if isinstance(record.msg, str) else record.getMessage()
        key = f"{record.name}: {template}"
        self.messages[key] += 1
        self.examples.setdefault(key, record.getMessage()[:240])

    def clear(self) -> None:
        self.messages.clear()
        self.examples.clear()


def _leave_logging_alone(**_: Any) -> None:
    """A ``setup_logging`` receiver: while one is connected, Celery's worker
    configures no logging (it would empty the root logger's handlers and set
    its level, for the rest of this process)."""


@contextmanager
def celery_log() -> Iterator[CeleryLog]:
    setup_logging.connect(_leave_logging_alone)
    logger = logging.getLogger("celery")
    handler = CeleryLog()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        setup_logging.disconnect(_leave_logging_alone)


def run_celery(
    aws: LocalAWS, proxy: CountingProxy, tasks: int, concurrency: int, twice: bool
) -> Run:
    name = f"celery-{uuid.uuid4().hex[:8]}"
    sqs = boto3.client("sqs", **{**aws.client_kwargs(), "endpoint_url": proxy.url})
    url = sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT)}
    )["QueueUrl"]
    app = Celery(name, set_as_current=False)
    app.conf.update(
        # kombu builds the endpoint from the URL's host and port; is_secure
        # False makes it http://. The queue is predefined, so kombu never
        # lists or creates queues.
        broker_url=f"sqs://{aws.aws_access_key_id}:{aws.aws_secret_access_key}"
        f"@127.0.0.1:{proxy.port}",
        broker_transport_options={
            "region": aws.region,
            "is_secure": False,
            "predefined_queues": {name: {"url": url}},
            "wait_time_seconds": WAIT_SECONDS,
            "polling_interval": 0,
        },
        broker_connection_retry_on_startup=True,
        # An IP address as the "region" makes the backend use
        # http://host:port as its endpoint; the path is the table (created
        # by the backend on first use).
        result_backend=f"dynamodb://{aws.aws_access_key_id}:{aws.aws_secret_access_key}"
        f"@127.0.0.1:{proxy.port}/{name}",
        task_default_queue=name,
        # Remote control needs a fanout exchange (SNS on kombu's SQS): off,
        # so the worker sends nothing but its work.
        worker_enable_remote_control=False,
    )
    tally = Tally()

    # shared=False: a shared task (the default) is added to every app
    # finalized later, and this process makes one app per run.
    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        tally.ran(x)
        return x + y

    @app.task(name="bench.total", shared=False)
    def total(results: list[int]) -> int:
        # Counted before anything that could raise: a run is a run.
        tally.called_back(results == [2 * i for i in range(tasks)])
        return sum(results)

    @app.task(name="bench.nap", shared=False)
    def nap(seconds: float) -> float:
        time.sleep(seconds)  # keeps every pool thread busy at once in the warm-up
        return seconds

    @app.task(name="bench.warm", shared=False)
    def warm(results: list[float]) -> None:
        tally.done.set()

    run = Run("Celery chord", MODES["twice" if twice else "once"], tasks)
    empty = queue_probe(aws, url)
    with (
        celery_log() as log,
        start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            shutdown_timeout=30,
        ),
    ):
        chord(nap.s(0.2) for _ in range(2 * concurrency))(warm.s())
        if not tally.done.wait(DRAIN_TIMEOUT):
            raise TimeoutError("the Celery warm-up chord did not complete")
        wait_until_quiet(proxy, empty)
        tally.done.clear()
        log.clear()
        if twice:
            proxy.duplicate_queues.add(name)
        proxy.counts(reset=True)
        start = time.perf_counter()
        chord(add.s(i, i) for i in range(tasks))(total.s())
        # Not "until the callback ran": with duplicates it may never run.
        run.counts = wait_until_quiet(proxy, empty)
        run.injected = sum(proxy.injected().values())
        proxy.duplicate_queues.discard(name)
    run.elapsed = tally.first_callback_at - start if tally.callbacks else 0.0
    run.runs, run.distinct = sum(tally.runs.values()), len(tally.runs)
    run.callbacks, run.callback_ok = tally.callbacks, tally.callback_ok
    run.notes += [
        f"Celery logged {n} x {key!r}, e.g. {log.examples[key]!r}"
        for key, n in log.messages.most_common()
    ]
    return run


# ------------------------------------------------------------- msgcluster


async def run_msgcluster(
    aws: LocalAWS, proxy: CountingProxy, tasks: int, concurrency: int, twice: bool
) -> Run:
    names = uuid.uuid4().hex[:8]
    settings = {
        **aws.settings(),
        "endpoint_url": proxy.url,
        "table": f"t-{names}",
        "bucket": f"b-{names}",
    }
    run = Run("msgcluster cluster", MODES["twice" if twice else "once"], tasks)
    tally = Tally()
    async with Client(**settings) as mc:
        queue = f"q-{names}"
        url = (
            await mc.provision(
                [queue], max_receive_count=100, visibility_timeout=VISIBILITY_TIMEOUT
            )
        )[queue]
        app = App(mc)
        measured: set[str] = set()

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            _ = body["x"] + body["y"]  # the same work as Celery's add
            tally.ran(body["x"])

        @app.on_cluster_complete
        async def finished(record: Any, get_globals: Any) -> None:
            if record.id in measured:
                tally.called_back(record.completed == tasks and record.failed == 0)
            else:
                tally.done.set()  # the warm-up

        worker = Worker(
            app,
            f"sqs://{queue}",
            concurrency=concurrency,
            wait_seconds=WAIT_SECONDS,
            handle_signals=False,
            queue_options={"client": mc.sqs},
        )
        empty = queue_probe(aws, url)
        calls = CallCounter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await mc.create_message_cluster(
                url, ({"x": -1, "y": 0} for _ in range(2 * concurrency))
            )
            await anyio.to_thread.run_sync(tally.done.wait, DRAIN_TIMEOUT)
            await anyio.to_thread.run_sync(wait_until_quiet, proxy, empty)
            tally.done.clear()
            tally.runs.clear()
            if twice:
                proxy.duplicate_queues.add(queue)
            proxy.counts(reset=True)
            calls.attach(mc.sqs, mc.dynamodb, mc.s3)
            # The id is chosen here so the callback can tell this cluster
            # from the warm-up the moment it completes.
            cluster_id = str(uuid.uuid4())
            measured.add(cluster_id)
            start = time.perf_counter()
            await mc.create_message_cluster(
                url, ({"x": i, "y": i} for i in range(tasks)), cluster_id=cluster_id
            )
            run.counts = await anyio.to_thread.run_sync(wait_until_quiet, proxy, empty)
            run.injected = sum(proxy.injected().values())
            calls.detach(mc.sqs, mc.dynamodb, mc.s3)
            proxy.duplicate_queues.discard(queue)
            worker.stop()
    run.elapsed = tally.first_callback_at - start if tally.callbacks else 0.0
    run.runs, run.distinct = sum(tally.runs.values()), len(tally.runs)
    run.callbacks, run.callback_ok = tally.callbacks, tally.callback_ok
    # The proxy against botocore's own count of the calls this client made
    # (long polls aside: the proxy's figure stops at the quiet point).
    by_botocore = sum(n for op, n in calls.calls.items() if op != "ReceiveMessage")
    by_proxy = sum(n for op, n in run.counts.items() if not op.endswith(".ReceiveMessage"))
    run.notes.append(
        f"counting check: {by_proxy:,} requests other than ReceiveMessage through the proxy, "
        f"{by_botocore:,} calls seen by botocore"
    )
    return run


# ------------------------------------------------------------------ report


def _row(r: Run) -> str:
    distinct = f" ({r.distinct:,} distinct)" if r.distinct != r.runs else ""
    ok = "" if r.callback_ok or not r.callbacks else " (with wrong or missing results)"
    rate = f"{r.tasks_per_s:,.1f}" if r.callbacks else "— (no callback)"
    return (
        f"| {r.peer} | {r.mode} | {rate} | {r.requests_per_task:.3f} | "
        f"{r.runs:,}{distinct} | {r.callbacks}{ok} |"
    )


def report(rows: list[Run], args: argparse.Namespace) -> None:
    print(
        f"\n{args.tasks:,} tasks and one callback per run, {args.concurrency} worker slots per "
        f"peer; celery {version('celery')}, kombu {version('kombu')}, boto3 {version('boto3')}, "
        f"pycurl {version('pycurl')}, moto {version('moto')}\n"
    )
    print("| peer | mode | tasks/s | requests / task | header tasks run | callback runs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r))
    print("\nRequests per task by API:\n")
    apis = sorted({op for r in rows for op in r.counts})
    print("| API | " + " | ".join(f"{r.peer}, {r.mode}" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for op in apis:
        cells = " | ".join(f"{r.counts[op] / r.tasks:.3f}" if r.counts[op] else "" for r in rows)
        print(f"| {op} | {cells} |")
    print()
    for mode in MODES.values():
        pair = {r.peer.split()[0]: r for r in rows if r.mode == mode}
        if {"Celery", "msgcluster"} <= pair.keys():
            ours, theirs = pair["msgcluster"], pair["Celery"]
            speed = (
                f"{ours.tasks_per_s / theirs.tasks_per_s:.2f}x"
                if ours.callbacks and theirs.callbacks
                else "— (a callback never ran)"
            )
            print(
                f"msgcluster / Celery, {mode}: requests per task "
                f"{ours.requests_per_task / theirs.requests_per_task:.3f}x, tasks/s {speed}"
            )
    for r in rows:
        for note in r.notes:
            print(f"note ({r.peer}, {r.mode}): {note}")
        if r.injected:
            print(f"note ({r.peer}, {r.mode}): the proxy delivered {r.injected:,} sends twice")


def main(args: argparse.Namespace) -> None:
    modes = ["once", "twice"] if args.mode == "both" else [args.mode]
    rows: list[Run] = []
    with LocalAWS() as aws, CountingProxy(aws.endpoint_url) as proxy:
        for mode in modes:
            twice = mode == "twice"
            rows.append(run_celery(aws, proxy, args.tasks, args.concurrency, twice))
            print(f"  done: {rows[-1].peer}, {rows[-1].mode}", flush=True)
            rows.append(anyio.run(run_msgcluster, aws, proxy, args.tasks, args.concurrency, twice))
            print(f"  done: {rows[-1].peer}, {rows[-1].mode}", flush=True)
    report(rows, args)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=["once", "twice", "both"], default="both")
    main(parser.parse_args())


if __name__ == "__main__":
    cli()
