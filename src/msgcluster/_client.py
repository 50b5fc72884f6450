"""The public :class:`Client`: one aiobotocore session, long-lived AWS clients.

Its message-cluster methods are in :mod:`msgcluster._client_clusters`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from . import _aws, _provision
from ._aws_errors import aws_errors
from ._batching import as_list
from ._client_clusters import ClusterMethods
from ._context import Context
from ._errors import ConfigurationError
from ._settings import RetryMode, Settings
from .clusters import _lookups
from .messages import _messages, _sending
from .read import _records
from .runtime import _consume
from .runtime import _safe_batch as _lambda

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable, Sequence
    from types import TracebackType

    from ._provision import ProvisionReport
    from ._results import BatchSendResult
    from ._schemas import MessageRecord, RecordKey, Status
    from .read._records import ParsedRecord
    from .runtime._safe_batch import ProcessRecord

__all__ = ["Client"]

B = TypeVar("B")


class Client(ClusterMethods):
    """Entry point: ``async with Client(table=..., bucket=...) as mc: ...``.

    Settings come from the arguments, then the environment
    (``MSGCLUSTER_TABLE``, ``MSGCLUSTER_BUCKET``, ``AWS_ENDPOINT_URL``,
    ``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_REGION``), then the defaults listed
    in :class:`Settings`; ``endpoints={"sqs": ..., "s3": ..., "dynamodb":
    ...}`` overrides the endpoint of one service. Every value is checked
    here (ConfigurationError). The
    connection pool of each AWS client is sized to ``concurrency``, which is
    also the limit on concurrent AWS requests issued by batch operations.
    """

    def __init__(
        self,
        table: str | None = None,
        bucket: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        endpoints: dict[str, str] | None = None,
        concurrency: int | None = None,
        retry_mode: RetryMode | None = None,
        max_attempts: int | None = None,
        retention_days: int | None = None,
        max_message_bytes: int | None = None,
        max_meta_bytes: int | None = None,
        max_receive_count: int | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile: str | None = None,
        session: AioSession | None = None,
        claim: bool | None = None,
        claim_seconds: int | None = None,
    ) -> None:
        self.settings = Settings.resolve(
            table=table,
            bucket=bucket,
            endpoint_url=endpoint_url,
            region=region,
            endpoints=endpoints,
            concurrency=concurrency,
            retry_mode=retry_mode,
            max_attempts=max_attempts,
            retention_days=retention_days,
            max_message_bytes=max_message_bytes,
            max_meta_bytes=max_meta_bytes,
            max_receive_count=max_receive_count,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            profile=profile,
            claim=claim,
            claim_seconds=claim_seconds,
        )
        if session is not None and not isinstance(session, AioSession):
            raise ConfigurationError("session must be an aiobotocore AioSession (or None)")
        self._session = session
        self._stack: contextlib.AsyncExitStack | None = None
        self._ctx: Context | None = None
        self._cluster_callbacks: list[Any] = []

    def with_options(self, **changes: Any) -> Client:
        """A new (not yet open) Client with these settings, and ``changes``
        (``mc.with_options(claim=True)``)."""
        return Client._from_settings(self.settings.replace(**changes))

    @classmethod
    def _from_settings(cls, settings: Settings) -> Client:
        """A Client with settings resolved already (the CLI's)."""
        client = cls()
        client.settings = settings
        return client

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise ConfigurationError("this Client is already open")
        settings = self.settings
        session = self._session or AioSession(profile=settings.profile)
        config = AioConfig(
            max_pool_connections=settings.concurrency,
            retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
            connect_timeout=_aws.CONNECT_TIMEOUT,
            read_timeout=60,
        )
        region = _aws.region_for(session, settings.region)
        credentials = settings.credentials()
        stack = contextlib.AsyncExitStack()

        async def client(service: str, config: AioConfig = config) -> Any:
            return await _aws.open_client(
                stack,
                session,
                service,
                config=config,
                region=region,
                endpoint=settings.endpoint_for(service),
                credentials=credentials,
            )

        try:
            sqs = await client("sqs")
            # Items are built and validated by msgcluster's own codec; botocore's
            # client-side re-validation of every nested AttributeValue cost ~20%
            # of client CPU in benchmarks/bench_send.py, so it is off for DynamoDB
            # (AWS still validates server-side, and errors stay typed).
            ddb = await client("dynamodb", config.merge(AioConfig(parameter_validation=False)))
            s3 = await client("s3")
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._ctx = Context(settings, sqs, ddb, s3)
        self._ctx.lookups = _lookups.LOOKUPS
        self._ctx.cluster_callbacks = self._cluster_callbacks
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stack, ctx, self._stack, self._ctx = self._stack, self._ctx, None, None
        if ctx is not None:
            await ctx.aclose()
        if stack is not None:
            await stack.aclose()

    @property
    def is_open(self) -> bool:
        """True between ``__aenter__`` and ``aclose()``."""
        return self._ctx is not None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise ConfigurationError("the Client is not open: use `async with Client(...) as mc`")
        return self._ctx

    @property
    def sqs(self) -> Any:
        """The long-lived aiobotocore SQS client (for calls msgcluster does not wrap)."""
        return self.ctx.sqs

    @property
    def dynamodb(self) -> Any:
        """The long-lived DynamoDB client (botocore parameter validation is off on it)."""
        return self.ctx.ddb

    @property
    def s3(self) -> Any:
        return self.ctx.s3

    def __repr__(self) -> str:
        state = "open" if self._ctx is not None else "closed"
        return f"<msgcluster.Client table={self.settings.table!r} {state}>"

    # ------------------------------------------------------------------ setup

    async def provision(
        self,
        queues: Iterable[str] = (),
        *,
        max_receive_count: int | None = None,
        visibility_timeout: int | None = None,
    ) -> dict[str, str]:
        """Create the table, bucket and queues (each with a DLQ), idempotently;
        ``{queue name: URL}``. An existing queue's settings are kept unless
        asked for (see :meth:`provision_report` for what was done)."""
        report = await self.provision_report(
            queues, max_receive_count=max_receive_count, visibility_timeout=visibility_timeout
        )
        return report.urls

    async def provision_report(
        self,
        queues: Iterable[str] = (),
        *,
        max_receive_count: int | None = None,
        visibility_timeout: int | None = None,
        dry_run: bool = False,
    ) -> ProvisionReport:
        """:meth:`provision`, reporting each step (created, updated, kept,
        unchanged); ``dry_run=True`` writes nothing and says what it would do."""
        return await _provision.provision(
            self.ctx,
            as_list(queues, "queue names"),
            max_receive_count=max_receive_count,
            visibility_timeout=visibility_timeout,
            dry_run=dry_run,
        )

    async def get_queue_url(self, name: str) -> str:
        with aws_errors(resource=name):
            return (await self.ctx.sqs.get_queue_url(QueueName=name))["QueueUrl"]

    # ------------------------------------------------------------------ send

    async def send_message(
        self,
        queue_url: str,
        body: Any,
        meta: Any = None,
        *,
        delay_seconds: int = 0,
        attributes: dict[str, Any] | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
    ) -> RecordKey:
        """Write a PRE FLIGHT record, then send ``body``; returns the record key.

        ``queue_url`` is an SQS queue URL or a queue URI (``sqs://name``,
        ``dynamodb://table?queue=name``): the message goes through the queue
        layer, on this Client's AWS clients, and its record names that queue."""
        return await _sending.send_message(
            self.ctx,
            queue_url,
            body,
            meta,
            delay_seconds=delay_seconds,
            attributes=attributes,
            group_id=group_id,
            dedup_id=dedup_id,
        )

    async def send_message_batch(
        self,
        queue_url: str,
        bodies: Iterable[Any] | AsyncIterable[Any],
        meta: Any = None,
        *,
        delay_seconds: int = 0,
        attributes: dict[str, Any] | None = None,
        group_id: str | None = None,
        raise_on_failure: bool = True,
    ) -> BatchSendResult:
        """Send any number of bodies (or :class:`OutgoingMessage`), batched and concurrent.

        Returns the keys in input order. Entries that fail are listed in
        ``result.failures``; with ``raise_on_failure`` (the default) a
        :class:`BatchSendError` carrying that result is raised after every
        other entry was sent.
        """
        return await _sending.send_message_batch(
            self.ctx,
            queue_url,
            bodies,
            meta,
            delay_seconds=delay_seconds,
            attributes=attributes,
            group_id=group_id,
            raise_on_failure=raise_on_failure,
        )

    # ------------------------------------------------------------------ consume

    @overload
    def read_sqs_record(self, record: object) -> ParsedRecord[Any]: ...
    @overload
    def read_sqs_record(self, record: object, body_type: type[B]) -> ParsedRecord[B]: ...
    def read_sqs_record(self, record: object, body_type: Any = Any) -> ParsedRecord[Any]:
        """Parse a Lambda SQS record or ReceiveMessage message (no AWS call).

        A body offloaded to S3 is not fetched: ``.body`` raises
        :class:`PayloadNotLoadedError`; use :meth:`load_sqs_record`.
        """
        return _records.read(self.ctx, record, body_type)

    @overload
    async def load_sqs_record(self, record: object) -> ParsedRecord[Any]: ...
    @overload
    async def load_sqs_record(self, record: object, body_type: type[B]) -> ParsedRecord[B]: ...
    async def load_sqs_record(self, record: object, body_type: Any = Any) -> ParsedRecord[Any]:
        """Like :meth:`read_sqs_record`, fetching bodies stored in S3."""
        return await _records.load(self.ctx, record, body_type)

    async def is_complete(self, record: object) -> bool:
        """True if the record's work is done and its message can be acknowledged
        (see :meth:`is_complete_batch` for what "done" means per kind). False for
        a plain message (msgcluster did not send it; no table is read). A
        mis-keyed envelope raises :class:`EnvelopeError`."""
        _messages.record_key(record)
        return (await _consume.is_complete_batch(self.ctx, [record]))[0]

    async def is_complete_batch(self, records: Sequence[object]) -> list[bool]:
        """:meth:`is_complete` for a receive batch: one consistent BatchGetItem.

        A message is done when its record is COMPLETE or gone; a cluster task
        when it was counted or its cluster was cancelled (a counted task first
        repairs its shard, so acknowledging it is safe); a completion event
        when the callback is done.
        """
        return await _consume.is_complete_batch(self.ctx, as_list(records, "records"))

    async def claim_batch(self, records: Sequence[object]) -> list[bool]:
        """Claim records about to run (not complete), in one transaction: per
        record, True if this call holds it now (run the handler), False if
        another consumer does (retry it later; see ``Client(claim=True)``,
        which the worker and ``safe_process_batch`` use). A failed attempt
        (``mark_failed``) releases the claim; a claim's lease is
        ``claim_seconds``."""
        from .runtime._claims import claim_batch

        claims = await claim_batch(self.ctx, as_list(records, "records"))
        return [not claim.held for claim in claims]

    async def mark_complete(self, record: object) -> bool:
        """Complete a message (its record is deleted) or count a cluster task once.

        True if this call did it (False for a duplicate, and for a plain message,
        which has no record: nothing is written). A mis-keyed envelope raises
        :class:`EnvelopeError`.
        """
        _messages.record_key(record)
        return (await _consume.mark_complete_batch(self.ctx, [record]))[0]

    async def mark_complete_batch(self, records: Sequence[object]) -> list[bool]:
        """:meth:`mark_complete` for a receive batch: its tasks are counted in one
        TransactWriteItems; acknowledge the messages after it returns."""
        return await _consume.mark_complete_batch(self.ctx, as_list(records, "records"))

    async def mark_failed(
        self, record: object, error: BaseException | str, *, final: bool | None = None
    ) -> MessageRecord | None:
        """Record a failed attempt (bounded error list). On the queue's last receive a
        message's record becomes ERROR and a task is counted as failed.

        ``final=True`` makes this the last attempt whatever the receive count
        (the message is being dead-lettered now); ``None`` asks the queue."""
        return await _consume.mark_failed(self.ctx, record, error, final=final)

    async def safe_process_batch(
        self,
        event: object,
        process_record: ProcessRecord,
        *,
        concurrency: int = 10,
        fifo: bool | None = None,
        body_type: Any = Any,
        fifo_failure: Literal["rest_of_group", "rest_of_batch"] = "rest_of_group",
    ) -> dict[str, list[dict[str, str]]]:
        """Process a Lambda SQS event; returns ``{"batchItemFailures": [...]}``.

        ``fifo=None`` detects FIFO from the event (queue ARN / group ids). On a
        FIFO event a failure fails the rest of its group, or with
        ``fifo_failure="rest_of_batch"`` everything after it (Powertools'
        default), unprocessed.
        """
        return await _lambda.safe_process_batch(
            self.ctx,
            event,
            process_record,
            concurrency=concurrency,
            fifo=fifo,
            body_type=body_type,
            fifo_failure=fifo_failure,
        )

    # ------------------------------------------------------------------ records

    async def get_message_record(self, key: object, consistent_read: bool = False) -> MessageRecord:
        return await _lookups.get_message_record(self.ctx, key, consistent_read=consistent_read)

    async def get_message_records(
        self, keys: Iterable[object], consistent_read: bool = False
    ) -> list[MessageRecord | None]:
        return await _lookups.get_message_records(
            self.ctx, as_list(keys, "record keys"), consistent_read=consistent_read
        )

    async def update_message_record(
        self,
        key: object,
        *,
        meta: Any = _messages._UNSET,
        status: Status | str | None = None,
        expected_status: Status | str | None = None,
    ) -> MessageRecord:
        return await _messages.update_message_record(
            self.ctx, key, meta=meta, status=status, expected_status=expected_status
        )
