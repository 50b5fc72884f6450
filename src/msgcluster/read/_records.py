"""What handlers get: :class:`ParsedRecord`, the documented SQS record and
msgcluster's parsed view in one object, built by the read pipeline
(``_incoming`` classifies, ``_bodies`` decodes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

import msgspec

from .._clusterkeys import TaskRef
from .._errors import ConfigurationError, PayloadNotLoadedError, RecordNotFoundError
from .._schemas import (
    NO_BODY,
    MessageEnvelope,
    MessageRecord,
    RecordKey,
    RecordType,
    S3Pointer,
    TaskEnvelope,
)
from ..queues._extended import fetch
from ._bodies import body_decoder
from ._incoming import Incoming, MessageKind, classify, normalize, resolve

if TYPE_CHECKING:
    from .._context import Context
    from ..clusters._callbacks import ClusterView

__all__ = ["ParsedRecord", "build", "load", "load_incoming", "read"]

B = TypeVar("B")


_UNLOADED: Final = object()


class ParsedRecord(Mapping[str, Any], Generic[B]):
    """A received message, read: both the SQS record as documented and
    msgcluster's parsed view of it.

    As a mapping it is the Lambda SQS event record (``record["messageId"]``,
    ``record["body"]`` is the raw body, ``record["attributes"]``...), so a
    handler written for the documented ``processRecord(record)`` works
    unchanged. As an object: ``id``, ``body`` (decoded as declared),
    ``type``, ``kind``, ``tracked``, and the getters. ``task`` is set for
    cluster tasks; ``get_message_cluster`` is None for anything but a task or
    completion event. A *plain* message (msgcluster did not send it) has no
    record: ``pk``/``rk``/``key`` are None. Getters fetch only when called.
    """

    __slots__ = ("_body", "_ctx", "_view", "envelope", "key", "kind", "message", "pointer", "task")

    def __init__(
        self,
        ctx: Context | None,
        incoming: Incoming,
        body: Any = _UNLOADED,
        *,
        pointer: S3Pointer | None = None,
    ) -> None:
        self._ctx = ctx
        self.message = incoming.message
        self.kind = incoming.kind
        self.key = incoming.key
        self.envelope = incoming.envelope
        self._body = body
        self.pointer = pointer
        self.task = body if incoming.kind is MessageKind.TASK and body is not _UNLOADED else None
        self._view: Mapping[str, Any] | None = None

    # ------------------------------------------------------------ the mapping

    def _record(self) -> Mapping[str, Any]:
        if self._view is None:
            self._view = self.message.lambda_record()
        return self._view

    def __getitem__(self, name: str) -> Any:
        return self._record()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._record())

    def __len__(self) -> int:
        return len(self._record())

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    # ------------------------------------------------------------ the view

    @property
    def id(self) -> str:
        """The SQS message id."""
        return self.message.id

    @property
    def tracked(self) -> bool:
        """True if msgcluster sent it (it has a record); False for a plain message."""
        return self.key is not None

    @property
    def url(self) -> str:
        return self.envelope.url if self.envelope is not None else ""

    @property
    def pk(self) -> str | None:
        return self.key.pk if self.key is not None else None

    @property
    def rk(self) -> str | None:
        return self.key.rk if self.key is not None else None

    @property
    def type(self) -> RecordType:
        if self.kind is MessageKind.TASK:
            return RecordType.TASK
        if self.kind is MessageKind.EVENT:
            return RecordType.CLUSTER
        return RecordType.MESSAGE

    @property
    def cluster_key(self) -> RecordKey | None:
        """The key of the cluster record, for a task or a cluster event; else None."""
        if self.key is None:
            return None
        if self.kind is MessageKind.EVENT:
            return self.key
        if self.kind is MessageKind.TASK:
            return TaskRef(self.key).cluster_key
        return None

    @property
    def globals_pointer(self) -> S3Pointer | None:
        """Where the cluster's globals live (tasks only): readable without the record."""
        return self.envelope.globals_s3 if isinstance(self.envelope, TaskEnvelope) else None

    @property
    def receive_count(self) -> int:
        return self.message.receive_count

    @property
    def offloaded(self) -> bool:
        return self.pointer is not None

    @property
    def loaded(self) -> bool:
        return self._body is not _UNLOADED

    @property
    def body(self) -> B:
        if self._body is _UNLOADED:
            raise PayloadNotLoadedError(
                f"message {self.id}: the body is stored in S3 ({self.pointer}); read it with "
                "`await client.load_sqs_record(record, body_type=...)`",
                message_id=self.id,
            )
        return self._body  # type: ignore[no-any-return]

    @property
    def get_message_cluster(self) -> Callable[..., Awaitable[ClusterView]] | None:
        """For a task (or cluster event): ``await record.get_message_cluster()`` returns
        ``(record, get_globals)``; None for a message."""
        key = self.cluster_key
        if key is None:
            return None
        ctx = self._require_ctx()

        async def get_message_cluster(consistent_read: bool = False) -> ClusterView:
            return await _lookups(ctx).cluster_view(ctx, key, consistent_read)

        return get_message_cluster

    async def get_globals(self, type: Any = Any) -> Any:
        """A task's cluster globals, read straight from S3 (no DynamoDB read)."""
        pointer = self.globals_pointer
        if pointer is None:
            if self.cluster_key is None:
                return None
            view = await self.get_message_cluster()  # type: ignore[misc]
            return await view.get_globals(type)
        ctx = self._require_ctx()
        return await _lookups(ctx).globals(ctx, pointer, type)

    async def get_message_record(self, consistent_read: bool = False) -> MessageRecord:
        if self.key is None:
            raise RecordNotFoundError(
                f"message {self.id} was not sent by msgcluster: it has no record"
            )
        ctx = self._require_ctx()
        return await _lookups(ctx).message_record(ctx, self.key, consistent_read)

    def _require_ctx(self) -> Context:
        if self._ctx is None:
            raise ConfigurationError(
                f"message {self.id} was read without a Client: give the App a client"
            )
        return self._ctx

    def __repr__(self) -> str:
        return f"ParsedRecord(id={self.id!r}, kind={self.kind.value!r}, pk={self.pk!r})"


class RecordLookups(Protocol):
    """What a ParsedRecord's getters need from the layers above the pipeline
    (tracked messages and clusters); the Client puts one on its context."""

    async def message_record(
        self, ctx: Context, key: RecordKey, consistent_read: bool
    ) -> MessageRecord: ...

    async def cluster_view(
        self, ctx: Context, key: RecordKey, consistent_read: bool
    ) -> ClusterView: ...

    async def globals(self, ctx: Context, pointer: S3Pointer, type: Any) -> Any: ...


def _lookups(ctx: Context) -> RecordLookups:
    return ctx.lookups  # type: ignore[no-any-return]


def _poison(incoming: Incoming) -> None:
    if incoming.error is not None:
        raise incoming.error


def build(ctx: Context | None, incoming: Incoming, body_type: Any) -> ParsedRecord[Any]:
    """The ParsedRecord of a classified message, body decoded where it is inline."""
    _poison(incoming)
    if incoming.pointer is not None:
        return ParsedRecord(ctx, incoming, pointer=incoming.pointer)
    decoder = body_decoder(body_type)
    message, envelope = incoming.message, incoming.envelope
    if envelope is None:
        return ParsedRecord(ctx, incoming, decoder.plain(message.data, message.id))
    if isinstance(envelope, MessageEnvelope):
        if envelope.body_s3 is not None:  # msgcluster's pointer before the Extended format
            return ParsedRecord(ctx, incoming, pointer=envelope.body_s3)
        raw = envelope.body if envelope.body != NO_BODY else msgspec.Raw(b"null")
        return ParsedRecord(ctx, incoming, decoder.tracked(raw, message.id))
    if isinstance(envelope, TaskEnvelope):
        if envelope.task_s3 is not None:
            return ParsedRecord(ctx, incoming, pointer=envelope.task_s3)
        raw = envelope.task if envelope.task != NO_BODY else msgspec.Raw(b"null")
        return ParsedRecord(ctx, incoming, decoder.tracked(raw, message.id))
    return ParsedRecord(ctx, incoming, None)


def read(ctx: Context | None, record: object, body_type: Any) -> ParsedRecord[Any]:
    """Synchronous read: everything inline; an offloaded body is left unloaded."""
    return build(ctx, classify(normalize(record)), body_type)


async def load(ctx: Context | None, record: object, body_type: Any) -> ParsedRecord[Any]:
    """Like :func:`read`, fetching bodies that live in S3."""
    incoming = record if isinstance(record, Incoming) else classify(normalize(record))
    return await load_incoming(ctx, incoming, body_type)


async def load_incoming(
    ctx: Context | None, incoming: Incoming, body_type: Any
) -> ParsedRecord[Any]:
    pointer = incoming.pointer
    incoming = await resolve(ctx, incoming)
    parsed = build(ctx, incoming, body_type)
    if parsed.pointer is not None and ctx is not None:  # a legacy bodyS3 envelope
        data = await fetch(ctx, parsed.pointer)
        parsed._body = body_decoder(body_type).tracked(data, parsed.id)
        if parsed.kind is MessageKind.TASK:
            parsed.task = parsed._body
    elif pointer is not None:
        parsed.pointer = pointer
    return parsed
