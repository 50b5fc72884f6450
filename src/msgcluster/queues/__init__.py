"""Queues by URI: one small backend contract, backends chosen by scheme.

::

    async with open_queue("memory://jobs?visibility_timeout=5") as queue:
        await queue.send(f"job {i}".encode() for i in range(1_000))  # any number
        async for message in queue:  # long polls until the queue is closed
            ...
            await queue.ack([message])

``open_queue`` returns the portable layer (:class:`Queue`): any number of
messages per call, split by the backend's limits, sent concurrently, retryable
entry failures retried with backoff, the rest reported per message. Backends
implement the small :class:`Driver` protocol (``queue.driver``).

Built in: ``memory://`` (in-process), ``sqs://`` (and SQS queue URLs), and
``dynamodb://<table>?queue=<name>`` (a queue stored in DynamoDB; create its
table with :func:`provision_dynamodb_queue_table`, see docs/dynamodb-queue.md).
Errors live with every other msgcluster error (``msgcluster.QueueError`` and
its subclasses).
"""

from ._contract import (
    AckResult,
    Capabilities,
    Driver,
    OutgoingMessage,
    Queue,
    ReceivedMessage,
    SendResult,
)
from ._dynamodb_provision import provision_dynamodb_queue_table
from ._memory import reset_memory_queues
from ._offload import PayloadStore
from ._portable import PortableQueue
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
    "Driver",
    "OpeningQueue",
    "OutgoingMessage",
    "PayloadStore",
    "PortableQueue",
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
