"""Queues by URI: one small backend contract, backends chosen by scheme.

::

    async with open_queue("memory://jobs?visibility_timeout=5") as queue:
        await queue.send([b"hello"])
        (message,) = await queue.receive(wait_seconds=1)
        await queue.ack([message])

Built in: ``memory://`` (in-process), ``sqs://`` (and SQS queue URLs), and
``dynamodb://<table>?queue=<name>`` (a queue stored in DynamoDB; create its
table with :func:`provision_dynamodb_queue_table`, see docs/dynamodb-queue.md).
Errors live with every other msgcluster error (``msgcluster.QueueError`` and
its subclasses).
"""

from ._contract import (
    AckResult,
    Capabilities,
    OutgoingMessage,
    Queue,
    ReceivedMessage,
    SendResult,
)
from ._dynamodb_provision import provision_dynamodb_queue_table
from ._memory import reset_memory_queues
from ._registry import (
    ENTRY_POINT_GROUP,
    OpeningQueue,
    QueueFactory,
    open_queue,
    register_backend,
    registered_schemes,
)
from ._uri import QueueURI

__all__ = [
    "ENTRY_POINT_GROUP",
    "AckResult",
    "Capabilities",
    "OpeningQueue",
    "OutgoingMessage",
    "Queue",
    "QueueFactory",
    "QueueURI",
    "ReceivedMessage",
    "SendResult",
    "open_queue",
    "provision_dynamodb_queue_table",
    "register_backend",
    "registered_schemes",
    "reset_memory_queues",
]
