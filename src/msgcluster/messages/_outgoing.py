"""Turning caller input into ready-to-send SQS entries (validation happens here).

Everything a caller can get wrong is checked before anything is written:
queue kind vs. FIFO options, delays, attribute shapes, meta size, body
encodability. The result is a :class:`Prepared` entry holding the record item
and the envelope bytes, so the send path does no further encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._errors import MessageTooLargeError, ValidationError
from .._itemcodec import encode_item
from .._json import encode_json, encode_meta
from .._schemas import (
    MessageEnvelope,
    MessageRecord,
    RecordKey,
    RecordType,
    S3Pointer,
    Status,
    StatusCode,
    new_message_key,
)
from .._trace_context import current_carrier
from ..queues._checks import check_attribute, check_attribute_name, sqs_attribute
from ..queues._contract import OutgoingMessage
from ..queues._extended import EXTENDED_SIZE_ATTRIBUTE, pointer_body

if TYPE_CHECKING:
    from .._context import Context, QueueInfo

__all__ = ["Prepared", "encode_attributes", "prepare"]

_encoder: Final = msgspec.json.Encoder()
MAX_DELAY_SECONDS: Final = 900
MAX_ATTRIBUTES: Final = 10
# An envelope pointing at S3 is a few hundred bytes; leave room for it.
_POINTER_ENVELOPE_BYTES: Final = 2_048


class Prepared:
    """One validated entry: its record item and the bytes that go on the wire."""

    __slots__ = (
        "attributes",
        "attributes_size",
        "body",
        "dedup_id",
        "delay_seconds",
        "envelope",
        "group_id",
        "ident",
        "index",
        "item",
        "key",
        "max_attributes",
        "pointer",
        "url",
    )

    def __init__(
        self,
        *,
        index: int,
        ident: str,
        key: RecordKey,
        url: str,
        body: bytes,
        item: dict[str, Any],
        attributes: dict[str, Any],
        attributes_size: int,
        delay_seconds: int,
        group_id: str | None,
        dedup_id: str | None,
        max_attributes: int = MAX_ATTRIBUTES,
    ) -> None:
        self.index = index
        self.max_attributes = max_attributes
        self.ident = ident
        self.key = key
        self.url = url
        self.body = body
        self.item = item
        self.attributes = attributes
        self.attributes_size = attributes_size
        self.delay_seconds = delay_seconds
        self.group_id = group_id
        self.dedup_id = dedup_id
        self.pointer: S3Pointer | None = None
        self.envelope = self.encode_envelope()

    @property
    def size(self) -> int:
        """Bytes SQS counts against its limits: body plus message attributes."""
        return len(self.envelope) + self.attributes_size

    def encode_envelope(self) -> bytes:
        """The wire body with the body inline (what goes to S3 when offloaded)."""
        envelope = MessageEnvelope(
            pk=self.key.pk, rk=self.key.rk, url=self.url, body=msgspec.Raw(self.body)
        )
        return _encoder.encode(envelope)

    def offload_to(self, pointer: S3Pointer) -> None:
        """Send the Extended Client's pointer to ``pointer`` instead of the envelope
        (the object holds the envelope), with its ``ExtendedPayloadSize`` attribute."""
        if len(self.attributes) >= self.max_attributes:
            raise MessageTooLargeError(
                f"a body offloaded to S3 carries the {EXTENDED_SIZE_ATTRIBUTE} attribute: "
                f"such a message takes at most {self.max_attributes - 1} attributes of its own"
            )
        size = str(pointer.size)
        self.pointer = pointer
        self.envelope = pointer_body(pointer)
        self.attributes = self.attributes | {
            EXTENDED_SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": size}
        }
        self.attributes_size += len(EXTENDED_SIZE_ATTRIBUTE) + len("Number") + len(size)

    def outgoing(self) -> OutgoingMessage:
        """The entry as the queue layer sends it (the envelope, typed attributes)."""
        return OutgoingMessage(
            body=self.envelope,
            attributes=self.attributes,
            group_id=self.group_id,
            dedup_id=self.dedup_id,
            delay_seconds=self.delay_seconds or None,
        )


def encode_attributes(attributes: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """Plain values -> SQS MessageAttributes, and the bytes SQS counts for them.

    ``str`` -> String, ``int``/``float`` -> Number, ``bytes`` -> Binary; a
    mapping with ``DataType`` is passed through as already in SQS form. Names
    and values are checked by the same rules as every queue backend's (SQS's).
    """
    if not attributes:
        return {}, 0
    if not isinstance(attributes, Mapping):
        raise ValidationError(f"attributes must be a mapping, got {type(attributes).__name__}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(f"SQS allows at most {MAX_ATTRIBUTES} message attributes")
    out: dict[str, Any] = {}
    size = 0
    for name, value in attributes.items():
        # "msgcluster." is the queue backends' own; the Client path sends none.
        check_attribute_name(name, reserved=("aws.", "amazon."))
        attr = sqs_attribute(name, value)
        payload = attr.get("StringValue", attr.get("BinaryValue", b""))
        check_attribute(name, attr["DataType"], payload)
        size += (
            len(name.encode())
            + len(attr["DataType"])
            + len(payload.encode() if isinstance(payload, str) else payload)
        )
        out[name] = attr
    return out, size


def prepare(
    ctx: Context,
    info: QueueInfo,
    index: int,
    message: OutgoingMessage,
    now: str,
    *,
    key: tuple[str, RecordKey] | None = None,
    record_type: RecordType = RecordType.MESSAGE,
    keep_body: bool = True,
    factory: Callable[..., Prepared] = Prepared,
) -> Prepared:
    """Validate one outgoing message and build its record and envelope.

    Cluster tasks pass their deterministic ``key`` (id, RecordKey), their
    record type, ``keep_body=False`` (a task's record stays small so counting
    it costs 1 WCU) and a ``factory`` that builds the task envelope.
    """
    settings = ctx.settings
    delay = _check_delivery(info, message)
    meta_bytes = encode_meta(message.meta, settings.max_meta_bytes)
    body = encode_json(message.body, "body")
    attributes, attributes_size = _check_attributes(ctx, info, message.attributes)
    attributes, attributes_size = _with_trace_context(info, attributes, attributes_size)
    ident, record_key = key or new_message_key()
    record = MessageRecord(
        pk=record_key.pk,
        rk=record_key.rk,
        id=ident,
        url=info.url,
        type=record_type,
        meta=msgspec.json.decode(meta_bytes),
        body=body.decode() if keep_body and len(body) <= settings.record_body_bytes else None,
        body_size=len(body),
        started_at=now,
        updated_at=now,
        expires_at=ctx.expires_at(),
    )
    return factory(
        index=index,
        ident=ident,
        key=record_key,
        url=info.url,
        body=body,
        item=_with_status(encode_item(record)),
        attributes=attributes,
        attributes_size=attributes_size,
        delay_seconds=delay,
        group_id=message.group_id if info.fifo else None,
        dedup_id=(message.dedup_id or ident) if info.fifo else None,
        max_attributes=info.max_attributes,
    )


def _with_trace_context(
    info: QueueInfo, attributes: dict[str, Any], size: int
) -> tuple[dict[str, Any], int]:
    """The sender's trace context as attributes (if a span is active), unless the
    message set its own or has no room left for them."""
    carrier = current_carrier()
    if not carrier or any(name in attributes for name in carrier):
        return attributes, size
    if len(attributes) + len(carrier) >= info.max_attributes:
        return attributes, size  # the room is the user's (and offloading's) first
    extra = {name: {"DataType": "String", "StringValue": value} for name, value in carrier.items()}
    added = sum(len(name) + len("String") + len(value) for name, value in carrier.items())
    return attributes | extra, size + added


def _check_delivery(info: QueueInfo, message: OutgoingMessage) -> int:
    """The message's delay, after checking it and its FIFO options against the queue."""
    delay = message.delay_seconds or 0
    if not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_SECONDS:
        raise ValidationError(f"delay_seconds must be an int in 0..{MAX_DELAY_SECONDS}")
    if info.fifo:
        if not message.group_id:
            raise ValidationError(f"queue {info.url} is FIFO: group_id is required")
        if delay:
            raise ValidationError("FIFO queues do not support per-message delay_seconds")
    elif message.group_id is not None or message.dedup_id is not None:
        # SQS accepts MessageGroupId on standard queues now, but dedup ids are
        # FIFO-only; refuse both so a misconfigured queue is caught early.
        raise ValidationError(
            f"queue {info.url} is a standard queue: group_id/dedup_id need a FIFO queue"
        )
    return delay


def _check_attributes(
    ctx: Context, info: QueueInfo, given: Mapping[str, Any] | None
) -> tuple[dict[str, Any], int]:
    attributes, attributes_size = encode_attributes(given)
    if len(attributes) > info.max_attributes:
        # sqs:// keeps one of SQS's ten for its own encoding flag.
        raise ValidationError(
            f"queue {info.url} takes at most {info.max_attributes} message attributes, "
            f"got {len(attributes)}"
        )
    if attributes_size + _POINTER_ENVELOPE_BYTES > ctx.settings.max_message_bytes:
        raise MessageTooLargeError(
            f"message attributes take {attributes_size:,} bytes; with the envelope they "
            f"cannot fit in {ctx.settings.max_message_bytes:,}"
        )
    return attributes, attributes_size


def _with_status(item: dict[str, Any]) -> dict[str, Any]:
    """Write the initial status explicitly (the codec omits defaults): conditions and
    filters compare it, and the console shows it."""
    item["status"] = {"S": Status.PRE_FLIGHT.value}
    item["statusCode"] = {"N": str(int(StatusCode.PRE_FLIGHT))}
    return item


def needs_offload(ctx: Context, entry: Prepared) -> bool:
    return entry.size > ctx.settings.max_message_bytes
