"""``msgcluster redrive``: dead letters back to their queue, cluster tasks excepted.

A cluster task in a DLQ is usually counted already (recorded failed: the
cluster's ``failedCount`` has it). Moving it back would run its handler for
nothing (the worker skips a task that is already final), and `cluster
redrive`, which resends failed tasks from their records, would then run it a
second time. So this command leaves cluster tasks where they are and names
the clusters: `msgcluster cluster redrive <cluster id>` is the one way back
for them (it un-counts each task before sending it, so it counts once).
"""

from __future__ import annotations

from typing import Any, Final

from .._clusterkeys import cluster_id_of
from ..queues._admin import QueueAdmin
from ..read._incoming import MessageKind, SqsMessage, classify
from . import _sqs_admin as sqs_admin
from ._common import EXIT_OK, CliError, Invocation, NotFound, UsageError
from ._opening import admin, driver_of, opened, sqs_only, unsupported

__all__ = ["cluster_of", "redrive"]

_HINT: Final = "send them again with `msgcluster cluster redrive <cluster id>`"


def cluster_of(message_id: str, body: str | bytes, attributes: dict[str, Any]) -> str | None:
    """The cluster id when the message is a cluster task, else None."""
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            return None
    message_attributes = {
        name: value if isinstance(value, dict) else {"DataType": "String", "StringValue": value}
        for name, value in attributes.items()
    }
    incoming = classify(SqsMessage(id=message_id, body=body, message_attributes=message_attributes))
    if incoming.kind is MessageKind.TASK and incoming.key is not None:
        return cluster_id_of(incoming.key)
    return None


async def redrive(inv: Invocation) -> int:
    message_id: str | None = inv.args.id
    if (message_id is None) == (not inv.args.all):
        raise UsageError("redrive takes a message id or --all (not both)")
    async with opened(inv, by_id=None if message_id is None else "redrive <id>") as queue:
        if isinstance(driver_of(queue), QueueAdmin):
            count, clusters = await _redrive_admin(admin(queue, "redrive"), message_id)
        elif message_id is not None:
            raise unsupported(queue.uri, "redrive <id>")
        else:
            count, clusters = await sqs_admin.redrive_all(
                sqs_only(queue, "redrive --all"), keep=cluster_of
            )
        if message_id is not None and count == 0:
            raise NotFound(f"no dead letter {message_id} in {queue.uri}")
        doc: dict[str, Any] = {
            "queue": queue.uri,
            "id": message_id,
            "redriven": count,
            "cluster_tasks_left": sum(clusters.values()),
            "clusters": sorted(clusters),
        }
    if inv.out.json:
        inv.out.document(doc)
        return EXIT_OK
    inv.out.line(f"moved {count} dead letter(s) back to {doc['queue']}")
    if clusters:
        inv.out.line(
            f"left {doc['cluster_tasks_left']} cluster task(s) in the dead-letter queue "
            f"(clusters {', '.join(doc['clusters'])}): {_HINT}"
        )
    return EXIT_OK


async def _redrive_admin(admin: QueueAdmin, message_id: str | None) -> tuple[int, dict[str, int]]:
    clusters: dict[str, int] = {}
    if message_id is not None:
        message = await admin.get_message(message_id)
        if message is None or message.state != "dead_letter":
            return 0, clusters
        cluster = cluster_of(message.id, message.body, dict(message.attributes))
        if cluster is not None:
            raise CliError(f"dead letter {message_id} is a task of cluster {cluster}: {_HINT}")
        return await admin.redrive(message_id), clusters
    moved = 0
    async for message in admin.list_messages(dead_letters=True):
        cluster = cluster_of(message.id, message.body, dict(message.attributes))
        if cluster is not None:
            clusters[cluster] = clusters.get(cluster, 0) + 1
        else:
            moved += await admin.redrive(message.id)
    return moved, clusters
