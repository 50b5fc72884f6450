"""Fault injection on the cluster fan-in: throttled, conflicting and lost writes.

A 60-task cluster with shards of 10 (six shards) is created through the
direct client ``mc`` and consumed by one consumer through ``pc`` (every
request goes through :class:`faultproxy.FaultProxy`), while the proxy
throttles, cancels or loses the responses of the fan-in's writes:

- the counting transaction of a receive batch (tasks + shard counters),
- the shard-closing transaction (shard ``closedAt`` + cluster ``shardsOpen``),
- the conditional COMPLETE flip of the cluster (``maybe_flip``),
- the callback's claim and release (``run_callback``).

Which layer handles a fault depends on the client's retry settings. The
Client configures botocore's ``standard`` retry mode with 8 attempts: it
retries throttling error codes and connection errors itself (re-sending the
identical request: a TransactWriteItems keeps its ClientRequestToken, which
real DynamoDB honours for 10 minutes but moto ignores, so on moto the retry
of an applied transaction finds its own conditions failed) and never
retries ``TransactionCanceledException``, which reaches msgcluster whatever
its reasons. Tests marked "msgcluster layer" use ``pc1``, a proxied Client
with ``max_attempts=1`` (no botocore retry), so that the very first fault
reaches msgcluster's own handling. With botocore retries enabled, every
retry costs up to 1 s of backoff (jitter x 2**attempt), so the "botocore
layer" tests inject only a few faults.

Every test ends with exact counts: the cluster COMPLETE with completed ==
total and failed == 0, every shard closed with done == its size (nothing
counted twice or lost on the way), the callback run exactly once (one
claim), and the fault seen to fire (rule hits / proxy log).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
from clusterkit import bucket_closing, cluster_done, consume, counting_request
from conftest import client_for, receive_all
from faultproxy import (
    RESET,
    Disconnect,
    FaultProxy,
    Forward,
    Matcher,
    ProxyRequest,
    ProxyResponse,
    error,
    match_target,
    respond,
    throttle,
)

import msgcluster
from msgcluster import (
    CallbackStatus,
    ParsedRecord,
    Status,
    _clusterkeys,
)
from msgcluster.clusters import _cluster_create, _clusters
from msgcluster.local import LocalAWS

TASKS = 60
SHARD = 10
SHARDS = TASKS // SHARD
DEADLINE = 10.0  # seconds for a whole consumption; a healthy run takes 1-2 s

# Every test runs on both fan-in layouts (new clusters; clusters of earlier versions).
pytestmark = pytest.mark.usefixtures("cluster_layout")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Shards of 10 tasks, so the 60-task cluster has six shards to close."""
    for module in (_clusterkeys, _cluster_create, _clusters):
        monkeypatch.setattr(module, "SHARD_SIZE", SHARD)
    return SHARD


@pytest.fixture
async def pc1(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, proxy: FaultProxy
) -> AsyncIterator[msgcluster.Client]:
    """A proxied Client without botocore retries (``max_attempts=1``): every
    injected fault reaches msgcluster's own retry handling."""
    async with client_for(local_aws, names, endpoint_url=proxy.url, max_attempts=1) as client:
        yield client


@pytest.fixture(params=["botocore", "msgcluster"])
def layer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def consumer(layer: str, request: pytest.FixtureRequest) -> msgcluster.Client:
    """``pc`` (botocore retries on) or ``pc1`` (off), by the ``layer`` param."""
    return request.getfixturevalue("pc" if layer == "botocore" else "pc1")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- matchers


def _body(request: ProxyRequest) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_closing(request: ProxyRequest) -> bool:
    # Only the shard-closing transaction touches the cluster's shardsOpen.
    return "shardsOpen" in json.dumps(_body(request).get("TransactItems", []))


def counting_txn(request: ProxyRequest) -> bool:
    """A receive batch's counting request: in layout 1 a transaction (task
    updates + shard counters), in layout 2 a bucket's ``ADD`` UpdateItem."""
    return counting_request(request)


def closing_txn(request: ProxyRequest) -> bool:
    """A shard-closing transaction: shard closedAt + cluster ADD shardsOpen -1."""
    return request.operation == "TransactWriteItems" and _is_closing(request)


def last_closing_txn(request: ProxyRequest) -> bool:
    """The closing of the last open shard (retried without ``shardsOpen > 1``)."""
    if not closing_txn(request):
        return False
    cluster = _body(request)["TransactItems"][1]["Update"]
    return "shardsOpen > :one" not in cluster.get("ConditionExpression", "")


def _update_expression(request: ProxyRequest) -> str:
    if request.operation != "UpdateItem":
        return ""
    return str(_body(request).get("UpdateExpression", ""))


def flip_update(request: ProxyRequest) -> bool:
    """maybe_flip's conditional COMPLETE / ERROR flip of the cluster record."""
    return "callbackStatus = :pending" in _update_expression(request)


def claim_update(request: ProxyRequest) -> bool:
    """run_callback's claim (PENDING -> RUNNING with a lease)."""
    return "callbackStatus = :running" in _update_expression(request)


def release_update(request: ProxyRequest) -> bool:
    """run_callback's release (RUNNING -> DONE), conditional on the owner."""
    return "callbackStatus = :s" in _update_expression(request)


def every_other(match: Matcher) -> Matcher:
    """Matches the 1st, 3rd, 5th ... request ``match`` matches: a fault on one
    attempt, the next attempt passes, so the faults spread over the run."""
    lock = threading.Lock()
    seen = 0

    def matcher(request: ProxyRequest) -> bool:
        nonlocal seen
        if not match(request):
            return False
        with lock:
            seen += 1
            return seen % 2 == 1

    return matcher


# --------------------------------------------------------------------------- actions


def cycle(*actions: Callable[[ProxyRequest, Forward], ProxyResponse | Disconnect]) -> Any:
    """Apply ``actions`` in turn, one per request."""
    lock = threading.Lock()
    calls = 0

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse | Disconnect:
        nonlocal calls
        with lock:
            chosen = actions[calls % len(actions)]
            calls += 1
        return chosen(request, forward)

    return action


def cancel(code: str, *, item: int = -1, message: str = "") -> Any:
    """Answer (without forwarding) TransactionCanceledException: ``code`` for
    item ``item`` of the transaction, ``None`` for the others (DynamoDB's
    shape: one CancellationReason per TransactItem, in order)."""

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        count = len(_body(request).get("TransactItems", []))
        reasons: list[dict[str, str]] = [{"Code": "None"} for _ in range(count)]
        reasons[item] = {"Code": code, "Message": message or f"Injected {code}"}
        codes = ", ".join(r["Code"] for r in reasons)
        body = {
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled, please refer cancellation reasons for specific "
            f"reasons [{codes}]",
            "CancellationReasons": reasons,
        }
        return respond(400, json_body=body)(request, forward)  # type: ignore[return-value]

    return action


class DropApplied:
    """Forward; if the upstream applied the request (2xx), lose the response
    (TCP reset) -- at most ``limit`` times. Failed attempts (a condition that
    did not hold) pass through, so only writes that really applied are lost."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.dropped = 0
        self._lock = threading.Lock()

    def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse | Disconnect:
        response = forward(request)
        with self._lock:
            if 200 <= response.status < 300 and (self.limit is None or self.dropped < self.limit):
                self.dropped += 1
                return RESET
        return response


# --------------------------------------------------------------------------- the run


class Run:
    """Handler and callback that record every call."""

    def __init__(self) -> None:
        self.handled: Counter[int] = Counter()
        self.callbacks: list[tuple[Status, int, int]] = []

    async def handler(self, record: ParsedRecord[Any]) -> None:
        self.handled[record.task] += 1

    async def callback(self, cluster: msgcluster.MessageClusterRecord, get_globals: Any) -> None:
        self.callbacks.append((cluster.status, cluster.completed, cluster.failed))


async def create(mc: msgcluster.Client, url: str) -> msgcluster.RecordKey:
    """The cluster, created directly (not through the proxy)."""
    key = await mc.create_message_cluster(url, range(TASKS))
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.total, record.shards, record.shards_open) == (TASKS, SHARDS, SHARDS)
    return key


async def drain(
    client: msgcluster.Client,
    mc: msgcluster.Client,
    url: str,
    key: msgcluster.RecordKey,
    run: Run,
    *,
    tolerate: bool = False,
    visibility_timeout: int = 10,
) -> list[msgcluster.AwsError]:
    """Consume through ``client`` until the callback is done (checked directly).

    ``tolerate``: like a worker, an AWS error that escapes a batch is logged
    (here: collected) and consumption goes on; the batch is not acknowledged
    and comes back after ``visibility_timeout``. Gives up at ``DEADLINE``
    (the caller then reports what is stuck).
    """
    errors: list[msgcluster.AwsError] = []
    with anyio.move_on_after(DEADLINE):
        while True:
            try:
                await consume(
                    client,
                    url,
                    run.handler,
                    callback=run.callback,
                    until=lambda: cluster_done(mc, key),
                    visibility_timeout=visibility_timeout,
                )
            except msgcluster.AwsError as exc:
                if not tolerate:
                    raise
                errors.append(exc)
            else:
                return errors
    return errors


async def assert_exact(mc: msgcluster.Client, key: msgcluster.RecordKey, run: Run) -> None:
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert record.callback_status is CallbackStatus.DONE, (
        f"the completion callback did not complete within {DEADLINE} s: callbackStatus="
        f"{record.callback_status}, attempts={record.callback_attempts}, callbacks run="
        f"{run.callbacks}, cluster {record.status} {record.completed}/{record.total}"
    )
    assert (record.status, record.total, record.completed, record.failed) == (
        Status.COMPLETE,
        TASKS,
        TASKS,
        0,
    )
    assert record.shards_open == 0
    assert run.callbacks == [(Status.COMPLETE, TASKS, 0)], "callback must run exactly once"
    assert record.callback_attempts == 1, "exactly one claim of the callback"
    assert set(run.handled) == set(range(TASKS))
    # Per shard: closed, and every task counted exactly once (done == size).
    table = mc.settings.table
    for shard in range(SHARDS):
        skey = _clusterkeys.shard_key(key.pk.split("$", 1)[1], shard)
        item = (
            await mc.dynamodb.get_item(
                TableName=table,
                Key={"pk": {"S": skey.pk}, "rk": {"S": skey.rk}},
                ConsistentRead=True,
            )
        )["Item"]
        counts = (item["done"]["N"], item["failedCount"]["N"], item["pending"]["N"])
        assert counts == (str(SHARD), "0", "0"), (shard, item)
        assert "closedAt" in item, (shard, item)
    assert [t async for t in mc.incomplete_tasks(key)] == []


# --------------------------------------------------------------------------- 1. throttling


async def test_counting_txn_throttled_botocore_retries(
    mc: msgcluster.Client,
    pc: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
) -> None:
    """Layer: botocore. A whole-request throttle of a counting transaction
    (HTTP 400 ThrottlingException, then ProvisionedThroughputExceededException:
    both in botocore's throttling codes) on one attempt of two transactions:
    botocore re-sends each (not applied) and msgcluster never sees it."""
    key = await create(mc, queue_url)
    rule = proxy.add_rule(
        every_other(counting_txn),
        cycle(throttle(), throttle("ProvisionedThroughputExceededException")),
        times=2,
    )
    run = Run()
    await drain(pc, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    assert rule.hits == 2
    assert proxy.count("TransactWriteItems", status=0) == 0


async def test_throttled_msgcluster_retries(
    mc: msgcluster.Client,
    pc1: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
    cluster_layout: int,
) -> None:
    """Layer: msgcluster, both ways DynamoDB throttles a TransactWriteItems.

    - Whole request (HTTP 400 ThrottlingException / ProvisionedThroughput-
      ExceededException / RequestLimitExceeded): without botocore retries
      (``pc1``) settle_tasks gets ThrottledError (not applied) and backs off:
      three in a row on the first batch (the backoff grows), then one
      attempt in two of the following batches.
    - Inside the transaction: TransactionCanceledException whose reason for
      one item is ``ThrottlingError`` / ``ProvisionedThroughputExceeded``
      (``None`` for the others), which botocore never retries whatever its
      settings: the shard counter of counting transactions and the cluster
      item of closing transactions. Not applied; retried as it was.

    Layout 2 counts with plain UpdateItems: whole-request throttles only.
    """
    key = await create(mc, queue_url)
    burst = proxy.add_rule(counting_txn, throttle(), times=3)
    in_txn = cluster_layout == 1
    whole = proxy.add_rule(
        every_other(counting_txn),
        cycle(
            throttle("ProvisionedThroughputExceededException"),
            cancel("ThrottlingError") if in_txn else throttle(),
            throttle("RequestLimitExceeded"),
            cancel("ProvisionedThroughputExceeded") if in_txn else throttle(),
        ),
        times=4,
    )
    closing = proxy.add_rule(
        every_other(closing_txn),
        cycle(cancel("ThrottlingError", item=1), cancel("ProvisionedThroughputExceeded", item=1)),
        times=3,
    )
    run = Run()
    await drain(pc1, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    assert (burst.hits, whole.hits, closing.hits) == (3, 4, 3)


# --------------------------------------------------------------------------- 2. conflicts


@pytest.mark.parametrize("cluster_layout", [1], indirect=True)
async def test_txn_cancelled_for_transaction_conflict(
    mc: msgcluster.Client,
    pc: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
) -> None:
    """Layer: msgcluster (botocore never retries TransactionCanceledException).
    TransactionConflict -- another transaction held the item -- on the shard
    counter of counting transactions, on a task of another, and on the
    cluster item of closing transactions, the last shard's closing among
    them: nothing applied, each is retried with backoff."""
    key = await create(mc, queue_url)
    last = proxy.add_rule(last_closing_txn, cancel("TransactionConflict", item=1), times=1)
    on_shard = proxy.add_rule(every_other(counting_txn), cancel("TransactionConflict"), times=3)
    on_task = proxy.add_rule(counting_txn, cancel("TransactionConflict", item=0), times=1)
    on_cluster = proxy.add_rule(
        every_other(closing_txn), cancel("TransactionConflict", item=1), times=2
    )
    run = Run()
    await drain(pc, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    assert (last.hits, on_shard.hits, on_task.hits, on_cluster.hits) == (1, 3, 1, 2)
    assert proxy.count("TransactWriteItems", status=0) == 0


@pytest.mark.parametrize("cluster_layout", [2], indirect=True)
@pytest.mark.parametrize("layer", ["botocore", "msgcluster"])
async def test_bucket_writes_meet_transactions(
    mc: msgcluster.Client,
    pc: msgcluster.Client,
    pc1: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
    layer: str,
) -> None:
    """Layout 2. A bucket's counting write and a bucket's closing write on its
    shard get TransactionConflictException (a shard-closing or redrive
    transaction held the item: plain writes to it fail while it runs), and
    shard-closing transactions are cancelled for TransactionConflict. Not
    applied; retried (at the transport, or by msgcluster without botocore
    retries), counted once."""
    key = await create(mc, queue_url)
    conflict = error(400, "TransactionConflictException", "Transaction is ongoing for the item")
    counting = proxy.add_rule(every_other(counting_txn), conflict, times=3)
    closing_bucket = proxy.add_rule(every_other(bucket_closing), conflict, times=2)
    closing = proxy.add_rule(every_other(closing_txn), cancel("TransactionConflict"), times=2)
    run = Run()
    await drain(pc if layer == "botocore" else pc1, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    assert (counting.hits, closing_bucket.hits, closing.hits) == (3, 2, 2)
    assert proxy.count("TransactWriteItems", status=0) == 0


# --------------------------------------------------------------------------- 3. lost responses


@pytest.mark.parametrize("cluster_layout", [1], indirect=True)
async def test_counting_and_closing_txns_applied_response_lost(
    mc: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
    layer: str,
    consumer: msgcluster.Client,
) -> None:
    """Counting and shard-closing transactions are applied but their
    responses are lost (TCP reset after the upstream applied them).

    botocore layer: botocore re-sends the identical request; lost are one
    counting transaction, the first closing that applies (an ordinary
    shard) and the last shard's closing (the one without ``shardsOpen > 1``,
    whose closer flips the cluster). msgcluster layer: every applied counting
    and closing transaction is lost (among them those rebuilt without the
    shard condition because their batch empties the shard), and settle_tasks
    / close_shard send them again after AwsConnectionError.

    Either way the second attempt finds the first one applied: a counting
    transaction is cancelled with ConditionalCheckFailed on every task (they
    are counted; settle_tasks repairs their shards, so an emptied shard is
    still closed), a closing one by the shard's
    ``attribute_not_exists(closedAt)`` (close_shard goes on to maybe_flip).
    Nothing is counted twice, no shard's counts are added to the cluster
    twice, and the cluster flips once.
    """
    key = await create(mc, queue_url)
    if layer == "botocore":
        counting = DropApplied(limit=1)
        last, closing = DropApplied(limit=1), DropApplied(limit=1)
    else:
        counting, last, closing = DropApplied(), DropApplied(), DropApplied()
    counting_rule = proxy.add_rule(counting_txn, counting)
    proxy.add_rule(last_closing_txn, last)
    proxy.add_rule(closing_txn, closing)
    run = Run()
    await drain(consumer, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    if layer == "botocore":
        assert (counting.dropped, last.dropped, closing.dropped) == (1, 1, 1)
    else:  # every applied one: >= 1 counting per receive batch of 10; each shard closing
        assert counting.dropped >= TASKS // 10
        assert (last.dropped, closing.dropped) == (1, SHARDS - 1)
    lost = counting.dropped + last.dropped + closing.dropped
    assert proxy.count("TransactWriteItems", status=0) == lost
    assert counting_rule.hits > counting.dropped  # the retries, cancelled by the conditions


@pytest.mark.parametrize("cluster_layout", [2], indirect=True)
async def test_bucket_writes_and_closings_applied_response_lost(
    mc: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
    layer: str,
    consumer: msgcluster.Client,
) -> None:
    """Layout 2. Counting writes (bucket ``ADD``), bucket closings (shard
    ``ADD ... buckets``) and shard closings are applied but their responses
    lost. botocore or msgcluster re-sends: a re-sent ``ADD`` is a set union
    (no change); a re-sent bucket closing fails ``NOT contains(buckets, j)``
    and goes on to repair the shard; a re-sent shard closing fails its
    condition. Nothing is counted twice and the cluster flips once."""
    key = await create(mc, queue_url)
    counting = DropApplied(limit=3)
    bucket_closings = DropApplied(limit=SHARDS)
    closing = DropApplied(limit=1 if layer == "botocore" else SHARDS)
    counting_rule = proxy.add_rule(every_other(counting_txn), counting)
    proxy.add_rule(bucket_closing, bucket_closings)
    proxy.add_rule(closing_txn, closing)
    run = Run()
    await drain(consumer, mc, queue_url, key, run)
    await assert_exact(mc, key, run)
    assert counting.dropped == 3
    assert bucket_closings.dropped == SHARDS
    assert closing.dropped == (1 if layer == "botocore" else SHARDS)
    assert counting_rule.hits > counting.dropped  # the re-sent ones
    lost = counting.dropped + bucket_closings.dropped + closing.dropped
    assert proxy.count("UpdateItem", status=0) + proxy.count("TransactWriteItems", status=0) == lost


# --------------------------------------------------------------------------- 4. flip and callback


@pytest.mark.parametrize(
    ("steps", "layer"),
    [
        pytest.param(("flip", "release"), "botocore", id="flip+release-botocore"),
        pytest.param(("flip",), "msgcluster", id="flip-msgcluster"),
        pytest.param(("claim",), "botocore", id="claim-botocore"),
        pytest.param(("claim",), "msgcluster", id="claim-msgcluster"),
    ],
)
async def test_flip_and_callback_writes_applied_response_lost(
    mc: msgcluster.Client,
    proxy: FaultProxy,
    queue_url: str,
    small_shards: int,
    steps: tuple[str, ...],
    layer: str,
    consumer: msgcluster.Client,
) -> None:
    """The cluster's flip, the callback's claim or its release is applied but
    its response is lost; the callback must still run exactly once, promptly.

    - flip, botocore layer: the re-sent flip fails its condition (already
      COMPLETE); maybe_flip re-reads the cluster and sends the event.
    - release, botocore layer: the re-sent release (conditional on the
      owner) applies again, harmlessly.
    - flip, msgcluster layer: maybe_flip does not retry; AwsConnectionError
      escapes mark_complete_batch after the count and the closing applied, the
      batch is not acknowledged, and its redelivery repairs the shard:
      maybe_flip finds the cluster COMPLETE with the callback PENDING and
      sends the completion event.
    - claim, botocore layer: the re-sent claim fails its condition (RUNNING,
      lease not expired) -- on our own claim. run_callback must recognise its
      own claim (callbackOwner, returned with the condition failure) and run
      the callback; before the fix it returned False and the callback stayed
      RUNNING until the lease (300 s) ran out.
    - claim, msgcluster layer: the claim gets AwsConnectionError; run_callback
      reads the cluster, finds its own claim and runs the callback.
    """
    matchers = {"flip": flip_update, "claim": claim_update, "release": release_update}
    key = await create(mc, queue_url)
    drops = {step: DropApplied(limit=1) for step in steps}
    rules = {step: proxy.add_rule(matchers[step], drops[step]) for step in steps}
    run = Run()
    errors = await drain(
        consumer, mc, queue_url, key, run, tolerate=layer == "msgcluster", visibility_timeout=1
    )
    await assert_exact(mc, key, run)
    assert {step: drop.dropped for step, drop in drops.items()} == dict.fromkeys(steps, 1)
    assert proxy.count("UpdateItem", status=0) == len(steps)
    if layer == "botocore":
        assert errors == []
        for step in steps:  # botocore re-sent the identical request
            assert rules[step].hits >= 2, step
    elif steps == ("flip",):
        assert [type(e) for e in errors] == [msgcluster.AwsConnectionError]
    else:
        assert errors == []


async def test_a_plain_write_that_meets_a_transaction_is_retried(
    pc: msgcluster.Client, proxy: FaultProxy, queue_url: str
) -> None:
    """TransactionConflictException (botocore does not retry it) is retried at
    the transport, as throttling is; past the attempts it is a typed error."""
    key = await pc.send_message(queue_url, {"n": 1})
    conflict = error(400, "TransactionConflictException", "Transaction is ongoing for the item")
    rule = proxy.add_rule(match_target("DeleteItem"), conflict, times=3)
    (message,) = await receive_all(pc, queue_url, 1)
    assert await pc.mark_complete(message)
    assert rule.hits == 3
    with pytest.raises(msgcluster.RecordNotFoundError):
        await pc.get_message_record(key)

    key = await pc.send_message(queue_url, {"n": 2})
    proxy.add_rule(match_target("DeleteItem"), conflict, times=50)
    (message,) = await receive_all(pc, queue_url, 1)
    with pytest.raises(msgcluster.TransactionConflictError):
        await pc.mark_complete(message)
