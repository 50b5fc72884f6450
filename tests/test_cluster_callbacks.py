"""Per-cluster completion callbacks: a cluster names its callback at creation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from conftest import as_lambda_record, receive_all

import msgcluster
from msgcluster import App, MessageClusterRecord, Worker


async def sqs_event_of(mc: msgcluster.Client, url: str, n: int) -> dict[str, Any]:
    """An SQS Lambda event of the next ``n`` messages of the queue."""
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = response["Attributes"]["QueueArn"]
    return {"Records": [as_lambda_record(m, arn) for m in await receive_all(mc, url, n)]}


def _app(mc: msgcluster.Client, queue_url: str, ran: Counter[tuple[str, str]]) -> App:
    app = App(mc, queue=queue_url)

    @app.handler(int)
    async def handle(n: int) -> None: ...

    @app.on_cluster_complete(name="thumbnails")
    async def thumbnails(record: MessageClusterRecord, get_globals: Any) -> None:
        ran[("thumbnails", record.id)] += 1

    @app.on_cluster_complete(name="reports")
    async def reports(record: MessageClusterRecord, get_globals: Any) -> None:
        ran[("reports", record.id)] += 1

    @app.on_cluster_complete
    async def default(record: MessageClusterRecord, get_globals: Any) -> None:
        ran[("default", record.id)] += 1

    return app


async def test_each_kind_of_cluster_runs_its_own_callback_once(
    mc: msgcluster.Client, queue_url: str
) -> None:
    ran: Counter[tuple[str, str]] = Counter()
    app = _app(mc, queue_url, ran)
    thumbs = [await app.create_cluster(range(5), callback="thumbnails") for _ in range(2)]
    report = await app.create_cluster(range(3), callback="reports")
    plain = await app.create_cluster(range(2))
    assert (await mc.get_message_cluster(thumbs[0])).callback_name == "thumbnails"
    await Worker(app, queue_url, burst=True, wait_seconds=1, concurrency=4).run()
    expected = Counter(
        {("thumbnails", key.pk.removeprefix("SQSMessage$")): 1 for key in thumbs}
        | {("reports", report.pk.removeprefix("SQSMessage$")): 1}
        | {("default", plain.pk.removeprefix("SQSMessage$")): 1}
    )
    assert ran == expected
    for key in [*thumbs, report, plain]:
        record = await mc.get_message_cluster(key, consistent_read=True)
        assert record.callback_status is msgcluster.CallbackStatus.DONE


async def test_a_callback_name_must_be_registered_and_well_formed(
    mc: msgcluster.Client, queue_url: str
) -> None:
    app = _app(mc, queue_url, Counter())
    with pytest.raises(msgcluster.ValidationError, match="no completion callback named 'nope'"):
        await app.create_cluster(range(2), callback="nope")
    with pytest.raises(msgcluster.ValidationError, match="callback name"):
        await mc.create_message_cluster(queue_url, range(2), callback="bad name!")
    with pytest.raises(msgcluster.ConfigurationError, match="named 'reports' is already"):

        @app.on_cluster_complete(name="reports")
        async def other(record: MessageClusterRecord, get_globals: Any) -> None: ...


async def test_a_cluster_naming_a_callback_this_process_lacks_is_left_pending(
    mc: msgcluster.Client, queue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Created through the Client with a name no App here registers: the worker
    completes the tasks, does not claim the callback, and says why."""
    ran: Counter[tuple[str, str]] = Counter()
    app = _app(mc, queue_url, ran)
    key = await mc.create_message_cluster(queue_url, range(3), callback="invoices")
    with caplog.at_level("WARNING", logger="msgcluster"):
        await Worker(app, queue_url, burst=True, wait_seconds=1).run()
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert (record.status, record.completed) == (msgcluster.Status.COMPLETE, 3)
    assert record.callback_status is msgcluster.CallbackStatus.PENDING
    assert record.callback_attempts == 0
    assert not ran
    assert "names completion callback 'invoices'" in caplog.text


async def test_safe_process_batch_runs_the_named_callback(
    mc: msgcluster.Client, queue_url: str
) -> None:
    """The Client-level registry (what safe_process_batch and the Lambda adapter
    use) dispatches by name too."""
    ran: list[str] = []

    @mc.register_cluster_callback
    async def default(record: MessageClusterRecord, get_globals: Any) -> None:
        ran.append("default")

    async def named(record: MessageClusterRecord, get_globals: Any) -> None:
        ran.append("named")

    mc.register_cluster_callback(named, name="named")
    key = await mc.create_message_cluster(queue_url, [1], callback="named")
    event = await sqs_event_of(mc, queue_url, 1)
    assert (await mc.safe_process_batch(event, lambda record: None)) == {"batchItemFailures": []}
    event = await sqs_event_of(mc, queue_url, 1)  # the completion event
    await mc.safe_process_batch(event, lambda record: None)
    assert ran == ["named"]
    record = await mc.get_message_cluster(key, consistent_read=True)
    assert record.callback_status is msgcluster.CallbackStatus.DONE
