"""The read pipeline: every entry point reads a received message the same way.

raw record (Lambda event record, ReceiveMessage message, or a queue's
:class:`~msgcluster.queues.ReceivedMessage`) -> :class:`SqsMessage` ->
payload (inline, or offloaded to S3 behind an Extended Client pointer) ->
kind (a msgcluster message, a cluster task, a completion event, or a *plain*
message msgcluster did not send) -> body decoded as the reader declares (a
msgspec type, ``str``, ``bytes``, ``msgspec.Raw``).

A message that cannot be read fails alone: :func:`classify` never raises for
a body; it returns an :class:`Incoming` whose ``error`` says why the message
is poison (a mis-keyed envelope). Envelopes are decoded with one module-level
tagged-union decoder; the user's body stays ``msgspec.Raw`` until a type is
asked for, so completion checks never pay for decoding it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, Union, get_args, get_origin

import msgspec

from ._clusterkeys import CLUSTER_SORT_KEY, TASK_SORT_PREFIX, TaskRef
from ._errors import (
    BodyDecodeError,
    EnvelopeError,
    InvalidKeyError,
    MalformedEventError,
    PayloadNotLoadedError,
    RecordNotFoundError,
)
from ._payloads import fetch, parse_pointer, payload_record_key
from ._schemas import (
    ENVELOPE_TYPES,
    NO_BODY,
    ClusterEventEnvelope,
    Envelope,
    MessageEnvelope,
    MessageRecord,
    RecordKey,
    RecordType,
    S3Pointer,
    TaskEnvelope,
)

if TYPE_CHECKING:
    from ._callbacks import ClusterView
    from ._context import Context

__all__ = [
    "BodyDecoder",
    "Incoming",
    "Kind",
    "ParsedRecord",
    "SqsMessage",
    "body_decoder",
    "classify",
    "kind_of",
    "load",
    "normalize",
    "read",
    "resolve",
]

B = TypeVar("B")

_envelope_decoder: Final[msgspec.json.Decoder[Envelope]] = msgspec.json.Decoder(Envelope)


class Kind(enum.Enum):
    """What a received message is, for msgcluster."""

    MESSAGE = "message"  # a tracked message (Client.send_message)
    TASK = "task"  # a cluster task
    EVENT = "cluster"  # a cluster's completion event
    PLAIN = "plain"  # anything msgcluster did not send: no record


def kind_of(key: RecordKey) -> Kind:
    if key.rk.startswith(TASK_SORT_PREFIX):
        return Kind.TASK
    if key.rk == CLUSTER_SORT_KEY:
        return Kind.EVENT
    return Kind.MESSAGE


_ENVELOPE_KIND: Final = {
    MessageEnvelope: Kind.MESSAGE,
    TaskEnvelope: Kind.TASK,
    ClusterEventEnvelope: Kind.EVENT,
}


class SqsMessage(msgspec.Struct, frozen=True):
    """One received message, whichever API delivered it.

    ``body`` is the text SQS carried; ``binary`` holds the bytes of a queue
    message that is not UTF-8 (``body`` is then empty). ``record`` is the
    mapping it was read from, when it came as one.
    """

    id: str
    body: str
    receipt_handle: str = ""
    attributes: dict[str, str] = {}
    message_attributes: dict[str, Any] = {}
    source_arn: str = ""
    binary: bytes | None = None
    record: Any = None

    @property
    def receive_count(self) -> int:
        try:
            return int(self.attributes.get("ApproximateReceiveCount", "1"))
        except ValueError:
            return 1

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId")

    @property
    def data(self) -> str | bytes:
        """The payload as SQS carried it: text, or bytes when not UTF-8."""
        return self.binary if self.binary is not None else self.body

    def lambda_record(self) -> Mapping[str, Any]:
        """The message as Lambda's SQS event record (the documented shape)."""
        if isinstance(self.record, Mapping) and "messageId" in self.record:
            return self.record
        return {
            "messageId": self.id,
            "receiptHandle": self.receipt_handle,
            "body": self.body,
            "attributes": dict(self.attributes),
            "messageAttributes": {
                name: _lambda_attribute(value) for name, value in self.message_attributes.items()
            },
            "eventSource": "aws:sqs",
            "eventSourceARN": self.source_arn,
        }


def _lambda_attribute(value: Any) -> Any:
    if not isinstance(value, Mapping) or "DataType" not in value:
        return value
    out = {"dataType": value["DataType"], "stringListValues": [], "binaryListValues": []}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = value["BinaryValue"]
    return out


def _field(record: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def normalize(record: object) -> SqsMessage:
    """Accept a Lambda SQS event record, a ReceiveMessage message, a queue's
    ReceivedMessage, a ParsedRecord or an SqsMessage."""
    if isinstance(record, SqsMessage):
        return record
    if isinstance(record, ParsedRecord):
        return record.message
    from .queues._contract import ReceivedMessage

    if isinstance(record, ReceivedMessage):
        return from_received(record)
    if not isinstance(record, Mapping):
        raise MalformedEventError(
            "expected an SQS record: a Lambda event record (dict with 'messageId' and "
            "'body') or a ReceiveMessage message (dict with 'MessageId' and 'Body'); "
            f"got {type(record).__name__}"
        )
    message_id = _field(record, "messageId", "MessageId")
    if not isinstance(message_id, str) or not message_id:
        raise MalformedEventError(
            "SQS record has no 'messageId'/'MessageId' (a non-empty string is required); "
            f"keys present: {sorted(map(str, record))[:12]}"
        )
    body = _field(record, "body", "Body")
    if not isinstance(body, str):
        raise MalformedEventError(
            f"SQS record {message_id} has no string 'body'/'Body' (got {type(body).__name__})",
            message_id=message_id,
        )
    attributes = _field(record, "attributes", "Attributes") or {}
    message_attributes = _field(record, "messageAttributes", "MessageAttributes") or {}
    receipt = _field(record, "receiptHandle", "ReceiptHandle") or ""
    if not isinstance(attributes, Mapping) or not isinstance(message_attributes, Mapping):
        raise MalformedEventError(
            f"SQS record {message_id} has non-object attributes", message_id=message_id
        )
    if not isinstance(receipt, str):
        raise MalformedEventError(
            f"SQS record {message_id} has a non-string receipt handle", message_id=message_id
        )
    return SqsMessage(
        id=message_id,
        body=body,
        receipt_handle=receipt,
        attributes={str(k): str(v) for k, v in attributes.items()},
        message_attributes=dict(message_attributes),
        source_arn=str(_field(record, "eventSourceARN") or ""),
        record=record,
    )


def from_received(message: Any) -> SqsMessage:
    """A queue's ReceivedMessage as an SqsMessage (attributes are strings there)."""
    try:
        body, binary = message.body.decode(), None
    except UnicodeDecodeError:
        body, binary = "", bytes(message.body)
    attributes = {"ApproximateReceiveCount": str(message.receive_count)}
    if message.group_id is not None:
        attributes["MessageGroupId"] = message.group_id
    if message.sent_at is not None:
        attributes["SentTimestamp"] = str(int(message.sent_at * 1000))
    return SqsMessage(
        id=message.id,
        body=body,
        receipt_handle=message.receipt,
        attributes=attributes,
        message_attributes={
            name: {"DataType": "String", "StringValue": value}
            for name, value in message.attributes.items()
        },
        binary=binary,
    )


# --------------------------------------------------------------------------- kind


class Incoming:
    """A message classified: its kind, record key, where its payload is, and
    ``error`` when it is poison (it then fails alone)."""

    __slots__ = ("envelope", "error", "key", "kind", "message", "pointer")

    def __init__(
        self,
        message: SqsMessage,
        kind: Kind,
        *,
        key: RecordKey | None = None,
        envelope: Envelope | None = None,
        pointer: S3Pointer | None = None,
        error: EnvelopeError | None = None,
    ) -> None:
        self.message = message
        self.kind = kind
        self.key = key
        self.envelope = envelope
        self.pointer = pointer  # the whole payload is in S3 (not fetched yet)
        self.error = error

    @property
    def tracked(self) -> bool:
        return self.key is not None

    def __repr__(self) -> str:
        return f"Incoming({self.message.id!r}, {self.kind.value}, key={self.key})"


class _Probe(msgspec.Struct):
    """Just enough of a JSON object to tell a broken envelope from a foreign body."""

    type: Any = None
    pk: Any = None
    rk: Any = None


_probe_decoder: Final = msgspec.json.Decoder(_Probe)


def classify(message: SqsMessage) -> Incoming:
    """What ``message`` is; never raises for a body (poison is in ``.error``)."""
    if message.binary is not None:
        return Incoming(message, Kind.PLAIN)
    pointer = parse_pointer(message.body, message.message_attributes)
    if pointer is not None:
        key = payload_record_key(pointer)
        return Incoming(message, kind_of(key) if key else Kind.PLAIN, key=key, pointer=pointer)
    return _classify_body(message)


def _classify_body(message: SqsMessage) -> Incoming:
    body = message.body
    if not body.lstrip(" \t\r\n").startswith("{"):
        return Incoming(message, Kind.PLAIN)
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if not _looks_like_envelope(body):
            return Incoming(message, Kind.PLAIN)
        error = EnvelopeError(
            f"message {message.id} is a malformed msgcluster envelope ({exc}); it is "
            "dead-lettered, not retried",
            message_id=message.id,
        )
        return Incoming(message, Kind.PLAIN, error=error)
    except msgspec.DecodeError:
        return Incoming(message, Kind.PLAIN)
    kind = _ENVELOPE_KIND[type(envelope)]
    try:
        key = RecordKey(envelope.pk, envelope.rk)
        if kind_of(key) is not kind:
            raise InvalidKeyError(f"a {kind.value} envelope cannot carry the key {key.rk!r}")
        if kind is Kind.TASK:
            TaskRef(key)
    except InvalidKeyError as exc:
        error = EnvelopeError(
            f"message {message.id} carries an invalid record key: {exc}", message_id=message.id
        )
        return Incoming(message, kind, envelope=envelope, error=error)
    return Incoming(message, kind, key=key, envelope=envelope)


def _looks_like_envelope(body: str) -> bool:
    try:
        probe = _probe_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return probe.type in ENVELOPE_TYPES and probe.pk is not None and probe.rk is not None


async def resolve(ctx: Context | None, incoming: Incoming) -> Incoming:
    """The message with an offloaded payload fetched and classified again.

    Without a Client (``ctx`` None) an offloaded payload cannot be read: the
    result is poison that says so.
    """
    pointer = incoming.pointer
    if pointer is None:
        return incoming
    message = incoming.message
    if ctx is None:
        error = EnvelopeError(
            f"message {message.id} is offloaded to s3://{pointer.bucket}/{pointer.key}: "
            "reading it needs a Client (App(client=...))",
            message_id=message.id,
        )
        return Incoming(message, incoming.kind, key=incoming.key, error=error)
    data = await fetch(ctx, pointer)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return Incoming(msgspec.structs.replace(message, binary=data), Kind.PLAIN)
    resolved = _classify_body(msgspec.structs.replace(message, body=text))
    resolved.pointer = None
    return resolved


# --------------------------------------------------------------------------- bodies


def _union_args(body_type: Any) -> tuple[Any, ...]:
    if get_origin(body_type) is Union or type(body_type).__name__ == "UnionType":
        return get_args(body_type)
    return (body_type,)


class BodyDecoder:
    """Decodes bodies as a reader declares: a msgspec type, ``str``, ``bytes``,
    ``msgspec.Raw``, or a union of types msgspec can tell apart.

    A tracked body is JSON (msgcluster encoded it): it is decoded as the type.
    A plain body is what its sender wrote: ``str`` (and ``Any``) take the text
    as it is, ``bytes`` the bytes, ``msgspec.Raw`` the raw payload; other
    types decode it as JSON.
    """

    __slots__ = ("_json", "_plain_json", "binary", "raw", "text", "type")

    def __init__(self, body_type: Any) -> None:
        self.type = body_type
        args = _union_args(body_type)
        self.raw = body_type is msgspec.Raw
        self.text = body_type is Any or str in args
        self.binary = bytes in args
        self._json = msgspec.json.Decoder(body_type)
        others = tuple(arg for arg in args if arg not in (str, bytes))
        self._plain_json: msgspec.json.Decoder[Any] | None = None
        if others and body_type is not Any and not self.raw:
            target = others[0] if len(others) == 1 else Union[others]  # noqa: UP007
            self._plain_json = msgspec.json.Decoder(target)

    def tracked(self, raw: bytes | str | msgspec.Raw, message_id: str) -> Any:
        if self.raw:
            return msgspec.Raw(raw)
        try:
            return self._json.decode(raw)
        except msgspec.ValidationError as exc:
            raise _mismatch(exc, self.type, message_id) from exc
        except msgspec.DecodeError as exc:
            raise BodyDecodeError(
                f"message {message_id}: body is not valid JSON ({exc})", message_id=message_id
            ) from exc

    def plain(self, data: str | bytes, message_id: str) -> Any:
        if self.raw:
            return msgspec.Raw(data.encode() if isinstance(data, str) else data)
        failure: BodyDecodeError | None = None
        if self._plain_json is not None:
            try:
                return self._plain_json.decode(data)
            except msgspec.ValidationError as exc:
                failure = _mismatch(exc, self.type, message_id)
            except msgspec.DecodeError as exc:
                failure = BodyDecodeError(
                    f"message {message_id}: body is not valid JSON ({exc})",
                    message_id=message_id,
                )
        if self.text:
            if isinstance(data, str):
                return data
            try:
                return data.decode()
            except UnicodeDecodeError as exc:
                if not self.binary:
                    raise BodyDecodeError(
                        f"message {message_id}: body is not UTF-8 text", message_id=message_id
                    ) from exc
        if self.binary:
            return data if isinstance(data, bytes) else _utf8(data, message_id)
        assert failure is not None
        raise failure


def _utf8(text: str, message_id: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise BodyDecodeError(
            f"message {message_id}: body holds characters that are not UTF-8 ({exc.reason})",
            message_id=message_id,
        ) from exc


def _mismatch(exc: Exception, body_type: Any, message_id: str) -> BodyDecodeError:
    # A class by name; a generic alias or union as written (list[int], not list).
    name = body_type.__name__ if isinstance(body_type, type) else repr(body_type)
    return BodyDecodeError(
        f"message {message_id}: body does not match {name}: {exc}", message_id=message_id
    )


@functools.lru_cache(maxsize=256)
def _cached_decoder(body_type: Any) -> BodyDecoder:
    return BodyDecoder(body_type)


def body_decoder(body_type: Any) -> BodyDecoder:
    """The (cached) decoder for ``body_type``."""
    try:
        return _cached_decoder(body_type)
    except TypeError:  # an unhashable annotation: build one for this call
        return BodyDecoder(body_type)


# --------------------------------------------------------------------------- records


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
        self.task = body if incoming.kind is Kind.TASK and body is not _UNLOADED else None
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
        if self.kind is Kind.TASK:
            return RecordType.TASK
        if self.kind is Kind.EVENT:
            return RecordType.CLUSTER
        return RecordType.MESSAGE

    @property
    def cluster_key(self) -> RecordKey | None:
        """The key of the cluster record, for a task or a cluster event; else None."""
        if self.key is None:
            return None
        if self.kind is Kind.EVENT:
            return self.key
        if self.kind is Kind.TASK:
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
            from ._callbacks import ClusterView, globals_getter
            from ._clusters import get_message_cluster as fetch_cluster

            record = await fetch_cluster(ctx, key, consistent_read=consistent_read)
            return ClusterView(record, globals_getter(ctx, record))

        return get_message_cluster

    async def get_globals(self, type: Any = Any) -> Any:
        """A task's cluster globals, read straight from S3 (no DynamoDB read)."""
        from ._globals import get_globals

        pointer = self.globals_pointer
        if pointer is None:
            if self.cluster_key is None:
                return None
            view = await self.get_message_cluster()  # type: ignore[misc]
            return await view.get_globals(type)
        return await get_globals(self._require_ctx(), pointer, type)

    async def get_message_record(self, consistent_read: bool = False) -> MessageRecord:
        from ._messages import get_message_record

        if self.key is None:
            raise RecordNotFoundError(
                f"message {self.id} was not sent by msgcluster: it has no record"
            )
        return await get_message_record(
            self._require_ctx(), self.key, consistent_read=consistent_read
        )

    def _require_ctx(self) -> Context:
        if self._ctx is None:
            from ._errors import ConfigurationError

            raise ConfigurationError(
                f"message {self.id} was read without a Client: give the App a client"
            )
        return self._ctx

    def __repr__(self) -> str:
        return f"ParsedRecord(id={self.id!r}, kind={self.kind.value!r}, pk={self.pk!r})"


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
        if parsed.kind is Kind.TASK:
            parsed.task = parsed._body
    elif pointer is not None:
        parsed.pointer = pointer
    return parsed
