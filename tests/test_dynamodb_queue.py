"""dynamodb:// beyond the shared conformance suite: one test per known flaw of
DynamoMQ (the reference design, see docs/dynamodb-queue.md), compression,
several queues in one table, the DLQ and redrive, admin operations,
provisioning, and consumers in separate processes.

Everything runs on the embedded moto server (``local_aws``); faults moto
never produces come from :class:`faultproxy.FaultProxy`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from faultproxy import FaultProxy, drop_response, match_target, reset, respond, throttle

import msgcluster
from msgcluster.local import LocalAWS
from msgcluster.queues import OutgoingMessage, Queue, open_queue
from msgcluster.queues._admin import QueueAdmin
from msgcluster.queues._dynamodb import DynamoQueue, provision_dynamodb_queue_table
from msgcluster.queues._dynamodb_keys import INDEX_NAME, group_hash, shard_of, time_key
from msgcluster.worker import App, Outcome, Worker

SCRIPT = Path(__file__).parent / "dynamodb_consumer_process.py"


class Job(msgspec.Struct):
    n: int


@pytest.fixture
async def ddb(local_aws: LocalAWS) -> AsyncIterator[Any]:
    async with AioSession().create_client("dynamodb", **local_aws.client_kwargs()) as client:
        yield client


@pytest.fixture
async def table(ddb: Any, names: dict[str, str]) -> str:
    await provision_dynamodb_queue_table(ddb, names["table"])
    return names["table"]


def open_dq(table: str, ddb: Any, **params: Any) -> Any:
    """open_queue for a fresh queue (unless ``queue=`` is given) of ``table``."""
    params.setdefault("queue", f"q-{uuid.uuid4().hex[:8]}")
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return open_queue(f"dynamodb://{table}?{query}", client=ddb)


class Calls:
    """DynamoDB requests by operation, and items returned by Query."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.query_items = 0
        client.meta.events.register("before-call.dynamodb.*", self._before)
        client.meta.events.register("after-call.dynamodb.Query", self._after_query)

    def _before(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def _after_query(self, parsed: Any, **_: Any) -> None:
        self.query_items += len(parsed.get("Items", []))

    def reset(self) -> None:
        self.calls.clear()
        self.query_items = 0


async def drain(queue: Queue, expected: int, within: float = 10.0) -> list[Any]:
    got: list[Any] = []
    with anyio.fail_after(within):
        while len(got) < expected:
            got.extend(await queue.receive(wait_seconds=1))
    return got


# --------------------------------------------------------------------------
# the eight known flaws of DynamoMQ


async def test_flaw1_lease_token_guards_ack_nack_extend(table: str, ddb: Any) -> None:
    """A consumer whose visibility expired cannot delete or re-time the
    message another consumer now holds: every receive writes a new lease."""
    async with open_dq(table, ddb, visibility_timeout=0.3) as q:
        (sent,) = await q.send([b"contended"])
        (old,) = await q.receive()
        await anyio.sleep(0.35)
        (new,) = await q.receive(visibility_timeout=30)
        assert (new.id, new.receive_count) == (old.id, 2)
        assert new.receipt != old.receipt
        (stale,) = await q.ack([old])
        assert isinstance(stale.error, msgcluster.ReceiptError)
        for call in (lambda: q.extend(old, 60), lambda: q.nack(old)):
            with pytest.raises(msgcluster.ReceiptError):
                await call()
        info = await q.get_message(sent.id)
        assert info is not None
        assert info.state == "in_flight"  # untouched by the old holder
        (current,) = await q.ack([new])
        assert current.ok
        assert await q.get_message(sent.id) is None


async def test_flaw2_worker_keeps_running_through_throttling_and_resets(
    local_aws: LocalAWS, table: str, ddb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Throttling and dropped connections beyond botocore's retries reach the
    worker as exceptions; it backs off and carries on until all is done."""
    queue_name = f"q-{uuid.uuid4().hex[:8]}"
    async with open_dq(table, ddb, queue=queue_name) as direct:
        for start in range(0, 30, 10):
            await direct.send([msgspec.json.encode(Job(n)) for n in range(start, start + 10)])
    with FaultProxy(local_aws.endpoint_url) as proxy:
        rules = [
            proxy.add_rule(
                match_target("Query"), throttle("ProvisionedThroughputExceededException"), times=8
            ),
            proxy.add_rule(match_target("TransactWriteItems"), reset(), times=6),
            proxy.add_rule(match_target("BatchGetItem"), throttle(), times=2),
        ]
        kwargs = {**local_aws.client_kwargs(), "endpoint_url": proxy.url}
        config = AioConfig(retries={"mode": "standard", "total_max_attempts": 2})
        async with AioSession().create_client("dynamodb", config=config, **kwargs) as faulty:
            handled: Counter[int] = Counter()
            app = App()

            @app.handler(Job)
            async def handle(job: Job) -> None:
                handled[job.n] += 1

            async with open_dq(table, faulty, queue=queue_name) as q:
                worker = Worker(
                    app,
                    q,
                    concurrency=4,
                    wait_seconds=0.2,
                    visibility_timeout=1,
                    backoff_base=0.005,
                    handle_signals=False,
                )
                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(worker.run)
                        while set(handled) != set(range(30)) or (await q.stats()).visible:  # noqa: ASYNC110
                            await anyio.sleep(0.2)
                        worker.stop()
                stats = await q.stats()
    assert [rule.hits for rule in rules] == [8, 6, 2]  # every fault was served
    assert "receive failed" in caplog.text  # the worker saw them...
    assert worker.stats[Outcome.SUCCEEDED] >= 30  # ...and kept going
    assert (stats.visible, stats.in_flight, stats.delayed) == (0, 0, 0)


async def test_flaw3_stop_releases_prefetched_and_stops_polling(table: str, ddb: Any) -> None:
    app = App()
    gate = anyio.Event()
    two_started = anyio.Event()
    started: list[int] = []

    @app.handler(Job)
    async def handle(job: Job) -> None:
        started.append(job.n)
        if len(started) == 2:
            two_started.set()
        await gate.wait()

    calls = Calls(ddb)
    async with open_dq(table, ddb, visibility_timeout=30) as q:
        await q.send([msgspec.json.encode(Job(n)) for n in range(10)])
        worker = Worker(app, q, concurrency=2, prefetch=8, wait_seconds=0.2, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(10):
                await two_started.wait()
            worker.stop()
            await anyio.sleep(0.2)  # release of the prefetched is under way
            calls.reset()
            await anyio.sleep(0.6)  # running handlers still hold the worker
            polls = calls.calls["Query"]
            gate.set()
        left = await q.receive(10)  # visible again at once: no 30 s wait
    assert polls == 0  # stopped polling while it drained
    assert worker.stats[Outcome.SUCCEEDED] == 2
    assert worker.stats[Outcome.RELEASED] == 8
    assert len(left) == 8


async def test_flaw4_delays_are_enforced(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb) as q:
        later, _ = await q.send(
            [OutgoingMessage(body=b"later", delay_seconds=1), OutgoingMessage(body=b"now")]
        )
        assert [m.body for m in await q.receive(wait_seconds=0.5)] == [b"now"]
        info = await q.get_message(later.id)
        assert info is not None
        assert info.state == "delayed"
        assert (await q.stats()).delayed == 1
        assert await q.receive(wait_seconds=0.3) == []
        await anyio.sleep(0.3)
        (message,) = await q.receive(wait_seconds=1)
        assert (message.id, message.body) == (later.id, b"later")


async def test_flaw5_fixed_width_sortable_keys(table: str, ddb: Any) -> None:
    # DynamoMQ's timestamps: "...:00.5Z" sorts before "...:00Z".
    assert "2024-01-01T00:00:00.5Z" < "2024-01-01T00:00:00Z"
    stamps = [0, 9, 10, 999_999, 1_000_000, 1_000_000_500_000, 1_700_000_000_000_000]
    stamps += [1_700_000_000_500_000, 10**15 - 1, 10**15, 9_999_999_999_999_999]
    keys = [time_key(us) for us in sorted(stamps)]
    assert sorted(keys) == keys
    assert len({len(k) for k in keys}) == 1
    # FIFO order within a group survives sends in the same microsecond.
    async with open_dq(table, ddb, fifo="true") as q:
        for batch in range(3):
            await q.send(
                [
                    OutgoingMessage(body=str(i).encode(), group_id="g", dedup_id=str(i))
                    for i in range(batch * 10, batch * 10 + 10)
                ]
            )
        order: list[int] = []
        with anyio.fail_after(10):
            while len(order) < 30:
                batch_ = await q.receive(wait_seconds=1)
                order.extend(int(m.body) for m in batch_)
                assert all(r.ok for r in await q.ack(batch_))
    assert order == list(range(30))


async def test_flaw6_receive_cost_does_not_grow_with_in_flight(table: str, ddb: Any) -> None:
    """In-flight items sort after now in the ready index: a receive never
    reads them; and consumers spread over the shards."""
    calls = Calls(ddb)
    async with open_dq(table, ddb, shards=4, visibility_timeout=60) as q:
        for start in range(0, 60, 10):
            await q.send([f"m{i}".encode() for i in range(start, start + 10)])

        async def cost_of_one_receive() -> tuple[int, int]:
            calls.reset()
            assert len(await q.receive(max_messages=10)) == 10
            return calls.query_items, calls.calls["Query"]

        first = await cost_of_one_receive()  # 0 in flight
        # One message per receive, as consumers with one free slot ask: each
        # starts at a random shard.
        held = [m for _ in range(30) for m in await q.receive(max_messages=1)]
        assert len(held) == 30
        items_read, queries = await cost_of_one_receive()  # 40 in flight, 20 ready
        assert items_read <= 20  # only ready keys: none of the 40 in flight
        # Shards read dry hold fewer than the 10 wanted between them; the last
        # shard read gives at most one window (4 per message wanted, plus 4).
        # Messages hash to shards unevenly, so that window can be most of it.
        assert first[0] < 10 + (4 * 10 + 4)
        assert queries <= 4
        shards = Counter(shard_of(m.id) for m in held)
        assert len(shards) >= 3  # consumers spread over the shards


async def test_flaw7_conditional_puts_and_dedup(local_aws: LocalAWS, table: str, ddb: Any) -> None:
    # Concurrent sends of one dedup id: exactly one message, one id.
    async with open_dq(table, ddb, fifo="true") as q:
        ids: list[str | None] = []

        async def send(i: int) -> None:
            (result,) = await q.send(
                [OutgoingMessage(body=f"copy {i}".encode(), group_id="g", dedup_id="once")]
            )
            ids.append(result.id)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(send, i)
        assert len(set(ids)) == 1
        assert None not in ids
        assert [m.id async for m in q.list_messages()] == ids[:1]
    # A send applied whose response is lost is retried by botocore: the
    # retry finds its own item (same send token), so it is stored once.
    with FaultProxy(local_aws.endpoint_url) as proxy:
        rule = proxy.add_rule(match_target("TransactWriteItems"), drop_response(), times=1)
        kwargs = {**local_aws.client_kwargs(), "endpoint_url": proxy.url}
        async with (
            AioSession().create_client("dynamodb", **kwargs) as via_proxy,
            open_dq(table, via_proxy) as q,
        ):
            results = await q.send([b"a", b"b", b"c"])
            stored = [m async for m in q.list_messages()]
    assert rule.hits == 1
    assert all(r.ok for r in results)
    assert sorted(m.id for m in stored) == sorted(r.id for r in results if r.id)


async def test_flaw8_finite_max_receives_and_redrive(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb, visibility_timeout=0) as q:
        assert q.max_receives == 5  # finite by default
        (sent,) = await q.send([b"poison"])
        for count in range(1, 6):
            (message,) = await q.receive()
            assert message.receive_count == count
        assert await q.receive() == []  # the 6th delivery moves it instead
        dead = await q.dead_letter_stats()
        assert dead.visible == 1
        (info,) = [m async for m in q.list_messages(dead_letters=True)]
        assert (info.id, info.state, info.body) == (sent.id, "dead_letter", b"poison")
        assert info.dead_letter_reason == "max receives exceeded"
        # The DLQ is a queue of its own; consuming it is up to you, the
        # backend never deletes failures. Redrive brings them back.
        assert await q.redrive() == 1
        (again,) = await q.receive()
        assert (again.id, again.receive_count) == (sent.id, 1)


# --------------------------------------------------------------------------
# features


async def test_compression_of_large_bodies(table: str, ddb: Any) -> None:
    big = b"compressible " * 20_000  # 260,000 bytes
    noise = os.urandom(100_000)
    async with open_dq(table, ddb, compress_over=1024) as q:
        sent = await q.send([big, noise, b"small"])
        assert all(r.ok for r in sent)
        stored = {}
        for result in sent:
            assert result.id is not None
            key = q.driver._store.key(result.id)
            stored[result.id] = (await ddb.get_item(TableName=table, Key=key))["Item"]
        big_item, noise_item, small_item = (stored[r.id] for r in sent if r.id)
        assert big_item["z"]["S"] in ("zlib", "zstd")
        assert len(big_item["b"]["B"]) < len(big) // 20
        assert "z" not in noise_item  # would not shrink: kept as is
        assert "z" not in small_item
        received = {m.id: m.body for m in await drain(q, 3)}
        assert [received[r.id] for r in sent if r.id] == [big, noise, b"small"]


async def test_several_named_queues_in_one_table(table: str, ddb: Any) -> None:
    async with (
        open_dq(table, ddb, queue="alpha") as alpha,
        open_dq(table, ddb, queue="beta", shards=2) as beta,
        open_dq(table, ddb, queue="gamma.fifo") as gamma,
    ):
        assert gamma.capabilities.fifo
        assert not alpha.capabilities.fifo
        await alpha.send([b"a1", b"a2"])
        await beta.send([b"b1"])
        await gamma.send([OutgoingMessage(body=b"g1", group_id="x", dedup_id="1")])
        assert sorted(m.body for m in await drain(alpha, 2)) == [b"a1", b"a2"]
        assert [m.body for m in await drain(beta, 1)] == [b"b1"]
        assert [m.body for m in await drain(gamma, 1)] == [b"g1"]
        assert (await alpha.stats()).in_flight == 2
        assert (await beta.stats()).in_flight == 1
    # Where items live is fixed once: reopening with other shards is refused.
    with pytest.raises(msgcluster.QueueURIError, match="shards"):
        await open_dq(table, ddb, queue="beta", shards=3)
    async with open_dq(table, ddb, queue="beta") as again:  # adopts the stored settings
        assert again.driver._store.config.shards == 2


async def test_redrive_one_and_all(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb, max_receives=3) as q:
        results = await q.send([b"x", b"y", b"z"])
        ids = [r.id for r in results if r.id]
        for message_id in ids:
            assert await q.dead_letter_message(message_id, "bad input")
        assert (await q.stats()).dead_letters == 3
        assert await q.redrive(ids[0]) == 1
        assert await q.redrive("0.nope") == 0
        assert await q.redrive() == 2
        assert (await q.dead_letter_stats()).visible == 0
        received = await drain(q, 3)
        assert sorted(m.id for m in received) == sorted(ids)
        assert {m.receive_count for m in received} == {1}


async def test_dead_letter_by_the_worker_keeps_the_reason(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb) as q:
        (sent,) = await q.send([b"reject me"])
        (message,) = await q.receive()
        assert await q.dead_letter(message, "cannot parse")
        info = await q.get_message(sent.id)
        assert info is not None
        assert info.state == "dead_letter"
        assert info.dead_letter_reason == "cannot parse"
        with pytest.raises(msgcluster.ReceiptError):  # the lease is spent
            await q.dead_letter(message, "again")


async def test_admin_operations(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb, shards=3, max_receives=3) as q:
        assert isinstance(q, QueueAdmin)
        ids: list[str] = []
        for start in range(0, 10, 5):
            results = await q.send(
                [
                    OutgoingMessage(body=f"m{i}".encode(), attributes={"i": str(i)})
                    for i in range(start, start + 5)
                ]
            )
            ids.extend(r.id for r in results if r.id)
        listed = [m async for m in q.list_messages(page_size=2)]  # many pages over 3 shards
        assert sorted(m.id for m in listed) == sorted(ids)
        assert all(m.state == "ready" and m.receive_count == 0 for m in listed)
        info = await q.get_message(ids[0])
        assert info is not None
        assert (info.body, info.attributes) == (b"m0", {"i": "0"})
        assert await q.get_message("1.missing") is None
        assert await q.get_message("not an id") is None

        assert await q.fail_message(ids[1])
        info = await q.get_message(ids[1])
        assert info is not None
        assert (info.state, info.receive_count) == ("ready", 1)
        assert await q.fail_message(ids[1])
        assert await q.fail_message(ids[1])  # the third failure reaches max receives
        info = await q.get_message(ids[1])
        assert info is not None
        assert info.state == "dead_letter"

        held = await q.receive(max_messages=2, visibility_timeout=60)
        assert (await q.stats()).in_flight == 2
        assert await q.reset_message(held[0].id)
        info = await q.get_message(held[0].id)
        assert info is not None
        assert (info.state, info.receive_count) == ("ready", 0)
        (stale,) = await q.ack([held[0]])  # the reset took the lease away
        assert isinstance(stale.error, msgcluster.ReceiptError)

        target = next(i for i in ids[2:] if i not in {m.id for m in held})
        assert await q.delete_message(target)
        assert not await q.delete_message(target)
        stats = await q.stats()
        assert (stats.visible, stats.in_flight, stats.dead_letters) == (7, 1, 1)
        assert stats.oldest_age_seconds is not None
        assert await q.purge() == 8
        assert await q.purge(dead_letters=True) == 1
        assert [m async for m in q.list_messages()] == []


async def test_fifo_admin_unblocks_the_group(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb, fifo="true", visibility_timeout=60) as q:
        await q.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=str(i)) for i in range(3)]
        )
        (head,) = await q.receive(max_messages=1)
        assert await q.receive(wait_seconds=0.1) == []  # the group is blocked
        assert await q.delete_message(head.id)  # an operator removes the head
        (second,) = await q.receive(max_messages=1)
        assert second.body == b"1"
        await q.nack(second, 0)  # released: delivered again at once, still first
        (again,) = await q.receive(max_messages=1)
        assert (again.body, again.receive_count) == (b"1", 2)
        assert all(r.ok for r in await q.ack([again]))
        (last,) = await q.receive()
        assert last.body == b"2"


async def test_provision_is_idempotent(ddb: Any, names: dict[str, str]) -> None:
    table = names["table"]
    assert await provision_dynamodb_queue_table(ddb, table)
    assert not await provision_dynamodb_queue_table(ddb, table)
    described = (await ddb.describe_table(TableName=table))["Table"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [i["IndexName"] for i in described["GlobalSecondaryIndexes"]] == [INDEX_NAME]
    ttl = await ddb.describe_time_to_live(TableName=table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expiresAt"
    # The URI can provision too.
    other = f"{table}-uri"
    async with open_queue(f"dynamodb://{other}?provision=true", client=ddb) as q:
        assert isinstance(q.driver, DynamoQueue)
        assert q.name == "default"
        assert (await q.send([b"x"]))[0].ok


async def test_missing_table_is_a_typed_error(ddb: Any) -> None:
    with pytest.raises(msgcluster.TableNotFoundError):
        await open_queue(f"dynamodb://absent-{uuid.uuid4().hex[:6]}", client=ddb)


def test_group_ids_are_hashed_to_fixed_width() -> None:
    assert len({len(group_hash(g)) for g in ("a", "x" * 128, "ü")}) == 1


# --------------------------------------------------------------------------
# consumers in separate processes


async def test_consumers_in_processes_never_share_a_held_lease_and_lose_nothing(
    local_aws: LocalAWS, table: str, ddb: Any, tmp_path: Path
) -> None:
    """3 processes x 4 consumers, 200 messages; every 25th message's first
    handler outlives its 1 s lease, so another consumer takes it meanwhile."""
    visibility, total = 1.0, 200
    queue_name = f"q-{uuid.uuid4().hex[:8]}"
    uri = f"dynamodb://{table}?queue={queue_name}&shards=2&visibility_timeout={visibility}"
    async with open_queue(uri, client=ddb) as q:
        sent: set[str] = set()
        for start in range(0, total, 10):
            results = await q.send([msgspec.json.encode(Job(n)) for n in range(start, start + 10)])
            sent.update(r.id for r in results if r.id)
        log = tmp_path / "handlings.jsonl"
        config = {
            "uri": uri,
            "client": local_aws.client_kwargs(),
            "concurrency": 4,
            "idle_seconds": 2.5,
            "slow_every": 25,
            "slow_seconds": [1.6, 0.8],
            "log": str(log),
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        processes = [
            subprocess.Popen(  # noqa: ASYNC220 - starting them does not block
                [sys.executable, str(SCRIPT), json.dumps({**config, "name": f"p{i}"})],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(3)
        ]
        try:
            for process in processes:
                _, err = await anyio.to_thread.run_sync(lambda p=process: p.communicate(timeout=60))
                assert process.returncode == 0, err
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
        stats = await q.stats()
    handlings = [json.loads(line) for line in log.read_text().splitlines()]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for h in handlings:
        by_id[h["id"]].append(h)

    # Nothing lost, nothing left: every message handled, its last delivery acked.
    assert set(by_id) == sent
    assert (stats.visible, stats.in_flight, stats.dead_letters) == (0, 0, 0)
    # The scenario happened: leases expired mid-handler and their acks failed.
    stale = [h for h in handlings if not h["ok"]]
    assert stale
    assert all(h["error"] == "ReceiptError" for h in stale)
    assert {len({h["proc"] for h in handlings})} == {3}

    for handled in by_id.values():
        handled.sort(key=lambda h: h["rc"])
        assert [h["rc"] for h in handled] == list(range(1, len(handled) + 1))
        assert len({h["lease"] for h in handled}) == len(handled)
        for i, first in enumerate(handled):
            for later in handled[i + 1 :]:
                # ``later`` was claimed before ``r1``; ``first``'s lease lasted
                # at least until its receive began plus the timeout. A claim
                # surely inside a held lease is a double delivery.
                assert later["r1"] >= first["r0"] + visibility - 0.005, (first, later)
                # Claimed before the earlier holder acked: that ack was refused,
                # unless the message was gone by then (acks are idempotent).
                if later["r1"] < first["a0"] and first["ok"]:
                    assert later["ok"], (first, later)
                    assert later["a0"] < first["a1"], (first, later)
        assert handled[-1]["ok"]


async def test_fifo_dead_letters_and_redrive_keep_group_order(table: str, ddb: Any) -> None:
    async with open_dq(table, ddb, fifo="true", visibility_timeout=0, max_receives=2) as q:
        await q.send(
            [OutgoingMessage(body=f"{i}".encode(), group_id="g", dedup_id=str(i)) for i in range(3)]
        )
        for count in (1, 2):
            (head,) = await q.receive(max_messages=1)
            assert (head.body, head.receive_count) == (b"0", count)
        assert await q.receive(max_messages=1) == []  # the head moved to the DLQ
        (dead,) = [m async for m in q.list_messages(dead_letters=True)]
        assert (dead.body, dead.group_id) == (b"0", "g")
        assert await q.redrive() == 1  # back in its place: before 1 and 2
        order: list[bytes] = []
        with anyio.fail_after(10):
            while len(order) < 3:
                batch = await q.receive(visibility_timeout=30)
                order.extend(m.body for m in batch)
                assert all(r.ok for r in await q.ack(batch))
        assert order == [b"0", b"1", b"2"]


async def test_send_waits_out_a_transaction_conflict(
    local_aws: LocalAWS, table: str, ddb: Any
) -> None:
    """Sends to one FIFO group meet on its group item: DynamoDB cancels one
    with TransactionConflict (botocore does not retry that); the send tries
    again a few times instead of failing."""
    conflict = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
        "CancellationReasons": [
            {"Code": "None"},
            {"Code": "None"},
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
        ],
    }
    queue_name = f"q-{uuid.uuid4().hex[:8]}.fifo"
    async with open_dq(table, ddb, queue=queue_name):
        pass  # created (and its settings stored) without the proxy
    with FaultProxy(local_aws.endpoint_url) as proxy:
        rule = proxy.add_rule(
            match_target("TransactWriteItems"), respond(400, json_body=conflict), times=2
        )
        kwargs = {**local_aws.client_kwargs(), "endpoint_url": proxy.url}
        async with (
            AioSession().create_client("dynamodb", **kwargs) as via_proxy,
            open_dq(table, via_proxy, queue=queue_name) as q,
        ):
            (result,) = await q.send([OutgoingMessage(body=b"x", group_id="g", dedup_id="d")])
            assert result.ok
            assert rule.hits == 2
            assert [m.id async for m in q.list_messages()] == [result.id]
