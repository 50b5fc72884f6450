"""Message clusters on moto: creation, consumption, fan-in, callbacks, globals."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from botocore.exceptions import ClientError
from clusterkit import Stats, cluster_done, consume
from conftest import client_for

import msgcluster
from msgcluster import CallbackStatus, ParsedRecord, Status
from msgcluster.local import LocalAWS


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


# --------------------------------------------------------------------------- scale and concurrency


async def test_2000_tasks_4_consumers_every_message_twice(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """Creation runs while 4 consumers (separate Clients) consume; every message is
    delivered twice. Counts are exact and the callback runs exactly once."""
    n = 2_000
    handled: list[int] = []
    calls: list[tuple[int, int]] = []
    key_box: list[msgcluster.RecordKey] = []

    async def handler(rec: ParsedRecord[Any]) -> None:
        handled.append(rec.task["n"])

    async def callback(cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        calls.append((cluster.completed, cluster.failed))

    async def until() -> bool:
        return bool(key_box) and await cluster_done(mc, key_box[0])

    async def consumer() -> None:
        async with client_for(local_aws, names) as client:
            await consume(
                client, queue_url, handler, callback=callback, until=until, duplicate=True
            )

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(consumer)
        key_box.append(
            await mc.create_message_cluster(
                queue_url, ({"n": i} for i in range(n)), cluster_id="big"
            )
        )
    record = await mc.get_message_cluster(key_box[0], consistent_read=True)
    assert (record.status, record.total, record.completed, record.failed) == (
        Status.COMPLETE,
        n,
        n,
        0,
    )
    assert calls == [(n, 0)]
    assert set(handled) == set(range(n))
    assert record.callback_status is CallbackStatus.DONE
    assert [t async for t in mc.incomplete_tasks(key_box[0])] == []


async def test_cluster_record_stays_small_at_10000_tasks(
    mc: msgcluster.Client, queue_url: str, names: dict[str, str]
) -> None:
    key = await mc.create_message_cluster(
        queue_url, range(10_000), meta={"job": "resize"}, globals={"size": 320}
    )
    item = (
        await mc.dynamodb.get_item(
            TableName=names["table"], Key={"pk": {"S": key.pk}, "rk": {"S": key.rk}}
        )
    )["Item"]
    size = len(msgspec.json.encode(item))  # attribute names + typed values, as JSON
    assert size < 4_096, size
    record = await mc.get_message_cluster(key)
    assert (record.total, record.shards, record.in_progress) == (10_000, 10, 10_000)


async def test_local_server_transactions_stay_atomic(
    mc: msgcluster.Client, names: dict[str, str]
) -> None:
    """The local server's TransactWriteItems patch (no whole-table copies) keeps
    all-or-nothing: a cancelled transaction leaves every item as it was."""
    table = names["table"]
    key = {"pk": {"S": "SQSMessage$a"}, "rk": {"S": "SQSMessage$x"}}
    new = {"pk": {"S": "SQSMessage$b"}, "rk": {"S": "SQSMessage$x"}}
    other = {"pk": {"S": "SQSMessage$c"}, "rk": {"S": "SQSMessage$x"}}
    await mc.dynamodb.put_item(TableName=table, Item=key | {"n": {"N": "1"}})
    await mc.dynamodb.put_item(TableName=table, Item=other | {"n": {"N": "1"}})
    items = [
        {"Update": {"TableName": table, "Key": key, "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Put": {"TableName": table, "Item": new}},
        {"ConditionCheck": {"TableName": table, "Key": other, "ConditionExpression": "n = :five",
                            "ExpressionAttributeValues": {":five": {"N": "5"}}}},
    ]  # fmt: skip
    with pytest.raises(ClientError, match="TransactionCanceled"):
        await mc.dynamodb.transact_write_items(TransactItems=items)
    assert (await mc.dynamodb.get_item(TableName=table, Key=key))["Item"]["n"] == {"N": "1"}
    assert "Item" not in await mc.dynamodb.get_item(TableName=table, Key=new)


async def test_list_clusters_reads_the_cluster_index(
    mc: msgcluster.Client, queue_url: str, local_aws: LocalAWS, names: dict[str, str]
) -> None:
    keys = []
    for n in range(3):
        keys.append(await mc.create_message_cluster(queue_url, [{"n": n}], omit_globals=True))
        await anyio.sleep(0.01)  # distinct start times (milliseconds)
    await mc.cancel_message_cluster(keys[1])
    listed = [c.key async for c in mc.list_clusters(page_size=2)]  # two pages
    assert listed == keys[::-1]
    oldest_first = [c.key async for c in mc.list_clusters(newest_first=False)]
    assert oldest_first == keys
    running = [c.key async for c in mc.list_clusters(status=Status.IN_PROGRESS)]
    assert running == [keys[2], keys[0]]
    # Only cluster records are in the index: task and shard records are not read.
    indexed = await mc.dynamodb.query(
        TableName=names["table"],
        IndexName="clusters-by-start",
        KeyConditionExpression="clusterIndex = :k",
        ExpressionAttributeValues={":k": {"S": "cluster"}},
    )
    assert sorted(item["rk"]["S"] for item in indexed["Items"]) == ["SQSMessage$cluster"] * 3

    # A table made before the index gets it from provision().
    old = f"{names['table']}-old"
    await mc.dynamodb.create_table(
        TableName=old,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "rk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "rk", "KeyType": "RANGE"},
        ],
    )
    async with client_for(local_aws, {**names, "table": old}) as upgraded:
        await upgraded.provision()
        key = await upgraded.create_message_cluster(queue_url, [{"n": 1}], omit_globals=True)
        assert [c.key async for c in upgraded.list_clusters()] == [key]


async def test_an_unknown_status_is_a_typed_error(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.create_message_cluster(queue_url, [{"n": 1}], omit_globals=True)
    with pytest.raises(msgcluster.ValidationError, match="unknown status 'DONE'"):
        [c async for c in mc.list_clusters(status="DONE")]
    with pytest.raises(msgcluster.ValidationError, match="valid: PRE FLIGHT"):
        [t async for t in mc.cluster_tasks(key, ["finished"])]
