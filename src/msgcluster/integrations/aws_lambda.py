"""Run an :class:`~msgcluster.worker.App` as an AWS Lambda handler for SQS events.

::

    app = msgcluster.App(client=msgcluster.Client(table="jobs", bucket="jobs-data"))

    @app.handler(Resize)
    async def resize(job: Resize) -> None: ...

    handler = lambda_handler(app)   # the function's handler: module.handler

One event loop and one opened ``Client`` live for the life of the execution
environment: created on the first invocation, reused by every warm one (a
Lambda freezes the process between invocations; nothing is torn down).
The handler returns ``{"batchItemFailures": [...]}``: enable
``ReportBatchItemFailures`` on the event source mapping.

Tracked messages and cluster tasks go through ``Client.safe_process_batch``
(duplicates skipped, one ``mark_complete_batch``, failures recorded, cluster
callback run for completion events); plain bodies are decoded into the app's
types and dispatched directly. A ``Reject`` or an undecodable body is
reported as a failure: under Lambda only the queue's redrive policy moves a
message to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .._errors import ConfigurationError, EnvelopeError, MalformedEventError
from .._lambda import _records_of
from .._records import SqsMessage, parse_envelope
from ..queues._contract import ReceivedMessage
from ..worker._context import MessageContext
from ..worker._flow import Ack

if TYPE_CHECKING:
    from .._client import Client
    from .._records import ParsedRecord
    from ..worker import App

__all__ = ["SqsLambdaHandler", "lambda_handler"]

log = logging.getLogger("msgcluster.lambda")


class SqsLambdaHandler:
    """The Lambda handler: call it with ``(event, context)``.

    Keeps the event loop and the opened client across warm invocations.
    ``close()`` closes both (Lambda never needs it; scripts and tests do).
    """

    def __init__(self, app: App, concurrency: int) -> None:
        self.app = app
        self.concurrency = concurrency
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: Client | None = None
        self.invocations = 0

    def __call__(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        if self.loop is None or self.loop.is_closed():
            self.loop = asyncio.new_event_loop()
        self.invocations += 1
        return self.loop.run_until_complete(self._handle(event))

    def close(self) -> None:
        """Close the client this handler opened, then its event loop."""
        if self.loop is None or self.loop.is_closed():
            return
        if self.client is not None:
            client, self.client = self.client, None
            self.loop.run_until_complete(client.aclose())
        self.loop.close()

    async def _open(self) -> Client | None:
        if self.client is None and self.app.client is not None:
            # The client's connections belong to this handler's loop: it is
            # opened here, on first use, and must not already be open.
            client = self.app.client
            if client.is_open:
                raise ConfigurationError(
                    "lambda_handler opens the App's client itself, in its own event loop: "
                    "give App(client=...) a Client that is not open yet"
                )
            await client.__aenter__()
            self.client = client
        return self.client

    async def _handle(self, event: dict[str, Any]) -> dict[str, Any]:
        # The same checks as safe_process_batch: a clear error for a non-SQS event.
        messages = _records_of(event)
        tracked: list[SqsMessage] = []
        failures: list[dict[str, str]] = []
        for message in messages:
            if _is_envelope(message):
                tracked.append(message)
            elif not await self._plain(message):
                failures.append({"itemIdentifier": message.id})
        if tracked:
            client = await self._open()
            if client is None:
                raise MalformedEventError(
                    "the event holds tracked messages (sent with Client.send_message or "
                    "cluster tasks): give the App a client, App(client=msgcluster.Client(...))"
                )
            result = await client.safe_process_batch(
                {"Records": tracked},
                self._process_tracked,
                concurrency=self.concurrency,
                body_type=self.app.body_type,
            )
            failures.extend(result["batchItemFailures"])
        return {"batchItemFailures": failures}

    async def _process_tracked(self, parsed: ParsedRecord[Any]) -> None:
        message = parsed.message
        context = MessageContext(_received(message), None, parsed)
        await self.app.dispatch(parsed.body, context)

    async def _plain(self, message: SqsMessage) -> bool:
        """Run a plain body's handler; True if it succeeded."""
        try:
            body = self.app.decode(message.body.encode())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("message %s is poison: %s", message.id, exc)
            return False
        try:
            await self.app.dispatch(body, MessageContext(_received(message), None))
        except Ack:
            return True
        except Exception as exc:
            log.warning("message %s failed: %r", message.id, exc)
            return False
        return True


def _is_envelope(message: SqsMessage) -> bool:
    try:
        parse_envelope(message)
    except EnvelopeError:
        # An SQS Extended Client pointer is tracked too (its envelope is in S3).
        return '"s3BucketName"' in message.body and '"s3Key"' in message.body
    return True


def _received(message: SqsMessage) -> ReceivedMessage:
    return ReceivedMessage(
        id=message.id,
        body=message.body.encode(),
        receive_count=message.receive_count,
        attributes={
            k: str(v.get("stringValue", v.get("StringValue", "")))
            for k, v in message.message_attributes.items()
            if isinstance(v, dict)
        },
        group_id=message.group_id,
        receipt=message.receipt_handle,
    )


def lambda_handler(app: App, *, concurrency: int = 10) -> SqsLambdaHandler:
    """A Lambda handler ``(event, context) -> {"batchItemFailures": [...]}`` for
    ``app``; create it once at module level so warm invocations reuse it."""
    return SqsLambdaHandler(app, concurrency)
