"""Bodies too large for SQS: stored in S3, in the SQS Extended Client's format.

One offload mechanism, both ways. The SQS body is the Extended Client's
pointer, ``["software.amazon.payloadoffloading.PayloadS3Pointer",
{"s3BucketName": ..., "s3Key": ...}]``, with the ``ExtendedPayloadSize``
message attribute; the S3 object holds the whole body the message would
otherwise have carried (for msgcluster, the envelope with its keys). So the
AWS Extended Client reads what msgcluster writes, and msgcluster reads what
it writes (the legacy pointer class with ``SQSLargePayloadSize`` too).

A pointer is recognised by its exact shape and the size attribute, never by
key names alone: ``{"s3BucketName": ..., "s3Key": ...}`` on its own is an
ordinary body. msgcluster names its objects after the record key
(``<pk>@<rk>.payload.json``), so completion checks read the key from the
pointer and never touch S3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._aws_errors import aws_errors
from .._errors import EnvelopeError, InvalidKeyError, ObjectNotFoundError
from .._schemas import KEY_PREFIX, RecordKey, S3Pointer

if TYPE_CHECKING:
    from .._context import Context

__all__ = [
    "EXTENDED_POINTER_CLASS",
    "EXTENDED_SIZE_ATTRIBUTE",
    "fetch",
    "get_payload",
    "parse_pointer",
    "payload_record_key",
    "pointer_body",
    "put_payload",
    "store",
    "store_payload",
]

# S3's bucket naming rule (with dots: legacy buckets the Extended Client may use).
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

EXTENDED_POINTER_CLASS: Final = "software.amazon.payloadoffloading.PayloadS3Pointer"
LEGACY_POINTER_CLASS: Final = "com.amazon.sqs.javamessaging.MessageS3Pointer"
EXTENDED_POINTER_CLASSES: Final = frozenset({EXTENDED_POINTER_CLASS, LEGACY_POINTER_CLASS})
EXTENDED_SIZE_ATTRIBUTE: Final = "ExtendedPayloadSize"
EXTENDED_SIZE_ATTRIBUTES: Final = (EXTENDED_SIZE_ATTRIBUTE, "SQSLargePayloadSize")
_PAYLOAD_SUFFIX: Final = ".payload.json"


class _Location(msgspec.Struct, forbid_unknown_fields=True):
    s3BucketName: str
    s3Key: str


_pointer_decoder: Final = msgspec.json.Decoder(tuple[str, _Location])
_pointer_encoder: Final = msgspec.json.Encoder()


def _size_attribute(attributes: Mapping[str, Any]) -> int | None:
    """The payload size from ``ExtendedPayloadSize`` / ``SQSLargePayloadSize``
    (Lambda's or ReceiveMessage's spelling, or a plain string), if present."""
    for name in EXTENDED_SIZE_ATTRIBUTES:
        if name not in attributes:
            continue
        value = attributes[name]
        if isinstance(value, Mapping):
            value = value.get("stringValue", value.get("StringValue"))
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return 0
    return None


def parse_pointer(
    body: str, attributes: Mapping[str, Any], *, attributes_known: bool = True
) -> S3Pointer | None:
    """The S3 location if ``body`` is an Extended Client pointer, else None.

    The body must have the exact shape (a pointer class, then an object with
    only ``s3BucketName`` and ``s3Key``), and the message must carry the size
    attribute. ``attributes_known=False`` (a ReceiveMessage that did not ask
    for attributes, or a shape-only check) takes the shape alone when there
    are none.
    """
    if not body.startswith("["):
        return None
    size = _size_attribute(attributes)
    if size is None and (attributes or attributes_known):
        return None
    try:
        cls, location = _pointer_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if cls not in EXTENDED_POINTER_CLASSES or not location.s3BucketName or not location.s3Key:
        return None
    return S3Pointer(bucket=location.s3BucketName, key=location.s3Key, size=size or 0)


def pointer_body(pointer: S3Pointer) -> bytes:
    """The SQS body that points at ``pointer`` (what the Extended Client sends)."""
    location = _Location(s3BucketName=pointer.bucket, s3Key=pointer.key)
    return _pointer_encoder.encode((EXTENDED_POINTER_CLASS, location))


def payload_key(key: RecordKey) -> str:
    # Under the library's prefix so the bucket's lifecycle rule expires it;
    # named after the record so a reader knows the record without a GET.
    return f"{key.pk}@{key.rk[len(KEY_PREFIX) :]}{_PAYLOAD_SUFFIX}"


def payload_record_key(pointer: S3Pointer) -> RecordKey | None:
    """The record key of a payload msgcluster offloaded; None for anyone else's."""
    name = pointer.key
    if not name.startswith(KEY_PREFIX) or not name.endswith(_PAYLOAD_SUFFIX):
        return None
    pk, sep, rk = name[: -len(_PAYLOAD_SUFFIX)].rpartition("@")
    if not sep or not rk:
        return None
    try:
        return RecordKey(pk, KEY_PREFIX + rk)
    except InvalidKeyError:
        return None


async def store_payload(ctx: Context, key: RecordKey, data: bytes) -> S3Pointer:
    """Offload the whole wire body of the message whose record is ``key``."""
    return await store(ctx, payload_key(key), data)


async def store(ctx: Context, object_key: str, data: bytes) -> S3Pointer:
    bucket = ctx.settings.require_bucket("a body larger than max_message_bytes")
    return await put_payload(ctx.s3, bucket, object_key, data)


async def fetch(ctx: Context, pointer: S3Pointer) -> bytes:
    return await get_payload(ctx.s3, pointer)


async def put_payload(s3: Any, bucket: str, object_key: str, data: bytes) -> S3Pointer:
    """Store one offloaded payload (any aiobotocore S3 client)."""
    with aws_errors(resource=f"s3://{bucket}/{object_key}"):
        await s3.put_object(
            Bucket=bucket, Key=object_key, Body=data, ContentType="application/json"
        )
    return S3Pointer(bucket=bucket, key=object_key, size=len(data))


def _valid_key(key: str) -> bool:
    try:
        return 0 < len(key.encode()) <= 1024
    except UnicodeEncodeError:
        return False


async def get_payload(s3: Any, pointer: S3Pointer) -> bytes:
    """Read one offloaded payload back; a missing object says it expired."""
    if not _BUCKET.fullmatch(pointer.bucket) or not _valid_key(pointer.key):
        # The message's fault, not the configuration's: it fails alone.
        raise EnvelopeError(
            "the message points at an S3 location that cannot exist (bucket or key name "
            "outside S3's rules); it is dead-lettered, not retried"
        )
    where = f"s3://{pointer.bucket}/{pointer.key}"
    try:
        with aws_errors(resource=where):
            response = await s3.get_object(Bucket=pointer.bucket, Key=pointer.key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
                return data
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(
            f"offloaded body {where} is gone (expired after the retention period, or deleted)",
            code=exc.code,
            operation=exc.operation,
            status=exc.status,
        ) from exc
