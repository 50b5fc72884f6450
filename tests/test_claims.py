"""Claims (``Client(claim=True)``): one handler run per tracked message, even when
the same message is delivered to two consumers at once."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from conftest import as_lambda_record, client_for, receive_all
from faultproxy import FaultProxy, throttle
from test_cluster_faults import DropApplied, cancel

import msgcluster
from msgcluster import App, ParsedRecord, Worker
from msgcluster.local import LocalAWS


@pytest.fixture
async def claiming(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client
) -> AsyncIterator[msgcluster.Client]:
    async with client_for(local_aws, names, claim=True, claim_seconds=3) as client:
        yield client


async def _event(mc: msgcluster.Client, url: str, n: int) -> dict[str, Any]:
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = response["Attributes"]["QueueArn"]
    return {"Records": [as_lambda_record(m, arn) for m in await receive_all(mc, url, n)]}


def _failures(result: dict[str, list[dict[str, str]]]) -> set[str]:
    return {failure["itemIdentifier"] for failure in result["batchItemFailures"]}


async def _two_concurrent_invocations(
    client: msgcluster.Client, event: dict[str, Any], runs: Counter[int]
) -> list[dict[str, list[dict[str, str]]]]:
    async def handle(record: ParsedRecord[Any]) -> None:
        runs[record.body["n"]] += 1
        await anyio.sleep(0.5)  # both invocations are inside the handler at once

    results: list[dict[str, list[dict[str, str]]]] = []

    async def invoke(event: dict[str, Any]) -> None:
        results.append(await client.safe_process_batch(event, handle))

    async with anyio.create_task_group() as tg:
        tg.start_soon(invoke, event)
        tg.start_soon(invoke, copy.deepcopy(event))
    return results


async def test_the_same_event_twice_at_once_runs_each_handler_once(
    mc: msgcluster.Client, claiming: msgcluster.Client, queue_url: str
) -> None:
    keys = (await mc.send_message_batch(queue_url, [{"n": n} for n in range(6)])).keys
    event = await _event(mc, queue_url, 6)
    runs: Counter[int] = Counter()
    results = await _two_concurrent_invocations(claiming, event, runs)
    assert runs == Counter(range(6))  # once each
    ids = {record["messageId"] for record in event["Records"]}
    first, second = (_failures(r) for r in results)
    # One invocation ran them; the other reported them for a retry (held).
    assert {frozenset(first), frozenset(second)} == {frozenset(), frozenset(ids)}
    # The retry finds them complete: skipped, nothing runs again.
    again = await claiming.safe_process_batch(event, lambda record: runs.update([-1]))
    assert again == {"batchItemFailures": []}
    assert runs[-1] == 0
    assert await mc.get_message_records(keys, consistent_read=True) == [None] * 6


async def test_without_claims_both_invocations_run_and_count_once(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """The documented default: a concurrent duplicate runs the handler again
    (both invocations succeed); completion still happens once."""
    keys = (await mc.send_message_batch(queue_url, [{"n": n} for n in range(3)])).keys
    event = await _event(mc, queue_url, 3)
    runs: Counter[int] = Counter()
    results = await _two_concurrent_invocations(mc, event, runs)
    assert runs == Counter({0: 2, 1: 2, 2: 2})
    assert [_failures(r) for r in results] == [set(), set()]
    assert await mc.get_message_records(keys, consistent_read=True) == [None] * 3


async def test_a_crashed_holders_claim_expires(
    mc: msgcluster.Client, claiming: msgcluster.Client, queue_url: str
) -> None:
    await mc.send_message(queue_url, {"n": 1})
    event = await _event(mc, queue_url, 1)
    # A consumer claims it and dies (never completes, never fails it).
    assert await claiming.claim_batch(event["Records"]) == [True]
    runs: Counter[int] = Counter()

    async def handle(record: ParsedRecord[Any]) -> None:
        runs[record.body["n"]] += 1

    held = await claiming.safe_process_batch(event, handle)
    assert len(held["batchItemFailures"]) == 1
    assert not runs
    await anyio.sleep(4.2)  # claim_seconds=3 (whole seconds)
    assert await claiming.safe_process_batch(event, handle) == {"batchItemFailures": []}
    assert runs == {1: 1}


async def test_a_failed_attempt_releases_its_claim(
    mc: msgcluster.Client, claiming: msgcluster.Client, queue_url: str
) -> None:
    await mc.send_message(queue_url, {"n": 1})
    event = await _event(mc, queue_url, 1)
    attempts: list[int] = []

    async def flaky(record: ParsedRecord[Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    assert len((await claiming.safe_process_batch(event, flaky))["batchItemFailures"]) == 1
    # At once, not after the lease: the failure ended the claim.
    assert await claiming.safe_process_batch(event, flaky) == {"batchItemFailures": []}
    assert len(attempts) == 2


async def test_a_failure_on_a_full_error_list_releases_its_claim_too(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """Once the error list is full, a failure replaces its oldest entry (another
    write path); it must end the claim all the same."""
    await mc.send_message(queue_url, {"n": 1})
    event = await _event(mc, queue_url, 1)
    fails = mc.settings.max_errors + 1
    attempts: list[int] = []

    async def flaky(record: ParsedRecord[Any]) -> None:
        attempts.append(1)
        if len(attempts) <= fails:
            raise RuntimeError(f"try {len(attempts)} fails")

    async with client_for(local_aws, names, claim=True, claim_seconds=60) as claiming:
        for _ in range(fails):
            assert len((await claiming.safe_process_batch(event, flaky))["batchItemFailures"]) == 1
        # At once, not after the 60 s lease.
        assert await claiming.safe_process_batch(event, flaky) == {"batchItemFailures": []}
    assert len(attempts) == fails + 1


async def _redriven(mc: msgcluster.Client, queue_url: str) -> msgcluster.RecordKey:
    """A tracked message whose record is ERROR (it reached its DLQ) and which is
    back on its queue, as `msgcluster redrive` leaves it."""
    key = await mc.send_message(queue_url, {"n": 1})
    record = await mc.mark_failed(key, RuntimeError("payment service down"), final=True)
    assert record is not None
    assert record.status == "ERROR"
    return key


async def test_a_redriven_message_runs_again_with_claims_on(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    key = await _redriven(mc, queue_url)
    event = await _event(mc, queue_url, 1)
    runs: list[int] = []
    async with client_for(local_aws, names, claim=True, claim_seconds=60) as claiming:
        result = await claiming.safe_process_batch(event, lambda record: runs.append(1))
    assert result == {"batchItemFailures": []}
    assert runs == [1]
    assert await mc.is_complete(key)


async def test_a_redriven_message_runs_again_on_a_worker_with_claims_on(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    key = await _redriven(mc, queue_url)
    runs: list[int] = []
    async with client_for(local_aws, names, claim=True, claim_seconds=60) as claiming:
        app = App(claiming)

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            runs.append(body["n"])

        with anyio.fail_after(30):
            await Worker(app, queue_url, burst=True, wait_seconds=1).run()
    assert runs == [1]
    assert await mc.is_complete(key)


async def test_two_workers_with_duplicates_run_each_task_once(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """A cluster whose every task message is on the queue three times, consumed
    by two workers (each its own Client, claims on) at once."""
    key = await mc.create_message_cluster(queue_url, [{"n": n} for n in range(12)])
    messages = await receive_all(mc, queue_url, 12)
    for message in messages:
        for _ in range(2):
            await mc.sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])
        await mc.sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    runs: Counter[int] = Counter()
    callbacks: list[int] = []

    async def consume(client: msgcluster.Client) -> None:
        app = App(client)

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            runs[body["n"]] += 1
            await anyio.sleep(0.3)

        @app.on_cluster_complete
        async def done(record: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
            callbacks.append(record.completed)

        await Worker(app, queue_url, burst=True, wait_seconds=1, concurrency=8).run()

    async with (
        client_for(local_aws, names, claim=True, claim_seconds=2) as one,
        client_for(local_aws, names, claim=True, claim_seconds=2) as two,
    ):
        with anyio.fail_after(60):
            while (await mc.get_message_cluster(key, consistent_read=True)).in_progress:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume, one)
                    tg.start_soon(consume, two)
            while not callbacks:  # the completion event, if it was not run inline
                await consume(one)
    assert runs == Counter(range(12))
    assert callbacks == [12]


async def test_two_lambda_containers_with_the_same_event_run_each_handler_once(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """The Lambda adapter: two warm containers (two handlers, each with its own
    Client, claims on) get the same event at once."""
    from msgcluster.integrations.aws_lambda import lambda_handler

    await mc.send_message_batch(queue_url, [{"n": n} for n in range(4)])
    event = await _event(mc, queue_url, 4)
    runs: Counter[int] = Counter()

    def container() -> Any:
        app = App(client_for(local_aws, names, claim=True))

        @app.handler(dict)
        async def handle(body: dict[str, Any]) -> None:
            runs[body["n"]] += 1
            await anyio.sleep(0.5)

        return lambda_handler(app)

    handlers = [container(), container()]
    results: list[dict[str, Any]] = []

    async def invoke(handler: Any) -> None:
        results.append(await anyio.to_thread.run_sync(handler, copy.deepcopy(event), None))

    try:
        async with anyio.create_task_group() as tg:
            for handler in handlers:
                tg.start_soon(invoke, handler)
    finally:
        for handler in handlers:
            await anyio.to_thread.run_sync(handler.close)
    assert runs == Counter(range(4))
    # The other reported them held (or, had it come late, found them complete).
    assert sorted(len(r["batchItemFailures"]) for r in results) in ([0, 4], [0, 0])


def _claim_txn(request: Any) -> bool:
    """A claim transaction (its items set claimUntil)."""
    return request.operation == "TransactWriteItems" and "claimUntil" in str(request.json())


async def test_claims_under_throttles_conflicts_and_lost_responses(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    proxy: FaultProxy,
) -> None:
    """The claim transaction throttled, cancelled for TransactionConflict, and
    applied with its answer lost (no botocore retries: msgcluster's own): every
    handler still runs once, and nothing is reported held by ourselves."""
    await mc.send_message_batch(queue_url, [{"n": n} for n in range(10)])
    event = await _event(mc, queue_url, 10)
    throttled = proxy.add_rule(_claim_txn, throttle(), times=2)
    conflict = proxy.add_rule(_claim_txn, cancel("TransactionConflict"), times=1)
    lost = DropApplied(limit=1)
    proxy.add_rule(_claim_txn, lost)
    runs: Counter[int] = Counter()

    async def handle(record: ParsedRecord[Any]) -> None:
        runs[record.body["n"]] += 1

    async with client_for(
        local_aws, names, endpoint_url=proxy.url, max_attempts=1, claim=True
    ) as client:
        assert await client.safe_process_batch(event, handle) == {"batchItemFailures": []}
    assert runs == Counter(range(10))
    assert (throttled.hits, conflict.hits, lost.dropped) == (2, 1, 1)
