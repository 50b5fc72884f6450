"""The worker runtime: dispatch overhead on memory://, requests per message on sqs://.

Run: ``.venv/bin/python -m benchmarks.bench_worker`` (about a minute on the
development machine). Options: ``--messages`` (memory://, default 20,000),
``--concurrency`` (memory:// worker runs, default 1 16 64), ``--repeat``
(memory:// timed runs per row, best kept, default 3), ``--sqs-messages``,
``--tracked-messages``, ``--cluster-tasks``, ``--naive-messages``.

memory:// (no I/O: the library's own overhead). ``N`` small msgspec Structs
are put on a fresh in-process queue, then consumed by

* ``hand loop``: receive 10, decode, ``await handler(body)``, ack; one task,
  no worker (the floor of what consuming this queue API costs);
* ``Worker(concurrency=c, burst=True)`` with the same trivial async handler.

Printed: messages/s, dispatches per second per core (messages / process CPU
seconds), CPU µs per message, peak traced memory of the consume run (the
filled queue is allocated before tracing starts), and the ratio of rates.
Timed runs are untraced (``tracemalloc`` roughly doubles CPU); peak memory
comes from one more, traced, run of each row.

sqs:// on the embedded local AWS (moto in a child process, so process CPU is
the client's alone): plain bodies, tracked messages
(``Client.send_message_batch``) and one cluster's tasks, each consumed by a
``Worker(concurrency=16)`` sharing the ``Client``'s connections (plain
bodies also at ``concurrency=1``), against naive loops on the same server
(receive one message, handle, delete it; for tracked messages also
``is_complete`` and ``mark_complete`` one at a time) and one hand-written
batched loop. Printed: AWS requests per message by API, messages per
receive (and empty receives), client CPU µs per message, messages/s and its
ratio to the naive loop of the same kind. A burst worker's run ends with
empty long polls (``wait_seconds``), so worker rates are timed to the last
message settled. A cluster's completion event must be settled within the
measured run (skipped, or its callback run), never retried.

Every run asserts that each message was handled exactly once and that the
queue is empty afterwards; otherwise its figures would mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from benchmarks._metrics import CallCounter, Measurement, max_rss_mb, measure
from msgcluster import Client, MessageClusterRecord
from msgcluster.local import LocalAWS
from msgcluster.queues import Queue, open_queue
from msgcluster.worker import App, Outcome, Worker, WorkerStats

SQS_CONCURRENCY = 16
SQS_WAIT_SECONDS = 1.0
MEMORY_WAIT_SECONDS = 0.01


class Job(msgspec.Struct):
    """The body: small, typical of a job message (~55 bytes of JSON)."""

    id: int
    item: str
    qty: int
    note: str


def job(i: int) -> Job:
    return Job(id=i, item="book", qty=1 + i % 5, note="gift wrap")


# --------------------------------------------------------------- bookkeeping


class Handled:
    """Counts handler runs per job id: every figure needs each exactly once."""

    def __init__(self, n: int) -> None:
        self.counts = [0] * n

    def check(self, what: str) -> None:
        n = len(self.counts)
        once = self.counts.count(1)
        if once != n:
            missing = self.counts.count(0)
            raise AssertionError(
                f"{what}: {once:,} of {n:,} messages handled exactly once "
                f"({missing:,} never, {n - once - missing:,} more than once)"
            )


class SettleClock:
    """A metrics hook (the worker's own): when the last message was settled."""

    def __init__(self) -> None:
        self.last = 0.0

    def message_done(self, outcome: Outcome, seconds: float, lag: float | None) -> None:
        self.last = time.perf_counter()

    def in_flight(self, count: int) -> None:
        pass

    def stopped(self, stats: WorkerStats) -> None:
        pass


class Receives:
    """Receive calls that returned messages, messages they returned, empty ones."""

    def __init__(self) -> None:
        self.full = self.messages = self.empty = 0
        self.sizes: Counter[int] = Counter()

    def count(self, got: int) -> None:
        self.sizes[got] += 1
        if got:
            self.full += 1
            self.messages += got
        else:
            self.empty += 1

    def wrap(self, queue: Queue) -> None:
        """Count a queue handle's receives (one extra await per receive)."""
        receive = queue.receive

        async def counted(*args: Any, **kwargs: Any) -> Any:
            messages = await receive(*args, **kwargs)
            self.count(len(messages))
            return messages

        queue.receive = counted  # type: ignore[method-assign]

    def attach(self, sqs: Any) -> Receives:
        """Count an aiobotocore SQS client's ReceiveMessage responses."""
        sqs.meta.events.register("after-call.sqs.ReceiveMessage", self._on_receive)
        return self

    def detach(self, sqs: Any) -> None:
        sqs.meta.events.unregister("after-call.sqs.ReceiveMessage", self._on_receive)

    def _on_receive(self, parsed: dict[str, Any], **_: Any) -> None:
        self.count(len(parsed.get("Messages", [])))

    @property
    def per_receive(self) -> float:
        return self.messages / self.full if self.full else 0.0

    def histogram(self) -> str:
        """Receives by messages returned, largest first: ``10 x 90, 6 x 4, ...``."""
        return ", ".join(f"{size} x {count}" for size, count in sorted(self.sizes.items())[::-1])


@dataclass
class Row:
    name: str
    n: int
    m: Measurement
    #: Seconds to the last message settled (a burst worker then waits out empty polls).
    busy: float
    receives: Receives
    calls: dict[str, int] = field(default_factory=dict)
    peak_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.busy

    @property
    def cpu_us(self) -> float:
        return self.m.cpu / self.n * 1e6


# ------------------------------------------------------------------ memory://


async def fill(queue: Queue, n: int) -> None:
    for start in range(0, n, 10):
        bodies = [msgspec.json.encode(job(i)) for i in range(start, min(start + 10, n))]
        results = await queue.send(bodies)
        assert all(r.ok for r in results), results


def memory_depth(queue: Queue) -> int:
    return len(queue.driver._store)  # type: ignore[attr-defined]  # held, in flight included


async def memory_hand_loop(n: int, trace: bool) -> Row:
    decoder = msgspec.json.Decoder(Job)
    handled = Handled(n)
    counts = handled.counts

    async def handler(body: Job) -> None:
        counts[body.id] += 1

    receives = Receives()
    async with open_queue(f"memory://bench-loop-{uuid.uuid4().hex[:8]}") as queue:
        await fill(queue, n)
        receives.wrap(queue)
        with measure(trace_memory=trace) as m:
            while messages := await queue.receive(10):
                for message in messages:
                    await handler(decoder.decode(message.body))
                results = await queue.ack(messages)
                assert all(r.ok for r in results)
        handled.check("memory:// hand loop")
        assert memory_depth(queue) == 0
    name = "hand loop (receive 10, handle, ack)"
    return Row(name, n, m, m.wall, receives, peak_bytes=m.peak_bytes)


async def memory_worker(n: int, concurrency: int, trace: bool) -> Row:
    handled = Handled(n)
    counts = handled.counts
    app = App()

    @app.handler(Job)
    async def handler(body: Job) -> None:
        counts[body.id] += 1

    clock = SettleClock()
    receives = Receives()
    async with open_queue(f"memory://bench-worker-{uuid.uuid4().hex[:8]}") as queue:
        await fill(queue, n)
        receives.wrap(queue)
        worker = Worker(
            app,
            queue,
            concurrency=concurrency,
            burst=True,
            wait_seconds=MEMORY_WAIT_SECONDS,
            handle_signals=False,
            metrics=clock,
        )
        with measure(trace_memory=trace) as m:
            start = time.perf_counter()
            stats = await worker.run()
        handled.check(f"memory:// worker, concurrency {concurrency}")
        assert stats[Outcome.SUCCEEDED] == n, stats
        assert stats.total == n, stats
        assert memory_depth(queue) == 0
    name = f"Worker concurrency={concurrency}"
    return Row(name, n, m, clock.last - start, receives, peak_bytes=m.peak_bytes)


async def best_of(repeat: int, run: Callable[[bool], Awaitable[Row]]) -> Row:
    """The least-CPU of ``repeat`` untraced runs, with the peak of one traced run."""
    rows = [await run(False) for _ in range(repeat)]
    best = min(rows, key=lambda r: r.m.cpu)
    spread = statistics.pstdev(r.cpu_us for r in rows) if repeat > 1 else 0.0
    print(
        f"  {best.name}: CPU µs/message {', '.join(f'{r.cpu_us:.1f}' for r in rows)} "
        f"(sd {spread:.1f})",
        file=sys.stderr,
        flush=True,
    )
    best.peak_bytes = (await run(True)).peak_bytes
    return best


async def memory_part(n: int, concurrencies: list[int], repeat: int) -> list[Row]:
    rows = [await best_of(repeat, partial(memory_hand_loop, n))]
    for c in concurrencies:
        rows.append(await best_of(repeat, partial(memory_worker, n, c)))
    return rows


def report_memory(rows: list[Row]) -> None:
    base = rows[0]
    print(
        "| run | messages | messages / receive | messages/s | dispatches/s per core "
        "| CPU µs / message | peak traced MB | rate vs hand loop |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r.peak_bytes / 1e6:.1f}" if r.peak_bytes is not None else "—"
        print(
            f"| {r.name} | {r.n:,} | {r.receives.per_receive:.2f} | {r.rate:,.0f} "
            f"| {r.n / r.m.cpu:,.0f} | {r.cpu_us:.1f} "
            f"| {peak} | {r.rate / base.rate:.2f} |"
        )
    print()
    for r in rows[1:]:
        print(
            f"* {r.name}: {r.cpu_us - base.cpu_us:.1f} µs of CPU per message over the "
            f"hand loop ({r.cpu_us / base.cpu_us:.1f}x); receives: {r.receives.histogram()}"
        )


# --------------------------------------------------------------------- sqs://


async def fill_sqs(queue: Queue, n: int) -> None:
    sem = asyncio.Semaphore(SQS_CONCURRENCY)

    async def send(start: int) -> None:
        bodies = [msgspec.json.encode(job(i)) for i in range(start, min(start + 10, n))]
        async with sem:
            results = await queue.send(bodies)
        assert all(r.ok for r in results), results

    await asyncio.gather(*(send(s) for s in range(0, n, 10)))


async def sqs_depth(mc: Client, url: str) -> tuple[int, int]:
    attributes = (
        await mc.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def assert_drained(mc: Client, url: str, what: str) -> None:
    depth = await sqs_depth(mc, url)
    assert depth == (0, 0), f"{what}: {depth[0]} visible, {depth[1]} in flight left"


async def sqs_worker(
    mc: Client,
    url: str,
    app: App,
    n: int,
    name: str,
    counter: CallCounter,
    concurrency: int = SQS_CONCURRENCY,
) -> tuple[Row, WorkerStats]:
    clock = SettleClock()
    async with open_queue(url, client=mc.sqs) as queue:  # GetQueueAttributes: not counted
        worker = Worker(
            app,
            queue,
            concurrency=concurrency,
            burst=True,
            wait_seconds=SQS_WAIT_SECONDS,
            handle_signals=False,
            metrics=clock,
        )
        receives = Receives().attach(mc.sqs)
        with measure(counter, trace_memory=False) as m:
            start = time.perf_counter()
            stats = await worker.run()
        receives.detach(mc.sqs)
    return Row(name, n, m, clock.last - start, receives, calls=m.calls), stats


async def sqs_plain_worker(
    mc: Client, url: str, n: int, counter: CallCounter, *, concurrency: int
) -> Row:
    handled = Handled(n)
    counts = handled.counts
    app = App()

    @app.handler(Job)
    async def handler(body: Job) -> None:
        counts[body.id] += 1

    async with open_queue(url, client=mc.sqs) as queue:
        await fill_sqs(queue, n)
    name = f"plain: Worker concurrency={concurrency}"
    row, stats = await sqs_worker(mc, url, app, n, name, counter, concurrency)
    handled.check("sqs:// plain worker")
    assert stats[Outcome.SUCCEEDED] == n, stats
    assert stats.total == n, stats
    await assert_drained(mc, url, "sqs:// plain worker")
    return row


async def sqs_plain_loop(mc: Client, url: str, n: int, counter: CallCounter, *, batch: int) -> Row:
    """One sequential loop on the raw client: receive ``batch``, handle, delete."""
    decoder = msgspec.json.Decoder(Job)
    handled = Handled(n)
    counts = handled.counts

    async def handler(body: Job) -> None:
        counts[body.id] += 1

    async with open_queue(url, client=mc.sqs) as queue:
        await fill_sqs(queue, n)
    done = 0
    receives = Receives().attach(mc.sqs)
    with measure(counter, trace_memory=False) as m:
        while done < n:
            response = await mc.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=batch, WaitTimeSeconds=1, VisibilityTimeout=30
            )
            messages = response.get("Messages", [])
            for message in messages:
                await handler(decoder.decode(message["Body"]))
            if batch == 1:
                for message in messages:
                    await mc.sqs.delete_message(
                        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
                    )
            elif messages:
                entries = [
                    {"Id": str(i), "ReceiptHandle": msg["ReceiptHandle"]}
                    for i, msg in enumerate(messages)
                ]
                result = await mc.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                assert not result.get("Failed"), result
            done += len(messages)
    receives.detach(mc.sqs)
    what = "sqs:// naive loop" if batch == 1 else "sqs:// batched loop"
    handled.check(what)
    await assert_drained(mc, url, what)
    if batch == 1:
        name = "plain: naive loop (ReceiveMessage 1, DeleteMessage)"
    else:
        name = "plain: hand loop (ReceiveMessage 10, DeleteMessageBatch), 1 task"
    return Row(name, n, m, m.wall, receives, calls=m.calls)


async def sqs_tracked_worker(mc: Client, url: str, n: int, counter: CallCounter) -> Row:
    handled = Handled(n)
    counts = handled.counts
    app = App(client=mc)

    @app.handler(Job)
    async def handler(body: Job) -> None:
        counts[body.id] += 1

    keys = await mc.send_message_batch(url, (job(i) for i in range(n)))
    row, stats = await sqs_worker(mc, url, app, n, "tracked: Worker concurrency=16", counter)
    handled.check("sqs:// tracked worker")
    assert stats[Outcome.SUCCEEDED] == n, stats
    assert stats.total == n, stats
    await assert_drained(mc, url, "sqs:// tracked worker")
    left = [r for r in await mc.get_message_records(keys, consistent_read=True) if r is not None]
    assert not left, f"{len(left)} records not completed"
    return row


async def sqs_tracked_naive(mc: Client, url: str, n: int, counter: CallCounter) -> Row:
    """The library's one-message calls in a sequential loop."""
    handled = Handled(n)
    counts = handled.counts

    async def handler(body: Job) -> None:
        counts[body.id] += 1

    keys = await mc.send_message_batch(url, (job(i) for i in range(n)))
    done = 0
    receives = Receives().attach(mc.sqs)
    with measure(counter, trace_memory=False) as m:
        while done < n:
            response = await mc.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=1,
                VisibilityTimeout=30,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                record = await mc.load_sqs_record(message, Job)
                if not await mc.is_complete(record):
                    await handler(record.body)
                    await mc.mark_complete(record)
                await mc.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                done += 1
    receives.detach(mc.sqs)
    handled.check("sqs:// tracked naive loop")
    await assert_drained(mc, url, "sqs:// tracked naive loop")
    left = [r for r in await mc.get_message_records(keys, consistent_read=True) if r is not None]
    assert not left, f"{len(left)} records not completed"
    name = "tracked: naive loop (ReceiveMessage 1, is_complete, mark_complete, DeleteMessage)"
    return Row(name, n, m, m.wall, receives, calls=m.calls)


async def sqs_cluster_worker(mc: Client, url: str, n: int, counter: CallCounter) -> Row:
    handled = Handled(n)
    counts = handled.counts
    app = App(client=mc)
    finished: list[tuple[int, int]] = []

    @app.handler(Job)
    async def handler(body: Job) -> None:
        counts[body.id] += 1

    @app.on_cluster_complete
    async def done(cluster: MessageClusterRecord, get_globals: Any) -> None:
        finished.append((cluster.completed, cluster.failed))

    key = await mc.create_message_cluster(url, (job(i) for i in range(n)), omit_globals=True)
    name = "cluster tasks: Worker concurrency=16 (consume only)"
    row, stats = await sqs_worker(mc, url, app, n, name, counter)
    handled.check("sqs:// cluster worker")
    assert finished == [(n, 0)], finished
    assert stats[Outcome.SUCCEEDED] == n, stats
    # The completion event is settled within the run: skipped when the batch
    # that completed the cluster ran the callback (the worker waits for its
    # own run), or it ran the callback itself. Never retried, never twice.
    outcomes = {o.value: c for o, c in stats.outcomes.items() if o is not Outcome.SUCCEEDED}
    row.notes.append(f"completion event: {outcomes or 'not received'}")
    assert set(stats.outcomes) <= {Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.CALLBACK}, stats
    assert finished == [(n, 0)], finished
    await assert_drained(mc, url, "sqs:// cluster worker")
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.completed, record.failed) == (n, 0), record
    return row


async def sqs_part(plain: int, tracked: int, cluster: int, naive: int) -> list[tuple[Row, str]]:
    """Every sqs:// row, each with the label of the row its rate is compared to."""
    with LocalAWS() as aws:
        async with Client(
            table="bench-worker",
            bucket="bench-worker",
            concurrency=SQS_CONCURRENCY,
            **aws.settings(),
        ) as mc:
            names = ["naive", "loop", "plain", "plain-1", "tracked-naive", "tracked", "cluster"]
            urls = await mc.provision(queues=names)
            counter = CallCounter().attach(mc.sqs, mc.dynamodb, mc.s3)
            # (queue and label, label of the baseline, run, messages)
            steps: list[tuple[str, str, Callable[..., Awaitable[Row]], int]] = [
                ("naive", "naive", partial(sqs_plain_loop, batch=1), naive),
                ("loop", "naive", partial(sqs_plain_loop, batch=10), plain),
                ("plain", "naive", partial(sqs_plain_worker, concurrency=SQS_CONCURRENCY), plain),
                ("plain-1", "naive", partial(sqs_plain_worker, concurrency=1), naive),
                ("tracked-naive", "tracked-naive", sqs_tracked_naive, naive),
                ("tracked", "tracked-naive", sqs_tracked_worker, tracked),
                ("cluster", "", sqs_cluster_worker, cluster),
            ]
            rows: list[tuple[Row, str]] = []
            by_label: dict[str, Row] = {}
            for label, base, step, n in steps:
                if not n:
                    continue
                row = by_label[label] = await step(mc, urls[label], n, counter)
                rows.append((row, base))
                print(f"  {label}: {row.n:,} in {row.m.wall:.1f} s", file=sys.stderr, flush=True)
            counter.detach(mc.sqs, mc.dynamodb, mc.s3)
    # The baseline's rate, looked up by label, replaces the label.
    return [(row, f"{row.rate / by_label[base].rate:.1f}x" if base else "—") for row, base in rows]


def _per_api(calls: dict[str, int], n: int) -> str:
    by_api = ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(calls.items()))
    return f"{sum(calls.values()) / n:.3f} ({by_api})"


def report_sqs(rows: list[tuple[Row, str]]) -> None:
    print(
        "| run | messages | AWS requests / message (by API) | messages / receive (empty receives) "
        "| client CPU µs / message | messages/s | rate vs naive loop |"
    )
    print("|---|---|---|---|---|---|---|")
    for r, ratio in rows:
        print(
            f"| {r.name} | {r.n:,} | {_per_api(r.calls, r.n)} "
            f"| {r.receives.per_receive:.2f} ({r.receives.empty}) | {r.cpu_us:,.0f} "
            f"| {r.rate:,.0f} | {ratio} |"
        )
    print("\nMessages per ReceiveMessage (size x receives), and notes:\n")
    for r, _ in rows:
        notes = "".join(f"; {note}" for note in r.notes)
        print(f"* {r.name}: {r.receives.histogram()}{notes}")


# ----------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    print(f"memory:// ({args.messages:,} messages, best of {args.repeat}):", file=sys.stderr)
    memory_rows = await memory_part(args.messages, args.concurrency, args.repeat)
    rss_memory = max_rss_mb()
    print("sqs:// (embedded local AWS):", file=sys.stderr)
    sqs_rows = await sqs_part(
        args.sqs_messages, args.tracked_messages, args.cluster_tasks, args.naive_messages
    )
    print(
        f"\nmemory:// worker overhead: {args.messages:,} messages of "
        f"{len(msgspec.json.encode(job(args.messages)))} bytes, trivial async handler, "
        f"best of {args.repeat} runs (least CPU):\n"
    )
    report_memory(memory_rows)
    print(f"\nMax RSS after the memory:// runs: {rss_memory:.0f} MB.")
    print(
        f"\nsqs:// on the embedded local AWS (moto), Worker wait_seconds={SQS_WAIT_SECONDS:g}; "
        "loops sequential, one task:\n"
    )
    report_sqs(sqs_rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="memory:// messages")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeat", type=int, default=3, help="memory:// timed runs per row")
    parser.add_argument("--sqs-messages", type=int, default=1_000, help="plain sqs:// messages")
    parser.add_argument("--tracked-messages", type=int, default=500)
    parser.add_argument("--cluster-tasks", type=int, default=500, help="0: skip")
    parser.add_argument("--naive-messages", type=int, default=300, help="each naive sqs:// loop")
    asyncio.run(main(parser.parse_args()))
