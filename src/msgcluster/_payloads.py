"""Bodies too large for SQS: stored in S3, referenced from the message.

msgcluster's own envelopes keep their keys inline and point at the body
(``bodyS3``), so completion checks never touch S3. Readers also accept the SQS
Extended Client pointer format (a two-element JSON array naming the pointer
class, with the ``ExtendedPayloadSize`` / legacy ``SQSLargePayloadSize``
message attribute), whose S3 object holds the whole original body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from ._errors import ObjectNotFoundError, aws_errors
from ._schemas import KEY_PREFIX, S3Pointer

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["EXTENDED_POINTER_CLASSES", "fetch", "parse_extended_pointer", "store"]

EXTENDED_POINTER_CLASSES: Final = frozenset(
    {
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        "com.amazon.sqs.javamessaging.MessageS3Pointer",  # extended client 1.x
    }
)
EXTENDED_SIZE_ATTRIBUTES: Final = ("ExtendedPayloadSize", "SQSLargePayloadSize")


class _ExtendedPointer(msgspec.Struct):
    s3BucketName: str
    s3Key: str


_pointer_decoder: Final = msgspec.json.Decoder(tuple[str, _ExtendedPointer])


def parse_extended_pointer(body: str) -> S3Pointer | None:
    """The S3 location if ``body`` is an SQS Extended Client pointer, else None."""
    if not body.startswith("["):
        return None
    try:
        cls, pointer = _pointer_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if cls not in EXTENDED_POINTER_CLASSES:
        return None
    return S3Pointer(bucket=pointer.s3BucketName, key=pointer.s3Key)


def payload_key(ident: str, kind: str = "body") -> str:
    # Under the library's prefix so the bucket's lifecycle rule expires it.
    return f"{KEY_PREFIX}{ident}-{kind}.json"


async def store(ctx: Context, ident: str, data: bytes, *, kind: str = "body") -> S3Pointer:
    bucket = ctx.settings.require_bucket("a body larger than max_message_bytes")
    key = payload_key(ident, kind)
    with aws_errors(resource=f"s3://{bucket}/{key}"):
        await ctx.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/json")
    return S3Pointer(bucket=bucket, key=key, size=len(data))


async def fetch(ctx: Context, pointer: S3Pointer) -> bytes:
    where = f"s3://{pointer.bucket}/{pointer.key}"
    try:
        with aws_errors(resource=where):
            response = await ctx.s3.get_object(Bucket=pointer.bucket, Key=pointer.key)
            async with response["Body"] as stream:
                return await stream.read()
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(
            f"offloaded body {where} is gone (expired after the retention period, or deleted)",
            code=exc.code,
            operation=exc.operation,
            status=exc.status,
        ) from exc
