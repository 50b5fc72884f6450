"""Payloads too large for a queue, offloaded to S3 by the portable layer.

The same mechanism and format as the Client's (``_extended``): the
SQS Extended Client's pointer body plus the ``ExtendedPayloadSize``
attribute, the object holding the whole body. So a queue opened with
``payloads=PayloadStore(...)`` sends what the AWS Extended Client reads, and
receives what it sends (bodies fetched back, the size attribute dropped, as
the Extended Client does).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._schemas import KEY_PREFIX
from ._extended import (
    EXTENDED_SIZE_ATTRIBUTES,
    get_payload,
    parse_pointer,
    pointer_body,
    put_payload,
)

if TYPE_CHECKING:
    from .._schemas import S3Pointer
    from ._contract import OutgoingMessage, ReceivedMessage

__all__ = ["PayloadStore"]

_SIZE_ATTRIBUTE: Final = EXTENDED_SIZE_ATTRIBUTES[0]


class PayloadStore:
    """Where a queue offloads bodies larger than it takes: ``bucket`` through
    ``s3`` (an aiobotocore S3 client, e.g. ``Client.s3``; not closed here).

    Objects are named ``<prefix><uuid>.payload.json``; under the default
    prefix the bucket's msgcluster lifecycle rule expires them.
    """

    def __init__(self, s3: Any, bucket: str, *, prefix: str = KEY_PREFIX) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"PayloadStore(bucket={self.bucket!r})"

    async def offload(self, message: OutgoingMessage, body: bytes) -> OutgoingMessage:
        """The message with its body stored in S3 and a pointer in its place."""
        key = f"{self.prefix}{uuid.uuid4()}.payload.json"
        pointer = await put_payload(self.s3, self.bucket, key, body)
        size = {_SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(pointer.size)}}
        return msgspec.structs.replace(
            message, body=pointer_body(pointer), attributes={**message.attributes, **size}
        )

    async def restore(self, message: ReceivedMessage) -> ReceivedMessage:
        """A received pointer with its body fetched back; anything else as it is."""
        pointer = self.pointer_of(message)
        if pointer is None:
            return message
        body = await get_payload(self.s3, pointer)
        attributes = {
            name: value
            for name, value in message.attributes.items()
            if name not in EXTENDED_SIZE_ATTRIBUTES
        }
        return msgspec.structs.replace(message, body=body, attributes=attributes)

    @staticmethod
    def pointer_of(message: ReceivedMessage) -> S3Pointer | None:
        if not message.body.startswith(b"["):
            return None
        try:
            text = message.body.decode()
        except UnicodeDecodeError:
            return None
        return parse_pointer(text, message.attributes)
