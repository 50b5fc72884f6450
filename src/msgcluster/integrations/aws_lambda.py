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

Every record goes through the same pipeline as ``Client.safe_process_batch``:
tracked messages and cluster tasks have duplicates skipped, one
``mark_complete_batch``, failures recorded, the cluster callback run for
completion events; plain bodies (anything msgcluster did not send, Extended
Client payloads included) are decoded as the handlers declare (a ``str``
handler takes text as it is) and dispatched. A ``Reject`` or an undecodable
body fails alone: under Lambda only the queue's redrive policy moves a
message to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, ValidationError
from ..queues._contract import ReceivedMessage
from ..read._incoming import MessageKind
from ..runtime._safe_batch import FifoFailure, check_batch_options, safe_process_batch
from ..worker import App
from ..worker._context import MessageContext
from ..worker._flow import Ack

if TYPE_CHECKING:
    from .._client import Client
    from ..read._incoming import SqsMessage
    from ..read._records import ParsedRecord

__all__ = ["SqsLambdaHandler", "lambda_handler"]

log = logging.getLogger("msgcluster.lambda")


class SqsLambdaHandler:
    """The Lambda handler: call it with ``(event, context)``.

    Keeps the event loop and the opened client across warm invocations.
    ``close()`` closes both (Lambda never needs it; scripts and tests do).
    """

    def __init__(self, app: App, concurrency: int, fifo_failure: FifoFailure) -> None:
        self.app = app
        self.concurrency = concurrency
        self.fifo_failure: FifoFailure = fifo_failure
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
        # One pipeline for every record: tracked, cluster tasks, completion
        # events, offloaded payloads and plain bodies msgcluster did not send.
        client = await self._open()
        return await safe_process_batch(
            client.ctx if client is not None else None,
            event,
            self._process,
            concurrency=self.concurrency,
            body_type=self.app.body_type,
            fifo_failure=self.fifo_failure,
        )

    async def _process(self, parsed: ParsedRecord[Any]) -> None:
        if parsed.kind is MessageKind.EVENT:
            # No completion callback on this app (the Client runs registered
            # ones before this): the event is spent, as in the worker.
            return
        record = parsed if parsed.tracked else None
        context = MessageContext(_received(parsed.message), None, record)
        try:
            await self.app.dispatch(parsed.body, context)
        except Ack:
            return


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


def lambda_handler(
    app: App, *, concurrency: int = 10, fifo_failure: FifoFailure = "rest_of_group"
) -> SqsLambdaHandler:
    """A Lambda handler ``(event, context) -> {"batchItemFailures": [...]}`` for
    ``app``; create it once at module level so warm invocations reuse it.
    ``fifo_failure``: on a FIFO queue, a failure fails the rest of its group
    (the default) or the rest of the batch (``"rest_of_batch"``). Bad arguments
    raise :class:`~msgcluster.ValidationError` here, not at the first event."""
    if not isinstance(app, App):
        raise ValidationError(
            f"lambda_handler(app): app must be a msgcluster.App with handlers registered, "
            f"got {type(app).__name__}"
        )
    check_batch_options(concurrency=concurrency, fifo_failure=fifo_failure)
    return SqsLambdaHandler(app, concurrency, fifo_failure)
