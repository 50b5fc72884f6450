"""The :class:`~msgcluster.Client`'s message-cluster methods: create, read,
list and update clusters, their tasks, cancel, redrive, dead-letter
reconciliation, globals and completion callbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _dead_letters
from ._clusterkeys import cluster_key
from ._schemas import S3Pointer, Status
from .clusters import _cluster_create, _clusters, _globals
from .clusters._callbacks import CallbackRegistry
from .read import _records

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable

    from ._context import Context
    from ._dead_letters import DeadLetterReport
    from ._schemas import MessageClusterRecord, MessageRecord, RecordKey, Statuses
    from .clusters._callbacks import ClusterCallback

__all__ = ["ClusterMethods"]


class ClusterMethods:
    """Mixed into :class:`~msgcluster.Client`, which provides ``ctx`` and the
    list of registered cluster callbacks."""

    if TYPE_CHECKING:
        _cluster_callbacks: list[Any]

        @property
        def ctx(self) -> Context: ...

    async def create_message_cluster(
        self,
        url: str,
        tasks: Iterable[Any] | AsyncIterable[Any],
        meta: Any = None,
        globals: Any = None,
        omit_globals: bool = False,
        *,
        cluster_id: str | None = None,
        tolerated_failures: int = 0,
        tolerated_failure_rate: float = 0.0,
        completion_queue_url: str | None = None,
        callback: str | None = None,
    ) -> RecordKey:
        """Fan ``tasks`` out to the queue at ``url`` as one tracked cluster.

        ``tasks`` may be any (async) iterable; it is streamed in blocks of
        1,000 (bounded memory). Each item is a task body, or an
        :class:`OutgoingMessage` for per-task SQS options. ``globals`` is
        stored in S3 for every task to read (``omit_globals=True``: none).
        The cluster completes as COMPLETE when at most
        ``max(tolerated_failures, tolerated_failure_rate * total)`` tasks
        failed, else ERROR. Its completion event goes to
        ``completion_queue_url`` (default: the task queue). ``callback`` names
        the completion callback to run (registered under that name with
        ``register_cluster_callback`` / ``App.on_cluster_complete``); default:
        the default callback.

        Returns the cluster key. If creation stops part-way,
        :class:`ClusterCreateError` names the cluster id: call again with
        ``cluster_id=`` and the same tasks to resume.
        """
        return await _cluster_create.create_message_cluster(
            self.ctx,
            url,
            tasks,
            meta,
            globals,
            omit_globals,
            cluster_id=cluster_id,
            tolerated_failures=tolerated_failures,
            tolerated_failure_rate=tolerated_failure_rate,
            completion_queue_url=completion_queue_url,
            callback=callback,
        )

    async def get_message_cluster(
        self, key: object, consistent_read: bool = False
    ) -> MessageClusterRecord:
        """The cluster record with live counts (``total``, ``completed``, ``failed``,
        ``in_progress``). ``key``: a cluster key, a task/event record, or an id."""
        return await _clusters.get_message_cluster(self.ctx, key, consistent_read=consistent_read)

    def cluster_tasks(
        self,
        key: object,
        statuses: Statuses | None = None,
        *,
        consistent_read: bool = False,
        page_size: int = 500,
    ) -> AsyncIterator[MessageRecord]:
        """Async iterator over the cluster's task records, optionally only those
        of some ``statuses``: one status (``"error"``, ``Status.ERROR``,
        ``StatusCode.ERROR``) or an iterable of them."""
        return _clusters.iter_cluster_tasks(
            self.ctx, key, statuses, consistent_read=consistent_read, page_size=page_size
        )

    def list_clusters(
        self,
        *,
        status: Statuses | None = None,
        newest_first: bool = True,
        started_after: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[MessageClusterRecord]:
        """Clusters by start time (newest first by default), optionally of one
        ``status`` (or any of an iterable of them; ``CANCELLED`` or
        ``StatusCode.STOPPED`` for cancelled clusters), from the table's sparse
        cluster index: it reads cluster records only. Tables provisioned before
        the index get it from ``provision()``; clusters created before that are
        not listed."""
        return _clusters.list_clusters(
            self.ctx,
            status=status,
            newest_first=newest_first,
            started_after=started_after,
            page_size=page_size,
        )

    def completed_tasks(
        self, key: object, *, consistent_read: bool = False
    ) -> AsyncIterator[MessageRecord]:
        return self.cluster_tasks(key, [Status.COMPLETE], consistent_read=consistent_read)

    def incomplete_tasks(
        self, key: object, *, consistent_read: bool = False
    ) -> AsyncIterator[MessageRecord]:
        return self.cluster_tasks(
            key, [Status.PRE_FLIGHT, Status.IN_PROGRESS], consistent_read=consistent_read
        )

    def failed_tasks(
        self, key: object, *, consistent_read: bool = False
    ) -> AsyncIterator[MessageRecord]:
        return self.cluster_tasks(key, [Status.ERROR], consistent_read=consistent_read)

    async def update_message_cluster(
        self, key: object, *, meta: Any = _clusters._UNSET
    ) -> MessageClusterRecord:
        """Replace the cluster's ``meta``."""
        return await _clusters.update_message_cluster(self.ctx, key, meta=meta)

    async def cancel_message_cluster(self, key: object) -> MessageClusterRecord:
        """Stop a running cluster (status code 500): consumers skip and acknowledge
        its remaining tasks; no completion callback runs. Idempotent."""
        return await _clusters.cancel_message_cluster(self.ctx, key)

    cancel_cluster = cancel_message_cluster

    async def redrive_failed(self, key: object) -> int:
        """Send the cluster's failed tasks again (only those); returns how many."""
        return await _clusters.redrive_failed(self.ctx, key)

    async def reconcile_dead_letters(
        self, dlq_url: str, *, visibility_timeout: int = 300, limit: int | None = None
    ) -> DeadLetterReport:
        """Record every tracked message in a dead-letter queue as failed, if it is
        not final yet: one whose consumer died on its last receive was moved
        there by SQS unrecorded (a cluster task uncounted: its cluster would
        never complete). Nothing is deleted; safe to run again. ``dlq_url`` is
        the DLQ's URL or URI (a ``dynamodb://`` DLQ works too). See
        ``docs/clusters.md``."""
        return await _dead_letters.reconcile_dead_letters(
            self.ctx, dlq_url, visibility_timeout=visibility_timeout, limit=limit
        )

    def _globals_pointer(self, key: object) -> Any:
        """The globals of a record that names them, else of the cluster ``key`` names."""
        if isinstance(key, _records.ParsedRecord) and key.globals_pointer is not None:
            return key.globals_pointer
        cid = _clusters.cluster_id_from(key)
        bucket = self.ctx.settings.require_bucket("cluster globals")
        return S3Pointer(bucket=bucket, key=_globals.globals_key(cid))

    async def get_message_cluster_globals(self, key: object, type: Any = Any) -> Any:
        """The cluster's globals from S3 (revalidated per-process cache), decoded as ``type``."""
        return await _globals.get_globals(self.ctx, self._globals_pointer(key), type)

    async def update_message_cluster_globals(
        self, key: object, value_or_fn: Any, type: Any = Any, *, max_attempts: int = 64
    ) -> Any:
        """Replace the globals with a value, or apply ``fn(current) -> new`` (sync or
        async) with a compare-and-swap on the S3 ETag: concurrent updaters never lose
        an update. Returns the new value."""
        pointer = self._globals_pointer(key)
        return await _globals.update_globals(
            self.ctx, pointer, value_or_fn, type, max_attempts=max_attempts
        )

    update_cluster_globals = update_message_cluster_globals

    async def on_cluster_complete(
        self,
        key: object,
        callback: ClusterCallback,
        *,
        lease_seconds: int = 300,
        max_attempts: int = 5,
    ) -> bool:
        """Run ``callback(record, get_globals)`` once the cluster is final; exactly once
        across all processes. Call it after ``mark_complete`` (cheap when the cluster
        is still running) and for a cluster completion event. True if it ran here;
        a callback that raises is recorded, retried, and re-raised as
        :class:`CallbackError`."""
        return await _clusters.on_cluster_complete(
            self.ctx, key, callback, lease_seconds=lease_seconds, max_attempts=max_attempts
        )

    def register_cluster_callback(
        self, callback: ClusterCallback, *, name: str | None = None
    ) -> ClusterCallback:
        """Register a completion callback this Client runs for completion events it
        consumes (``safe_process_batch``, workers): the default one, or the one
        clusters created with ``callback=name`` run. Usable as a decorator."""
        if not self._cluster_callbacks:
            self._cluster_callbacks.append(CallbackRegistry())
        registry: CallbackRegistry = self._cluster_callbacks[0]
        registry.register(callback, name)
        return callback

    @staticmethod
    def cluster_key(cluster_id: str) -> RecordKey:
        """The key of the cluster record with this id."""
        return cluster_key(cluster_id)
