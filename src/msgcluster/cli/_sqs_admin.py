"""The queue commands on ``sqs://``, through SQS's own API: SQS cannot address a
message by id, so counts, purge, dead-letter stats, reconcile and redrive use
its queue attributes, PurgeQueue and a receive / send / delete loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from .._aws_errors import aws_errors
from ..queues._admin import QueueStats
from ..queues._sqs import REASON_ATTRIBUTE
from ._common import EXIT_OK, CliError, Invocation, NotFound

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..queues._sqs import SqsQueue

    # (message id, body, message attributes) -> the cluster to keep it for, or None.
    Keep = Callable[[str, str, dict[str, Any]], str | None]

__all__ = ["counts", "dead_letter_url", "dlq_stats", "purge", "reconcile", "redrive_all", "stats"]

_COUNT_ATTRIBUTES: Final = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
# How long a message received by `redrive --all` stays hidden from other
# consumers while it is moved.
_HOLD_SECONDS: Final = 60


async def reconcile(inv: Invocation, queue: SqsQueue) -> int:
    """Record the tracked messages a dead consumer left unrecorded in the DLQ
    (``Client.reconcile_dead_letters``): needs the table (``--table``)."""
    from ._cluster_cmds import client

    url = await dead_letter_url(queue)
    async with client(inv) as mc:
        report = await mc.reconcile_dead_letters(url)
    if inv.out.json:
        inv.out.document({"queue": queue.uri, "dlq": url, **msgspec.structs.asdict(report)})
    else:
        inv.out.line(
            f"{report.seen} dead letter(s): {report.recorded} recorded as failed now, "
            f"{report.already_final} already final, {report.untracked} not tracked"
        )
    return EXIT_OK


async def counts(queue: SqsQueue, url: str) -> tuple[int, int, int]:
    with aws_errors(resource=url):
        response = await queue.client.get_queue_attributes(
            QueueUrl=url, AttributeNames=list(_COUNT_ATTRIBUTES)
        )
    attributes = response.get("Attributes", {})
    visible, in_flight, delayed = (int(attributes.get(name, "0")) for name in _COUNT_ATTRIBUTES)
    return visible, in_flight, delayed


async def dead_letter_url(queue: SqsQueue) -> str:
    if queue.dlq_arn is None:
        raise NotFound(f"{queue.uri} has no dead-letter queue (no RedrivePolicy)")
    *_, account, name = queue.dlq_arn.split(":", 5)
    with aws_errors(resource=queue.dlq_arn):
        found = await queue.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
    return str(found["QueueUrl"])


async def stats(queue: SqsQueue) -> QueueStats:
    visible, in_flight, delayed = await counts(queue, queue.url)
    dead: int | None = None
    if queue.dlq_arn is not None:
        dead = sum(await counts(queue, await dead_letter_url(queue)))
    return QueueStats(
        name=queue.name,
        visible=visible,
        in_flight=in_flight,
        delayed=delayed,
        dead_letters=dead,
        fifo=queue.capabilities.fifo,
    )


async def dlq_stats(queue: SqsQueue) -> QueueStats:
    url = await dead_letter_url(queue)
    visible, in_flight, delayed = await counts(queue, url)
    return QueueStats(
        name=url.rstrip("/").rsplit("/", 1)[-1],
        visible=visible,
        in_flight=in_flight,
        delayed=delayed,
        fifo=queue.capabilities.fifo,
    )


async def purge(queue: SqsQueue, dead_letters: bool) -> int:
    """PurgeQueue; SQS does not say how many, so the count is its approximate depth."""
    url = await dead_letter_url(queue) if dead_letters else queue.url
    count = sum(await counts(queue, url))
    with aws_errors(resource=url):
        await queue.client.purge_queue(QueueUrl=url)
    return count


async def redrive_all(queue: SqsQueue, *, keep: Keep) -> tuple[int, dict[str, int]]:
    """Move every message of the DLQ back: receive, send to the queue, delete.

    A message is deleted from the DLQ only after the queue accepted it, so a
    crash leaves a copy, never a loss. (SQS's StartMessageMoveTask does this
    server-side but is not implemented by moto, the local server.) A message
    ``keep`` names a cluster for stays in the DLQ (held until the end, then
    visible there again); returns (moved, {cluster id: tasks kept}).
    """
    dlq_url = await dead_letter_url(queue)
    client, moved = queue.client, 0
    kept: dict[str, dict[str, Any]] = {}  # by id: one held again after 60 s counts once
    clusters: dict[str, set[str]] = {}
    try:
        while True:
            with aws_errors(resource=dlq_url):
                response = await client.receive_message(
                    QueueUrl=dlq_url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=_HOLD_SECONDS,
                    WaitTimeSeconds=0,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["MessageGroupId"],
                )
            messages = []
            for message in response.get("Messages", []):
                cluster = keep(
                    message["MessageId"], message["Body"], message.get("MessageAttributes", {})
                )
                if cluster is None:
                    messages.append(message)
                else:
                    kept[message["MessageId"]] = message
                    clusters.setdefault(cluster, set()).add(message["MessageId"])
            if messages:
                moved += await move_batch(queue, dlq_url, messages)
            elif not response.get("Messages"):
                # Short polling samples a subset of SQS's servers: stop only
                # when the DLQ also reports nothing visible.
                visible, _, _ = await counts(queue, dlq_url)
                if visible == 0:
                    return moved, {cluster: len(ids) for cluster, ids in clusters.items()}
                await anyio.sleep(1)
    finally:
        await _release(queue, dlq_url, list(kept.values()))


async def _release(queue: SqsQueue, dlq_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages[start : start + 10])
        ]
        with aws_errors(resource=dlq_url):
            await queue.client.change_message_visibility_batch(QueueUrl=dlq_url, Entries=entries)


async def move_batch(queue: SqsQueue, dlq_url: str, messages: list[dict[str, Any]]) -> int:
    entries = [resend_entry(str(i), m, queue.capabilities.fifo) for i, m in enumerate(messages)]
    with aws_errors(resource=queue.url):
        sent = await queue.client.send_message_batch(QueueUrl=queue.url, Entries=entries)
    ok = [messages[int(entry["Id"])] for entry in sent.get("Successful", [])]
    if ok:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ok)]
        with aws_errors(resource=dlq_url):
            await queue.client.delete_message_batch(QueueUrl=dlq_url, Entries=entries)
    failed = sent.get("Failed", [])
    if failed:
        first = failed[0]
        raise CliError(
            f"{len(failed)} dead letter(s) could not be sent back to {queue.uri} "
            f"({first.get('Code')}: {first.get('Message')}); they stay on the dead-letter queue"
        )
    return len(ok)


def resend_entry(entry_id: str, message: dict[str, Any], fifo: bool) -> dict[str, Any]:
    attributes = {
        name: {
            key: value
            for key, value in attribute.items()
            if key in ("DataType", "StringValue", "BinaryValue")
        }
        for name, attribute in message.get("MessageAttributes", {}).items()
        if name != REASON_ATTRIBUTE
    }
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message["Body"]}
    if attributes:
        entry["MessageAttributes"] = attributes
    if fifo:
        group = message.get("Attributes", {}).get("MessageGroupId") or "redrive"
        entry["MessageGroupId"] = group
        entry["MessageDeduplicationId"] = message["MessageId"]
    return entry
