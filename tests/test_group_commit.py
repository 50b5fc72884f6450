"""Group commit: concurrent consumers of one Client count a cluster's tasks
in shared requests (transactions in layout 1, bucket writes in layout 2),
each call still reporting exactly its own tasks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from clusterkit import counting_request
from conftest import receive_all
from faultproxy import FaultProxy, error

import msgcluster

pytestmark = pytest.mark.usefixtures("cluster_layout")


async def _received_tasks(
    mc: msgcluster.Client, url: str, n: int
) -> tuple[msgcluster.RecordKey, list[dict[str, Any]]]:
    key = await mc.create_message_cluster(url, [{"n": i} for i in range(n)])
    return key, await receive_all(mc, url, n)


async def test_concurrent_batches_share_transactions(
    pc: msgcluster.Client, proxy: FaultProxy, queue_url: str
) -> None:
    key, messages = await _received_tasks(pc, queue_url, 60)
    batches = [messages[i : i + 3] for i in range(0, 60, 3)]  # 20 consumers, 3 tasks each
    counting = proxy.add_rule(counting_request, lambda request, forward: forward(request))
    results: list[list[bool]] = [[] for _ in batches]

    async def consume(index: int) -> None:
        results[index] = await pc.mark_complete_batch(batches[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(batches)):
            tg.start_soon(consume, index)
    assert all(all(result) for result in results)
    assert 0 < counting.hits < len(batches) / 2, counting.hits  # grouped, not one per batch
    record = await pc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed) == (msgcluster.Status.COMPLETE, 60)


async def test_a_task_in_two_concurrent_calls_is_counted_for_one(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """The same delivery handed to two consumers at once: True for one call only."""
    key, messages = await _received_tasks(mc, queue_url, 4)
    results: list[list[bool]] = []

    async def consume() -> None:
        results.append(await mc.mark_complete_batch(messages))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(consume)
    for column in zip(*results, strict=True):
        assert sum(column) == 1
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert record.completed == 4


async def test_an_error_reaches_every_caller_in_the_group(
    pc: msgcluster.Client, proxy: FaultProxy, queue_url: str
) -> None:
    key, messages = await _received_tasks(pc, queue_url, 20)
    rule = proxy.add_rule(counting_request, error(400, "ValidationException"))
    outcomes: list[object] = []

    async def consume(batch: list[dict[str, Any]]) -> None:
        try:
            outcomes.append(await pc.mark_complete_batch(batch))
        except msgcluster.MsgclusterError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for start in range(0, 20, 2):
            tg.start_soon(consume, messages[start : start + 2])
    failed = [o for o in outcomes if isinstance(o, msgcluster.MsgclusterError)]
    assert len(outcomes) == 10
    assert failed  # every caller of a refused transaction saw its error
    # Their messages were not acknowledged: redelivered, they count now, once.
    proxy.remove_rule(rule)
    again = await pc.mark_complete_batch(messages)
    counted_before = sum(sum(o) for o in outcomes if isinstance(o, list))
    assert counted_before + sum(again) == 20
    record = await pc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed) == (msgcluster.Status.COMPLETE, 20)
