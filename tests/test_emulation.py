"""The AWS-behaviour emulation (msgcluster.local.Emulation) at small sizes:
conflicts and throttles as AWS produces them, sampled SQS order with
duplicates, and a cluster that still ends exact, with one callback, under 64
concurrent consumers and duplicate deliveries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

import msgcluster
from msgcluster import App, Worker
from msgcluster.local import Emulation, LocalAWS

EMULATION = Emulation(
    transaction_hold=0.2, scale=0.005, latency=0.0, sqs_pool=50, duplicate_rate=0.2, seed=7
)


@pytest.fixture(scope="module")
def emulated() -> Iterator[LocalAWS]:
    with LocalAWS(emulation=EMULATION) as aws:
        yield aws


@pytest.fixture
async def raw(emulated: LocalAWS) -> AsyncIterator[dict[str, Any]]:
    """Plain aiobotocore clients with retries off: every refusal is seen."""
    session = AioSession()
    config = AioConfig(retries={"total_max_attempts": 1})
    kwargs = {**emulated.client_kwargs(), "config": config}
    async with (
        session.create_client("dynamodb", **kwargs) as ddb,
        session.create_client("sqs", **kwargs) as sqs,
    ):
        table = f"t-{uuid.uuid4().hex[:8]}"
        await ddb.create_table(
            TableName=table,
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
        yield {"ddb": ddb, "sqs": sqs, "table": table}


def _item(pk: str, rk: str = "r") -> dict[str, Any]:
    return {"pk": {"S": pk}, "rk": {"S": rk}}


async def test_a_transaction_holds_its_items(raw: dict[str, Any]) -> None:
    ddb, table = raw["ddb"], raw["table"]

    def update(pk: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": table,
                "Key": _item(pk),
                "UpdateExpression": "ADD n :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        }

    errors: list[ClientError] = []

    async def second() -> None:
        await anyio.sleep(0.05)  # while the first holds "a"
        try:
            await ddb.transact_write_items(TransactItems=[update("b"), update("a")])
        except ClientError as exc:
            errors.append(exc)
        try:
            await ddb.put_item(TableName=table, Item=_item("a"))
        except ClientError as exc:
            errors.append(exc)

    async def first() -> None:
        await ddb.transact_write_items(TransactItems=[update("a")])

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    cancelled, conflict = errors
    assert cancelled.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in cancelled.response["CancellationReasons"]] == [
        "None",
        "TransactionConflict",
    ]
    assert conflict.response["Error"]["Code"] == "TransactionConflictException"
    # Held no more: both go through now.
    await ddb.put_item(TableName=table, Item=_item("a"))
    await ddb.transact_write_items(TransactItems=[update("b")])


async def test_a_partition_has_its_own_throughput(raw: dict[str, Any], emulated: LocalAWS) -> None:
    """scale=0.005: 5 WCU/s per partition key. One key is throttled; spread
    over keys, the same writes are not."""
    ddb, table = raw["ddb"], raw["table"]
    codes: list[str] = []
    for n in range(12):
        try:
            await ddb.put_item(TableName=table, Item=_item("hot", str(n)))
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    throttled = len(codes)
    assert throttled >= 5
    assert set(codes) == {"ProvisionedThroughputExceededException"}
    for n in range(12):
        await ddb.put_item(TableName=table, Item=_item(f"spread-{n}"))
    stats = await anyio.to_thread.run_sync(emulated.emulation_stats)
    assert stats["counts"]["throttled.write"] >= throttled
    assert f"{table}|hot" in dict(stats["hottest_partitions"])


async def test_sqs_order_is_sampled_with_duplicates(raw: dict[str, Any]) -> None:
    sqs = raw["sqs"]
    url = (await sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
    for start in range(0, 60, 10):
        entries = [{"Id": str(i), "MessageBody": str(start + i)} for i in range(10)]
        await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    seen: list[int] = []
    for _ in range(40):
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        )
        messages = response.get("Messages", [])
        if not messages and len(set(seen)) == 60:
            break
        seen += [int(m["Body"]) for m in messages]
    assert set(seen) == set(range(60))  # nothing lost
    assert seen[:60] != sorted(seen[:60])  # not send order
    assert len(seen) > 60  # some delivered twice


@pytest.fixture(scope="module")
def contended() -> Iterator[LocalAWS]:
    """AWS's own partition throughput (scale 1), 25 ms transactions, 10% duplicates."""
    emulation = Emulation(transaction_hold=0.025, scale=1.0, duplicate_rate=0.1, seed=3)
    with LocalAWS(emulation=emulation) as aws:
        yield aws


async def test_a_cluster_is_exact_under_contention_and_duplicates(contended: LocalAWS) -> None:
    """64 concurrent consumers (16 workers x 4), duplicate deliveries, held
    transactions: every task counted once and the callback run once."""
    names = uuid.uuid4().hex[:8]
    settings = {**contended.settings(), "table": f"t-{names}", "bucket": f"b-{names}"}
    async with msgcluster.Client(**settings) as mc:
        queue = f"q-{names}"
        url = (await mc.provision([queue], max_receive_count=50, visibility_timeout=5))[queue]
        app = App(mc)
        handled: list[int] = []
        callbacks: list[Any] = []
        called = anyio.Event()

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            await anyio.sleep(0.005)
            handled.append(body["n"])

        @app.on_cluster_complete
        async def done(record: Any, get_globals: Any) -> None:
            callbacks.append(record.key)
            called.set()

        key = await mc.create_message_cluster(url, [{"n": n} for n in range(200)])
        options: dict[str, Any] = {
            "concurrency": 4,
            "wait_seconds": 0.5,
            "visibility_timeout": 5,
            "backoff_base": 0.05,
            "handle_signals": False,
            "queue_options": {"client": mc.sqs},
        }
        workers = [Worker(app, f"sqs://{queue}", **options) for _ in range(16)]
        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.run)
                await called.wait()
                for worker in workers:
                    worker.stop()
        record = await mc.get_message_cluster(key, consistent_read=True)
        assert (record.status, record.completed, record.failed) == (
            msgcluster.Status.COMPLETE,
            200,
            0,
        )
        assert callbacks == [key]
        assert set(handled) == set(range(200))
    stats = await anyio.to_thread.run_sync(contended.emulation_stats)
    assert stats["counts"]["sqs.duplicates"] > 0
    assert stats["counts"]["transactions"] > 0
