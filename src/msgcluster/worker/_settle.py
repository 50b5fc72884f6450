"""The worker's settle steps: what becomes of a batch's messages once their
handlers ran (mixed into :class:`~msgcluster.worker.Worker`).

* Successful tracked messages are completed/counted with one
  ``mark_complete_batch``, then acked in one call. Nothing is acked before
  every write it causes has been applied, and work that was completed is
  never made visible again, even when its ack fails. If the completion
  itself fails (DynamoDB throttled past its retries), those messages are
  retried after a backoff, like failures; the rest of the batch settles.
* Failure: the message becomes visible again after a jittered exponential
  backoff; on its last receive a tracked message is recorded as failed (a
  cluster task counts as failed) and the queue's DLQ takes it. ``Reject`` and
  poison (an undecodable body, a mis-keyed envelope) go to the DLQ at once,
  alone, a tracked one recorded as failed.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import anyio

from .._errors import MsgclusterError
from .._schemas import RecordType
from ._batch import ACKED
from ._flow import Retry
from ._metrics import Outcome

if TYPE_CHECKING:
    from .._schemas import RecordKey
    from ..queues import Queue
    from ._app import App
    from ._batch import Item
    from ._metrics import WorkerMetrics, WorkerStats

__all__ = ["SettleSteps"]

log = logging.getLogger("msgcluster.worker")


class SettleSteps:
    """The settle steps of :class:`~msgcluster.worker.Worker`, which sets
    these attributes."""

    app: App
    stats: WorkerStats
    metrics: WorkerMetrics
    backoff_base: float
    backoff_max: float
    _callbacks_running: dict[RecordKey, anyio.Event]

    async def _complete(self, queue: Queue, items: list[Item]) -> None:
        await self._record_done(items)
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

    async def _record_done(self, items: list[Item]) -> None:
        """Complete (count) the batch's handled tracked messages; run their
        clusters' callbacks. If that fails, none of them is acked: each is
        retried after a backoff, like a failure (a duplicate is skipped where
        its completion did apply), and the batch's other messages settle as
        they would have."""
        client = self.app.client
        done = [i for i in items if i.outcome is Outcome.SUCCEEDED and i.record is not None]
        records = [i.record for i in done if i.record is not None]
        if not records or client is None:
            return
        try:
            await client.mark_complete_batch(records)
        except MsgclusterError as exc:
            log.warning("could not complete %d message(s), retried: %s", len(done), exc)
            for item in done:
                item.outcome, item.error = Outcome.RETRIED, exc
            return
        callback = self.app.cluster_callback
        if callback is None:
            return
        for key in {r.cluster_key for r in records if r.cluster_key is not None}:
            local = self._callbacks_running.get(key)
            if local is not None:
                # Another batch of this worker runs it now: its outcome decides.
                await local.wait()
                continue
            running = self._callbacks_running[key] = anyio.Event()
            try:
                await client.on_cluster_complete(key, callback)
            except MsgclusterError as exc:
                # Recorded on the cluster; its completion event retries it.
                log.warning("cluster callback failed: %s", exc)
            finally:
                self._callbacks_running.pop(key, None)
                running.set()

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
        if outcome in (Outcome.FAILED, Outcome.DEAD_LETTERED):
            reason = f"{type(item.error).__name__}: {item.error}" if item.error else "rejected"
            log.warning(
                "message %s %s after %d receive(s), %.3f s: %s",
                item.message.id, outcome.value, item.message.receive_count, item.seconds,
                reason[:300],
            )  # fmt: skip
        else:
            log.debug("message %s %s in %.3f s", item.message.id, outcome.value, item.seconds)

    def _backoff(self, attempt: int, *, cap: float) -> float:
        """Full-jitter-ish exponential backoff: base * 2^(n-1), jittered 50-100%."""
        raw = min(cap, self.backoff_base * 2 ** max(0, attempt - 1))
        return float(raw * random.uniform(0.5, 1.0))
