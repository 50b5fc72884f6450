"""Message clusters on moto: creation, consumption, fan-in, callbacks, globals."""

from __future__ import annotations

from typing import Any

import msgspec
from clusterkit import Stats, cluster_done, consume

import msgcluster
from msgcluster import CallbackStatus, ParsedRecord, Status


class Job(msgspec.Struct):
    n: int


class Totals(msgspec.Struct):
    seen: int = 0


async def test_small_cluster_end_to_end(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.create_message_cluster(
        queue_url, (Job(i) for i in range(25)), meta={"name": "small"}, globals=Totals()
    )
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.total, record.completed, record.sealed) == (
        Status.IN_PROGRESS,
        25,
        0,
        True,
    )
    seen: list[int] = []
    results: list[Any] = []

    async def handler(rec: ParsedRecord[Any]) -> None:
        seen.append(rec.task["n"])
        assert (await rec.get_globals(Totals)) == Totals()

    async def callback(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        results.append((cluster.completed, cluster.failed, await get_globals(Totals)))

    stats = Stats()
    await consume(
        mc, queue_url, handler, callback=callback, until=lambda: cluster_done(mc, key), stats=stats
    )
    assert sorted(seen) == list(range(25))
    assert results == [(25, 0, Totals())]
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed, record.callback_status) == (
        Status.COMPLETE,
        25,
        CallbackStatus.DONE,
    )
    assert [t.status async for t in mc.incomplete_tasks(key)] == []
    assert len([t async for t in mc.completed_tasks(key)]) == 25
