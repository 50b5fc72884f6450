"""The worker runtime: receivers feed handler slots; settle in batches.

Shape (saq / faststream style, on anyio):

* ``receivers`` long-polling loops each take up to 10 messages, but only as
  many as there are free *slots* (``concurrency + prefetch``): memory and
  invisible-but-idle messages are bounded.
* A receive batch is settled as a unit: tracked messages are checked with
  one ``is_complete_batch`` (duplicates are acked without running), handlers
  run under a ``concurrency`` limiter, then the batch's outcomes are settled
  together (completion, acks, retries, the DLQ: see :mod:`._settle`).
  The same message twice in one batch runs once.
* A heartbeat extends the visibility of messages whose handler still runs
  (up to ``max_extension`` in all).
* Shutdown (``stop()``, SIGTERM/SIGINT): stop receiving, release messages
  whose handler has not started, let running handlers finish within
  ``grace_seconds``, then cancel them (their messages are released), and
  settle what finished. ``burst=True`` stops when a receive comes back empty
  with nothing in flight.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._errors import QueueClosedError
from .._schemas import RecordKey, RecordType
from ..clusters._callbacks import DEFAULT_LEASE_SECONDS as CALLBACK_LEASE_SECONDS
from ..queues import Queue, ReceivedMessage, open_queue
from ..queues._portable import wrap
from ..queues._uri import shown
from ._batch import Item, read_batch
from ._flow import Ack, Reject, Retry
from ._metrics import LoggingMetrics, Outcome, WorkerMetrics, WorkerStats
from ._options import check_options, check_worker_args, queue_shown
from ._policy import DEFAULT_POLICY, HandlerPolicy, time_limit
from ._settle import SettleSteps
from ._tracing import destination_of, end_span, process_span

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._app import App

__all__ = ["Worker"]

log = logging.getLogger("msgcluster.worker")
T = TypeVar("T")


class Worker(SettleSteps):
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
        progress_seconds: float = 60.0,
        burst: bool = False,
        handle_signals: bool = True,
        metrics: WorkerMetrics | None = None,
        queue_options: dict[str, Any] | None = None,
    ) -> None:
        self._queue_options = check_worker_args(
            app,
            queue,
            burst=burst,
            handle_signals=handle_signals,
            metrics=metrics,
            queue_options=queue_options,
        )
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
            progress_seconds=progress_seconds,
        )
        self.app = app
        self._queue_arg = queue
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
        # A progress line every this many seconds (0: none; the runner logs its own).
        self.progress_seconds = progress_seconds
        self.handle_signals = handle_signals
        self.metrics: WorkerMetrics = LoggingMetrics() if metrics is None else metrics
        self._init_state()

    def _init_state(self) -> None:
        """The state the receivers, handlers and settle steps share: slots, counts, events."""
        self.stats = WorkerStats()
        self._stopping = anyio.Event()
        self._slot_count = self.concurrency + self.prefetch
        self._slots = anyio.Semaphore(self._slot_count)
        self._reserving = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(self.concurrency)
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
        # SystemExit/KeyboardInterrupt from a handler or callback: run() stops
        # at once (in-flight messages released) and re-raises it as itself.
        self._fatal: BaseException | None = None
        self._service: anyio.CancelScope | None = None

    # ------------------------------------------------------------------ API

    def __repr__(self) -> str:
        queue = queue_shown(self._queue_arg)
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
            client = self.app.client
            uri = self._queue_arg
            if (
                client is not None
                and client.is_open
                and not self._queue_options
                and not uri.lower().startswith("memory://")
            ):
                # The App's Client: its endpoint, region and credentials, and its
                # open queue (the Client closes it).
                return await self._run(await client.ctx.queue(uri))
            async with open_queue(uri, **self._queue_options) as queue:
                return await self._run(queue)
        return await self._run(wrap(self._queue_arg))

    async def _run(self, queue: Queue) -> WorkerStats:
        self._queue = queue
        self._destination = destination_of(queue)
        self.stats = WorkerStats()
        async with anyio.create_task_group() as service:
            self._service = service.cancel_scope
            if self.handle_signals:
                service.start_soon(self._watch_signals)
            service.start_soon(self._heartbeat)
            if self.progress_seconds:
                service.start_soon(self._progress)
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
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal
        return self.stats

    def _abort(self, exc: BaseException) -> None:
        """A handler raised SystemExit, KeyboardInterrupt...: keep it for run()
        (never let it escape a task: anyio/asyncio would turn it into an
        exception group or a bare cancellation) and stop now."""
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            raise exc
        self._fatal = self._fatal or exc
        self.stop()
        if self._service is not None:
            self._service.cancel()

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
        except BaseException as exc:  # SystemExit from a cluster callback...
            self._abort(exc)
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
                if item.outcome is None:  # aborted (see _abort): released
                    return
                failed = item.outcome is Outcome.DEAD_LETTERED or (
                    item.outcome is Outcome.RETRIED and not isinstance(item.error, Retry)
                )
                end_span(span, item.outcome.value, item.error, failed)
        finally:
            self._limiter.release()

    async def _run_handler(self, item: Item) -> None:
        event = item.record is not None and item.record.type is RecordType.CLUSTER
        policy = DEFAULT_POLICY if event else self.app.policy_for(item.body)
        item.visibility = policy.visibility or self.visibility_timeout
        if item.visibility != self.visibility_timeout and self._queue is not None:
            # This handler's messages stay invisible for its own time.
            await self._change_visibility(self._queue, [(item, item.visibility)], "extend")
        started = time.monotonic()
        self._running[id(item)] = (item, started, started + item.visibility)
        try:
            if event:
                await self._run_completion_event(item)
            else:
                with time_limit(policy.timeout):
                    await self.app.dispatch(item.body, item.ctx)
                item.outcome = Outcome.SUCCEEDED
        except Ack:
            item.outcome = Outcome.SUCCEEDED
        except Retry as exc:
            item.outcome, item.retry_delay, item.error = Outcome.RETRIED, exc.delay, exc
        except Reject as exc:
            item.outcome, item.error = Outcome.DEAD_LETTERED, exc
        except Exception as exc:
            self._failed(item, policy, exc)
        except BaseException as exc:  # released below (outcome None)
            self._abort(exc)
        finally:
            item.seconds = time.monotonic() - started
            self._running.pop(id(item), None)

    def _failed(self, item: Item, policy: HandlerPolicy, exc: Exception) -> None:
        """A handler raised (or ran out of time): retry per its policy, or give up."""
        count = item.message.receive_count
        if policy.exhausted(count):
            log.warning(
                "message %s dead-lettered: attempt %d of %d failed: %r",
                item.message.id, count, (policy.retries or 0) + 1, exc,
            )  # fmt: skip
            item.outcome, item.error = Outcome.DEAD_LETTERED, exc
            return
        item.outcome, item.error = Outcome.RETRIED, exc
        item.retry_delay = policy.retry_delay(count, self.backoff_max)
        log.warning(
            "message %s failed (attempt %d), retried%s: %r",
            item.message.id, count,
            "" if item.retry_delay is None else f" in {item.retry_delay:.1f} s", exc,
        )  # fmt: skip

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

    # ------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        """Extend messages whose handler runs past a third of its timeout."""
        shortest = min(
            [self.visibility_timeout]
            + [p.visibility for p in self.app.policies() if p.visibility is not None]
        )
        interval = max(0.5, shortest / 3)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            queue = self._queue
            if queue is None:
                continue
            due = [
                (item, item.visibility)
                for item, started, until in self._running.values()
                # Past max_extension: let it become visible; a duplicate is skipped.
                if until - now <= interval * 1.5 and now - started < self.max_extension
            ]
            failed = await self._change_visibility(queue, due, "extend")
            for item, seconds in due:
                entry = self._running.get(id(item))
                if entry is not None and item not in failed:
                    self._running[id(item)] = (item, entry[1], now + seconds)

    async def _progress(self) -> None:
        """A progress line now and then: counts by outcome and the rate."""
        while True:
            await anyio.sleep(self.progress_seconds)
            log.info(
                "worker %s: %s", shown(self._queue.uri) if self._queue else "", self.stats.summary()
            )

    async def _watch_signals(self) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
                    self.stop()
        except (NotImplementedError, ValueError):  # not the main thread / platform
            return
