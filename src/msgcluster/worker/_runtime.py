"""The worker runtime: receivers feed handler slots; settle in batches.

Shape (saq / faststream style, on anyio):

* ``receivers`` long-polling loops each take up to 10 messages, but only as
  many as there are free *slots* (``concurrency + prefetch``): memory and
  invisible-but-idle messages are bounded.
* A receive batch is settled as a unit: tracked messages are checked with
  one ``is_complete_batch`` (duplicates are acked without running), handlers
  run under a ``concurrency`` limiter, successful tracked messages are
  completed/counted with one ``mark_complete_batch``, then acked in one call.
  Nothing is acked before every write it causes has been applied, and work
  that was completed is never made visible again, even when its ack fails.
  The same message twice in one batch runs once.
* A heartbeat extends the visibility of messages whose handler still runs
  (up to ``max_extension`` in all).
* Failure: the message becomes visible again after a jittered exponential
  backoff; on its last receive a tracked message is recorded as failed (a
  cluster task counts as failed) and the queue's DLQ takes it. ``Reject`` and
  poison (an undecodable body, a mis-keyed envelope) go to the DLQ at once,
  alone, a tracked one recorded as failed.
* Shutdown (``stop()``, SIGTERM/SIGINT): stop receiving, release messages
  whose handler has not started, let running handlers finish within
  ``grace_seconds``, then cancel them (their messages are released), and
  settle what finished. ``burst=True`` stops when a receive comes back empty
  with nothing in flight.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._errors import MsgclusterError, QueueClosedError
from .._schemas import RecordKey, RecordType
from ..clusters._callbacks import DEFAULT_LEASE_SECONDS as CALLBACK_LEASE_SECONDS
from ..queues import Queue, ReceivedMessage, open_queue
from ..queues._portable import wrap
from ..queues._uri import parse_queue_uri, shown
from ._batch import ACKED, Item, read_batch
from ._flow import Ack, Reject, Retry
from ._metrics import LoggingMetrics, Outcome, WorkerMetrics, WorkerStats
from ._options import check_options
from ._tracing import destination_of, end_span, process_span

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._app import App

__all__ = ["Worker"]

log = logging.getLogger("msgcluster.worker")
T = TypeVar("T")


class Worker:
    """Consume one queue with an :class:`App`'s handlers.

    ``queue``: a URI (opened and closed by the worker) or an open
    :class:`~msgcluster.queues.Queue`. Use ``await worker.run()``; it returns
    :class:`WorkerStats` when stopped (``stop()``, a signal, or ``burst``).
    """

    def __init__(
        self,
        app: App,
        queue: str | Queue,
        *,
        concurrency: int = 16,
        receivers: int | None = None,
        prefetch: int | None = None,
        wait_seconds: float = 10.0,
        visibility_timeout: float = 30.0,
        max_extension: float = 3600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        grace_seconds: float = 30.0,
        burst: bool = False,
        handle_signals: bool = True,
        metrics: WorkerMetrics | None = None,
        queue_options: dict[str, Any] | None = None,
    ) -> None:
        check_options(
            concurrency=concurrency,
            receivers=receivers,
            prefetch=prefetch,
            wait_seconds=wait_seconds,
            visibility_timeout=visibility_timeout,
            max_extension=max_extension,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            grace_seconds=grace_seconds,
        )
        app.check_ready()
        if isinstance(queue, str):
            parse_queue_uri(queue)  # a malformed URI (or one with credentials) fails here
        self.app = app
        self._queue_arg = queue
        self._queue_options = queue_options or {}
        self.concurrency = concurrency
        self.receivers = receivers or max(1, min(4, math.ceil(concurrency / 10)))
        self.prefetch = 10 * self.receivers if prefetch is None else prefetch
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.max_extension = max_extension
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.grace_seconds = grace_seconds
        self.burst = burst
        self.handle_signals = handle_signals
        self.metrics: WorkerMetrics = metrics or LoggingMetrics()
        self.stats = WorkerStats()
        self._stopping = anyio.Event()
        self._slot_count = concurrency + self.prefetch
        self._slots = anyio.Semaphore(self._slot_count)
        self._reserving = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._running: dict[int, tuple[Item, float, float]] = {}  # id -> item, started, until
        self._in_flight = 0
        self._batches_settled = 0
        self._idle = anyio.Event()
        self._queue: Queue | None = None
        self._destination = ("", "")
        # Cluster key -> set when this worker's own run of its callback ends.
        self._callbacks_running: dict[RecordKey, anyio.Event] = {}
        # Receivers waiting for slots or backing off: cancelled by stop().
        self._waits: set[anyio.CancelScope] = set()

    # ------------------------------------------------------------------ API

    def __repr__(self) -> str:
        queue = self._queue_arg if isinstance(self._queue_arg, str) else self._queue_arg.uri
        queue = shown(queue)
        state = "stopping" if self._stopping.is_set() else f"{self._in_flight} in flight"
        return f"<Worker {queue!r} concurrency={self.concurrency} {state}>"

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a handler)."""
        self._stopping.set()
        for scope in self._waits:
            scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> WorkerStats:
        if isinstance(self._queue_arg, str):
            async with open_queue(self._queue_arg, **self._queue_options) as queue:
                return await self._run(queue)
        return await self._run(wrap(self._queue_arg))

    async def _run(self, queue: Queue) -> WorkerStats:
        self._queue = queue
        self._destination = destination_of(queue)
        self.stats = WorkerStats()
        async with anyio.create_task_group() as service:
            if self.handle_signals:
                service.start_soon(self._watch_signals)
            service.start_soon(self._heartbeat)
            async with anyio.create_task_group() as batches:
                async with anyio.create_task_group() as receiving:
                    for _ in range(self.receivers):
                        receiving.start_soon(self._receive_loop, queue, batches)
                    await self._stopping.wait()
                    # Polls in progress are not abandoned: the server may still
                    # hand them messages, which would then sit invisible. Each
                    # receiver finishes its poll and releases what it got.
                    poll = min(self.wait_seconds, queue.capabilities.max_wait_seconds)
                    receiving.cancel_scope.deadline = anyio.current_time() + poll + 10
                # Receiving stopped: drain what is in flight, then cut it off.
                with anyio.move_on_after(self.grace_seconds):
                    while self._in_flight:
                        self._idle = anyio.Event()
                        await self._idle.wait()
                if self._in_flight:
                    log.warning(
                        "grace period over: cancelling %d in-flight messages", self._in_flight
                    )
                    batches.cancel_scope.cancel()
            service.cancel_scope.cancel()
        self.stats.stopped_at = time.monotonic()
        self.metrics.stopped(self.stats)
        return self.stats

    # ------------------------------------------------------------- receiving

    async def _receive_loop(self, queue: Queue, batches: anyio.abc.TaskGroup) -> None:
        failures = 0
        max_batch = min(10, queue.capabilities.max_receive_batch)
        while not self._stopping.is_set():
            wanted = await self._unless_stopped(self._reserve(max_batch))
            if wanted is None:
                return
            settled_before = self._batches_settled
            try:
                messages = await queue.receive(
                    wanted,
                    wait_seconds=min(self.wait_seconds, queue.capabilities.max_wait_seconds),
                    visibility_timeout=self.visibility_timeout,
                )
            except QueueClosedError:
                self._release_slots(wanted)
                self.stop()
                return
            except Exception as exc:
                # Throttling, network: keep running, back off.
                self._release_slots(wanted)
                failures += 1
                delay = self._backoff(failures, cap=20.0)
                log.warning("receive failed (%s); retrying in %.1f s", exc, delay)
                await self._unless_stopped(anyio.sleep(delay))
                continue
            failures = 0
            self._release_slots(wanted - len(messages))
            if self._stopping.is_set():
                await self._release_received(queue, messages)
                return
            if not messages:
                # Burst: empty only counts if nothing settled while this
                # receive waited (a retry made visible meanwhile may be missed
                # by a long poll that started before it).
                if self.burst and self._in_flight == 0 and settled_before == self._batches_settled:
                    self.stop()
                continue
            self._add_in_flight(len(messages))
            batches.start_soon(self._settle_batch, queue, messages)

    async def _unless_stopped(self, waiting: Awaitable[T]) -> T | None:
        """``await waiting``, or None once stop() is called (it cancels the wait)."""
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                if self._stopping.is_set():
                    scope.cancel()
                return await waiting
            finally:
                self._waits.discard(scope)
        return None

    async def _release_received(self, queue: Queue, messages: list[ReceivedMessage]) -> None:
        """Make what a poll returned after stop() visible again at once."""
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await queue.change_visibility([(message, 0) for message in messages])
        except Exception as exc:  # harmless: they reappear after their timeout
            log.debug("release of %d message(s) failed: %s", len(messages), exc)
        finally:
            self._release_slots(len(messages))

    async def _reserve(self, most: int) -> int:
        """Reserve slots for one receive: a full batch, waited for in turn.

        Taking whatever is free instead splits a settled batch's slots
        between waiting receivers (9 + 1), and every per-batch request
        (receive, completion check, transaction, ack) then costs up to ten
        times more per message.
        """
        most, got = min(most, self._slot_count), 0
        try:
            async with self._reserving:
                while got < most:
                    await self._slots.acquire()
                    got += 1
        except BaseException:  # cancelled (shutdown): give back what we took
            self._release_slots(got)
            raise
        return most

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def _add_in_flight(self, delta: int) -> None:
        self._in_flight += delta
        self.metrics.in_flight(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()

    # -------------------------------------------------------------- settling

    async def _settle_batch(self, queue: Queue, messages: list[ReceivedMessage]) -> None:
        items = [Item(m, queue) for m in messages]
        try:
            await self._prepare(items)
            async with anyio.create_task_group() as handlers:
                for item in items:
                    if item.outcome is None:
                        handlers.start_soon(self._handle, item)
            await self._complete(queue, items)
        except Exception as exc:
            # A settle step failed (AWS down?): nothing unsettled is acked; it
            # is released below and comes back, and duplicates are skipped.
            log.error("settling a batch of %d failed: %r", len(items), exc)
        finally:
            # Whatever is not settled by now (cancelled at shutdown, or a
            # settle step failed) becomes visible again for another worker.
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self._release(queue, [i for i in items if not i.settled])
            self._release_slots(len(items))
            self._batches_settled += 1
            self._add_in_flight(-len(items))

    async def _prepare(self, items: list[Item]) -> None:
        """Read every message through the pipeline; check tracked ones (one
        request); find poison. One bad message never holds up the others."""
        await read_batch(self.app, items)

    async def _handle(self, item: Item) -> None:
        # CapacityLimiter's async acquire always yields to the loop; taking a
        # free slot without it is a third of the worker's per-message CPU.
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()
        try:
            if self._stopping.is_set():
                item.outcome = Outcome.RELEASED  # prefetched, never started
                return
            kind = "ClusterEvent" if item.body is None else type(item.body).__name__
            with process_span(self._destination, item.message, kind) as span:
                await self._run_handler(item)
                failed = item.outcome is Outcome.DEAD_LETTERED or (
                    item.outcome is Outcome.RETRIED and not isinstance(item.error, Retry)
                )
                assert item.outcome is not None
                end_span(span, item.outcome.value, item.error, failed)
        finally:
            self._limiter.release()

    async def _run_handler(self, item: Item) -> None:
        started = time.monotonic()
        self._running[id(item)] = (item, started, started + self.visibility_timeout)
        try:
            if item.record is not None and item.record.type is RecordType.CLUSTER:
                await self._run_completion_event(item)
            else:
                await self.app.dispatch(item.body, item.ctx)
                item.outcome = Outcome.SUCCEEDED
        except Ack:
            item.outcome = Outcome.SUCCEEDED
        except Retry as exc:
            item.outcome, item.retry_delay, item.error = Outcome.RETRIED, exc.delay, exc
        except Reject as exc:
            item.outcome, item.error = Outcome.DEAD_LETTERED, exc
        except Exception as exc:
            log.warning("handler failed for message %s: %r", item.message.id, exc)
            item.outcome, item.error = Outcome.RETRIED, exc
        finally:
            item.seconds = time.monotonic() - started
            self._running.pop(id(item), None)

    async def _run_completion_event(self, item: Item) -> None:
        client, callback = self.app.client, self.app.cluster_callback
        if client is None or callback is None or item.record is None:
            # No callback registered on this app: there is nothing to run, and
            # retrying would only walk the event to the DLQ. (Consume a
            # cluster's completion events with the app that has its callback.)
            log.debug("completion event %s: the app has no cluster callback", item.message.id)
            item.outcome = Outcome.SKIPPED
            return
        event_key = item.record.cluster_key
        local = self._callbacks_running.get(event_key) if event_key is not None else None
        if local is not None:
            # This worker's own settle step is running the callback right
            # now (the event was sent by it): its outcome decides.
            await local.wait()
        elif await client.on_cluster_complete(item.record, callback):
            item.outcome = Outcome.CALLBACK
            return
        if (await client.is_complete_batch([item.record]))[0]:
            # It already ran (or failed for good, recorded): the event is spent.
            item.outcome = Outcome.SKIPPED
        else:
            # Another process holds the callback's lease. Look again once the
            # lease can have expired, not before: retrying every visibility
            # timeout would walk the event to the DLQ while a crashed holder's
            # lease runs, and the callback would then never run.
            delay = max(self.visibility_timeout, CALLBACK_LEASE_SECONDS + 5)
            item.outcome, item.retry_delay = Outcome.RETRIED, delay

    async def _complete(self, queue: Queue, items: list[Item]) -> None:
        client = self.app.client
        done = [i.record for i in items if i.outcome is Outcome.SUCCEEDED and i.record is not None]
        if done and client is not None:
            await client.mark_complete_batch(done)
            callback = self.app.cluster_callback
            if callback is not None:
                for key in {r.cluster_key for r in done if r.cluster_key is not None}:
                    running = self._callbacks_running[key] = anyio.Event()
                    try:
                        await client.on_cluster_complete(key, callback)
                    except MsgclusterError as exc:
                        # Recorded on the cluster; its completion event retries it.
                        log.warning("cluster callback failed: %s", exc)
                    finally:
                        del self._callbacks_running[key]
                        running.set()
        for item in items:
            if item.copy_of is not None and item.copy_of.outcome not in ACKED:
                # Its first delivery is retried or dead-lettered: deleting the
                # copy would delete the message. It reappears after its timeout.
                self._settled(item, Outcome.SKIPPED)
        ack = [i for i in items if i.outcome in ACKED and not i.settled]
        await self._ack(queue, ack)
        retries = [
            (i, await self._retry_delay(queue, i))
            for i in items
            if i.outcome is Outcome.RETRIED and not i.settled
        ]
        await self._change_visibility(queue, retries, "reschedule")
        for item, _ in retries:
            self._settled(item, item.outcome or Outcome.RETRIED)
        for item in items:
            if item.outcome is Outcome.DEAD_LETTERED:
                await self._dead_letter(queue, item)

    async def _ack(self, queue: Queue, items: list[Item]) -> None:
        """Acknowledge what is done, in as few requests as the queue allows.

        Whatever happens to the ack, these messages are settled: their work
        is complete (and counted), so they are never made visible again. One
        whose ack failed reappears after its visibility timeout and is then
        skipped as complete.
        """
        if not items:
            return
        try:
            results = await queue.ack([i.message for i in items])
            errors = [result.error for result in results]
        except MsgclusterError as exc:
            errors = [exc] * len(items)
        for item, error in zip(items, errors, strict=True):
            if error is not None:
                log.warning("ack of %s failed (it is complete: skipped when redelivered): %s",
                            item.message.id, error)  # fmt: skip
            self._settled(item, item.outcome or Outcome.SUCCEEDED)

    async def _retry_delay(self, queue: Queue, item: Item) -> float:
        """Record a failed attempt; when to make the message visible again."""
        message = item.message
        last = queue.max_receives
        if last is not None and message.receive_count >= last and item.error is not None:
            # The queue's DLQ takes it on the next receive: record it now.
            await self._record_failure(item, final=True)
            item.outcome = Outcome.FAILED
        elif item.error is not None and not isinstance(item.error, Retry):
            await self._record_failure(item, final=False)
        delay = item.retry_delay
        if delay is None:
            delay = self._backoff(message.receive_count, cap=self.backoff_max)
        return min(delay, queue.capabilities.max_visibility_seconds)

    async def _change_visibility(
        self, queue: Queue, changes: list[tuple[Item, float]], what: str
    ) -> list[Item]:
        """Batched visibility changes (split and retried by the queue layer);
        returns the items that failed.

        A failed change is harmless: the message reappears when its current
        visibility ends, and a duplicate is skipped.
        """
        if not changes:
            return []
        try:
            results = await queue.change_visibility(
                [(item.message, seconds) for item, seconds in changes]
            )
            errors = [result.error for result in results]
        except MsgclusterError as exc:
            errors = [exc] * len(changes)
        failed: list[Item] = []
        for (item, _), error in zip(changes, errors, strict=True):
            if error is not None:
                log.warning("could not %s %s: %s", what, item.message.id, error)
                failed.append(item)
        return failed

    async def _dead_letter(self, queue: Queue, item: Item) -> None:
        await self._record_failure(item, final=True)
        reason = str(item.error) if item.error else "rejected"
        if await queue.dead_letter(item.message, reason):
            self._settled(item, Outcome.DEAD_LETTERED)
            return
        # No DLQ to move it to: never drop it; keep it out of the way a while.
        log.error("message %s rejected but %s has no DLQ; it is kept", item.message.id, queue.uri)
        await queue.nack(item.message, min(900.0, queue.capabilities.max_visibility_seconds / 2))
        self._settled(item, Outcome.FAILED)

    async def _record_failure(self, item: Item, *, final: bool) -> None:
        client = self.app.client
        if client is None or item.record is None or item.error is None:
            return
        if item.record.type is RecordType.CLUSTER:
            return
        error = item.error if isinstance(item.error, Exception) else Exception(str(item.error))
        try:
            # Not final: the queue's own receive count decides (None).
            await client.mark_failed(item.record, error, final=True if final else None)
        except MsgclusterError as exc:
            log.warning("could not record the failure of %s: %s", item.message.id, exc)

    async def _release(self, queue: Queue, items: list[Item]) -> None:
        # A failed release is harmless: it reappears after its visibility timeout.
        if not items:
            return
        try:
            await queue.change_visibility([(item.message, 0) for item in items])
        except Exception as exc:
            log.debug("release of %d message(s) failed: %s", len(items), exc)
        for item in items:
            self._settled(item, Outcome.RELEASED)

    def _settled(self, item: Item, outcome: Outcome) -> None:
        if item.settled:
            return
        item.settled = True
        item.outcome = outcome
        sent = item.message.sent_at
        lag = time.time() - sent if sent is not None else None
        self.stats.add(outcome, item.seconds, lag)
        self.metrics.message_done(outcome, item.seconds, lag)

    def _backoff(self, attempt: int, *, cap: float) -> float:
        """Full-jitter-ish exponential backoff: base * 2^(n-1), jittered 50-100%."""
        raw = min(cap, self.backoff_base * 2 ** max(0, attempt - 1))
        return float(raw * random.uniform(0.5, 1.0))

    # ------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        """Extend messages whose handler runs past a third of the timeout."""
        interval = max(0.5, self.visibility_timeout / 3)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            queue = self._queue
            if queue is None:
                continue
            due = [
                (item, self.visibility_timeout)
                for item, started, until in self._running.values()
                # Past max_extension: let it become visible; a duplicate is skipped.
                if until - now <= interval * 1.5 and now - started < self.max_extension
            ]
            failed = await self._change_visibility(queue, due, "extend")
            for item, _ in due:
                entry = self._running.get(id(item))
                if entry is not None and item not in failed:
                    self._running[id(item)] = (item, entry[1], now + self.visibility_timeout)

    async def _watch_signals(self) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
                    self.stop()
        except (NotImplementedError, ValueError):  # not the main thread / platform
            return
