"""Group commit: the consumers of one Client count a cluster's tasks together.

DynamoDB runs one transaction at a time on an item and cancels those that
overlap (``TransactionConflict``); every counting transaction of a cluster's
shard touches the shard item. Consumers that each sent their own transaction
met there, and more consumers meant more cancellations, not more throughput
(benchmarks/bench_scale, "before").

So while a counting transaction for a cluster is in flight, the tasks other
consumers of this Client finish wait, and go together in the next one (up to
:data:`GROUP_TASKS`; :func:`settle_tasks` splits at 100 items). Consumers of
one process then never conflict with each other, and a transaction counts up
to ~90 tasks instead of one receive batch. Each caller still returns only
once its own tasks are counted, with the outcome for its own tasks, and an
error of the shared transaction reaches every caller in it (their messages
are then not acknowledged, and come back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio

from ._closing import SettleResult
from ._fanin import settle_tasks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._clusterkeys import TaskRef
    from .._context import Context

__all__ = ["GROUP_TASKS", "GroupCommit", "settle_together"]

# Tasks per group: one transaction takes 100 items, tasks plus their shards.
GROUP_TASKS: Final = 90


class _Entry:
    __slots__ = ("done", "error", "refs", "result")

    def __init__(self, refs: list[TaskRef]) -> None:
        self.refs = refs
        self.done = False
        self.result: SettleResult | None = None
        self.error: Exception | None = None


class _Cluster:
    __slots__ = ("lock", "pending", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.pending: list[_Entry] = []
        self.users = 0


class GroupCommit:
    """One per Client (:class:`~msgcluster._context.Context`).

    Per cluster, one lock: its holder counts every task waiting at that
    moment (its own first) in one :func:`settle_tasks` call; the callers it
    took along find their outcome set when the lock reaches them.
    """

    def __init__(self) -> None:
        self._clusters: dict[str, _Cluster] = {}

    async def settle(self, ctx: Context, refs: Sequence[TaskRef]) -> SettleResult:
        """Count ``refs`` (tasks of any clusters) as COMPLETE, grouped per cluster."""
        by_cluster: dict[str, list[TaskRef]] = {}
        for ref in refs:
            by_cluster.setdefault(ref.cluster_id, []).append(ref)
        results: list[SettleResult] = []

        async def one(cid: str, mine: list[TaskRef]) -> None:
            results.append(await self._settle_one(ctx, cid, mine))

        if len(by_cluster) == 1:
            await one(*next(iter(by_cluster.items())))
            return results[0]
        async with anyio.create_task_group() as tg:
            for cid, mine in by_cluster.items():
                tg.start_soon(one, cid, mine)
        merged = SettleResult()
        for result in results:
            merged.counted |= result.counted
            merged.maybe_done |= result.maybe_done
            merged.flipped |= result.flipped
        return merged

    async def _settle_one(self, ctx: Context, cid: str, refs: list[TaskRef]) -> SettleResult:
        cluster = self._clusters.setdefault(cid, _Cluster())
        cluster.users += 1
        entry = _Entry(refs)
        cluster.pending.append(entry)
        try:
            async with cluster.lock:
                if not entry.done:
                    await self._count(ctx, cluster, entry)
        finally:
            if entry in cluster.pending:  # cancelled while waiting
                cluster.pending.remove(entry)
            cluster.users -= 1
            if cluster.users == 0:
                self._clusters.pop(cid, None)
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result

    async def _count(self, ctx: Context, cluster: _Cluster, mine: _Entry) -> None:
        cluster.pending.remove(mine)
        group, count = [mine], len(mine.refs)
        while cluster.pending and count + len(cluster.pending[0].refs) <= GROUP_TASKS:
            entry = cluster.pending.pop(0)
            group.append(entry)
            count += len(entry.refs)
        try:
            result = await settle_tasks(ctx, [ref for entry in group for ref in entry.refs])
        except Exception as exc:
            for entry in group:
                entry.error, entry.done = exc, True
            return
        except BaseException:
            # Cancelled: the others were not counted by this call; they count
            # themselves when the lock reaches them.
            cluster.pending[0:0] = group[1:]
            raise
        unclaimed = set(result.counted)  # a task in two entries: counted by the first
        for entry in group:
            own = SettleResult()
            own.counted = {ref.key for ref in entry.refs} & unclaimed
            unclaimed -= own.counted
            own.maybe_done, own.flipped = result.maybe_done, result.flipped
            entry.result, entry.done = own, True


async def settle_together(ctx: Context, refs: Sequence[TaskRef]) -> SettleResult:
    """:func:`settle_tasks` (COMPLETE) through the Client's group commit."""
    if ctx.group_commit is None:
        ctx.group_commit = GroupCommit()
    result: SettleResult = await ctx.group_commit.settle(ctx, refs)
    return result
