"""Safe operator commands: provision keeps what exists and says what it did,
read-only commands never write, dead-letter redrive leaves cluster tasks to
`cluster redrive` (never both), one status spelling everywhere, failed tasks
listed with their errors. Through the Client and the CLI."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import receive_all
from test_cli import cli

import msgcluster
from msgcluster import Status
from msgcluster.local import LocalAWS
from msgcluster.queues import open_queue


async def max_receive_count(mc: msgcluster.Client, url: str) -> int:
    attributes = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    return int(json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"])


async def test_provision_keeps_existing_settings_and_reports(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str]
) -> None:
    queue = names["queue"]
    url = (await mc.provision([queue], max_receive_count=3))[queue]
    again = await mc.provision_report([queue])
    assert await max_receive_count(mc, url) == 3  # not reset to the default 5
    kept = [s for s in again.steps if s.resource == f"queue {queue}"]
    assert [s.action for s in kept] == ["kept"]
    assert "maxReceiveCount 3" in kept[0].detail
    assert all(s.action in ("unchanged", "kept") for s in again.steps), again.steps

    changed = await mc.provision_report([queue], max_receive_count=7)
    assert await max_receive_count(mc, url) == 7
    assert any(s.action == "updated" and "3 -> 7" in s.detail for s in changed.steps)

    table = ["--table", names["table"], "--bucket", names["bucket"]]
    fresh = f"q-{uuid.uuid4().hex[:8]}"
    dry = (await cli(local_aws, "provision", "--queue", fresh, "--dry-run", *table, "--json")).json
    assert dry["dry_run"] is True
    assert {"resource": f"queue {fresh}", "action": "would be created"} in [
        {k: s[k] for k in ("resource", "action")} for s in dry["steps"]
    ]
    with pytest.raises(msgcluster.QueueNotFoundError):
        await mc.get_queue_url(fresh)  # nothing was written
    text = (await cli(local_aws, "provision", "--queue", queue, *table)).out
    assert "kept" in text
    assert "maxReceiveCount 7" in text


async def test_read_only_commands_never_create_queues(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str]
) -> None:
    table = f"queues-{uuid.uuid4().hex[:8]}"
    options = {"client": mc.dynamodb}
    async with open_queue(f"dynamodb://{table}?queue=real&provision=true", **options) as q:
        await q.send(["one"])
    before = (await mc.dynamodb.scan(TableName=table))["Items"]
    for command in ("qstat", "dlq", "ls"):
        run = await cli(local_aws, command, f"dynamodb://{table}?queue=typo", expect=3)
        assert "does not exist" in run.err
    run = await cli(local_aws, "qstat", f"dynamodb://{table}", expect=3)
    assert "queue=default" in run.err  # says which queue it looked for
    assert (await mc.dynamodb.scan(TableName=table))["Items"] == before
    assert (await cli(local_aws, "qstat", f"dynamodb://{table}?queue=real", "--json")).json


async def _dead_letter_a_task_and_a_plain_message(
    mc: msgcluster.Client, url: str
) -> tuple[str, str]:
    """A cluster task recorded failed and its message in the DLQ (as a consumer
    that gave up leaves it), plus a plain dead letter; (cluster id, dlq url)."""
    key = await mc.create_message_cluster(url, [{"n": 1}])
    (message,) = await receive_all(mc, url, 1)
    await mc.mark_failed(mc.read_sqs_record(message), RuntimeError("boom"), final=True)
    dlq_url = url + "-dlq"
    await mc.sqs.send_message(QueueUrl=dlq_url, MessageBody=message["Body"])
    await mc.sqs.send_message(QueueUrl=dlq_url, MessageBody="plain dead letter")
    await mc.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return key.pk.removeprefix("SQSMessage$"), dlq_url


async def test_redrive_leaves_cluster_tasks_to_cluster_redrive(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str], queue_url: str
) -> None:
    cid, dlq_url = await _dead_letter_a_task_and_a_plain_message(mc, queue_url)
    table = ["--table", names["table"], "--bucket", names["bucket"]]
    moved = (await cli(local_aws, "redrive", f"sqs://{names['queue']}", "--all", "--json")).json
    assert (moved["redriven"], moved["cluster_tasks_left"], moved["clusters"]) == (1, 1, [cid])
    back = await receive_all(mc, queue_url, 2)  # with the cluster's completion event
    assert "plain dead letter" in [m["Body"] for m in back]
    left = await receive_all(mc, dlq_url, 1)  # the task is still there, visible again
    assert json.loads(left[0]["Body"])["type"] == "task"
    await mc.sqs.change_message_visibility(
        QueueUrl=dlq_url, ReceiptHandle=left[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    text = (await cli(local_aws, "redrive", f"sqs://{names['queue']}", "--all")).out
    assert "cluster redrive" in text  # names the one way back for it

    failed = (await cli(local_aws, "cluster", "failed", cid, *table, "--json")).json
    assert failed["count"] == 1
    assert failed["failed"][0]["errors"][0]["message"].endswith("boom")
    assert "boom" in (await cli(local_aws, "cluster", "failed", cid, *table)).out
    redriven = (await cli(local_aws, "cluster", "redrive", cid, *table, "--json")).json
    assert redriven["redriven"] == 1
    tasks = [t async for t in mc.cluster_tasks(cid, ["pre_flight"])]
    assert len(tasks) == 1  # un-counted once, by cluster redrive alone


async def test_dynamodb_redrive_refuses_a_cluster_task(
    local_aws: LocalAWS, mc: msgcluster.Client
) -> None:
    table = f"queues-{uuid.uuid4().hex[:8]}"
    uri = f"dynamodb://{table}?queue=work"
    async with open_queue(uri + "&provision=true", client=mc.dynamodb) as queue:
        await queue.send(["plain"])
        await mc.create_message_cluster(uri, [{"n": 1}])
        admin = queue.driver
        ids = [m.id async for m in admin.list_messages()]
        for message_id in ids:
            await admin.dead_letter_message(message_id)
        dead = [m async for m in admin.list_messages(dead_letters=True)]
        (task_id,) = [m.id for m in dead if b'"task"' in m.body]
    refused = await cli(local_aws, "redrive", uri, task_id, expect=1)
    assert "cluster redrive" in refused.err
    moved = (await cli(local_aws, "redrive", uri, "--all", "--json")).json
    assert (moved["redriven"], moved["cluster_tasks_left"]) == (1, 1)


async def test_one_status_spelling_everywhere(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str], queue_url: str
) -> None:
    running = await mc.create_message_cluster(queue_url, [{"n": 1}, {"n": 2}])
    cancelled = await mc.create_message_cluster(queue_url, [{"n": 3}])
    await mc.cancel_message_cluster(cancelled)
    for spelling in ("IN PROGRESS", "in_progress", "In-Progress", Status.IN_PROGRESS):
        found = [c.key async for c in mc.list_clusters(status=spelling)]
        assert found == [running], spelling
    for spelling in ("CANCELLED", "cancelled", "canceled"):
        assert [c.key async for c in mc.list_clusters(status=spelling)] == [cancelled]
    assert len([t async for t in mc.cluster_tasks(running, ["pre flight", "PRE_FLIGHT"])]) == 2
    with pytest.raises(msgcluster.ValidationError, match="valid: PRE FLIGHT"):
        [c async for c in mc.list_clusters(status="runing")]
    table = ["--table", names["table"], "--bucket", names["bucket"]]
    listed: Any = (
        await cli(local_aws, "cluster", "ls", "--status", "cancelled", *table, "--json")
    ).json
    assert [c["status"] for c in listed["clusters"]] == ["ERROR"]
    assert [c["cancelled"] for c in listed["clusters"]] == [True]
    for spelling in ("in_progress", "IN PROGRESS", "in-progress"):
        listed = (
            await cli(local_aws, "cluster", "ls", "--status", spelling, *table, "--json")
        ).json
        assert listed["count"] == 1
