"""dynamodb:// table layout: keys, fixed-width time keys, ids, bodies.

One table holds any number of named queues. Every key is text built here,
so the layout lives in one module (docs/dynamodb-queue.md draws it):

* message ``pk = <queue>#<shard>``, ``rk = m#<id>``; the id starts with the
  shard it was sent to (``<shard>.<...>``), so an id alone locates its item;
* FIFO group ``pk = <queue>#<shard>``, ``rk = g#<group hash>``;
* dedup record ``pk = <queue>#d#<dedup id>``, ``rk = d`` (expires by TTL);
* queue settings ``pk = <queue>#meta``, ``rk = meta``.

Items that can be received carry the sparse index attributes ``gpk`` (the
same ``<queue>#<shard>``) and ``gsk`` (``<visible-at µs, 16 digits>#<id>``):
the ready index. Acked items are deleted, so they leave it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
import uuid
import zlib
from typing import Any, Final

import msgspec

from .._errors import MessageTooLargeError, ReceiptError
from .._itemcodec import from_attr

__all__ = [
    "INDEX_NAME",
    "TTL_ATTRIBUTE",
    "QueueMeta",
    "Receipt",
    "body_attrs",
    "decode_body",
    "dedup_key",
    "fifo_id",
    "group_hash",
    "group_key",
    "group_prefix",
    "meta_key",
    "now_us",
    "partition",
    "shard_of",
    "standard_id",
    "time_key",
]

INDEX_NAME: Final = "ready-index"
TTL_ATTRIBUTE: Final = "expiresAt"  # the same TTL attribute as msgcluster's record table
_WIDTH: Final = 16  # µs since the epoch: 16 digits last until the year 2286

try:  # optional: zstd compresses better and faster; zlib is always there
    import zstandard  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


def now_us() -> int:
    return time.time_ns() // 1000


def time_key(us: int) -> str:
    """A timestamp as fixed-width text: text order is time order.

    DynamoMQ's ISO timestamps drop trailing zeros of the fraction, so
    ``...:00.5Z`` sorts before ``...:00Z``; zero-padded integers cannot.
    """
    return f"{max(us, 0):0{_WIDTH}d}"


def partition(queue: str, shard: int) -> str:
    return f"{queue}#{shard}"


def meta_key(queue: str) -> dict[str, Any]:
    return {"pk": {"S": f"{queue}#meta"}, "rk": {"S": "meta"}}


def dedup_key(queue: str, dedup_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"{queue}#d#{dedup_id}"}, "rk": {"S": "d"}}


def group_hash(group_id: str) -> str:
    """Fixed-width stand-in for a group id (up to 128 characters) inside keys."""
    return hashlib.sha256(group_id.encode()).hexdigest()[:20]


def group_shard(group_id: str, shards: int) -> int:
    return zlib.crc32(group_id.encode()) % shards


def group_key(queue: str, shard: int, ghash: str) -> dict[str, Any]:
    return {"pk": {"S": partition(queue, shard)}, "rk": {"S": f"g#{ghash}"}}


def group_prefix(shard: int, ghash: str) -> str:
    """The ``rk`` prefix shared by a group's messages, in send order."""
    return f"m#{shard}.{ghash}."


def shard_of(message_id: str) -> int:
    head, dot, _ = message_id.partition(".")
    if not dot or not head.isdigit():
        raise ValueError(f"not a dynamodb:// message id: {message_id!r}")
    return int(head)


def message_key(queue: str, shards: int, message_id: str) -> dict[str, Any]:
    """The item of ``message_id`` in ``queue`` (a DLQ may have another shard
    count: the id's shard is taken modulo the queue's)."""
    shard = shard_of(message_id) % shards
    return {"pk": {"S": partition(queue, shard)}, "rk": {"S": f"m#{message_id}"}}


def standard_id(shard: int) -> str:
    return f"{shard}.{uuid.uuid4().hex}"


_seq_lock = threading.Lock()
_last_seq = 0
_process_tag = os.urandom(3).hex()
_counter = itertools.count()


def _next_seq() -> int:
    """Strictly increasing µs within the process (two sends in one µs still order)."""
    global _last_seq
    with _seq_lock:
        _last_seq = max(now_us(), _last_seq + 1)
        return _last_seq


def fifo_id(shard: int, ghash: str) -> str:
    """``<shard>.<group hash>.<seq>.<tag>``: ids of one group sort in send order."""
    tag = f"{_process_tag}{next(_counter) % 4096:03x}"
    return f"{shard}.{ghash}.{time_key(_next_seq())}.{tag}"


# ----------------------------------------------------------------- bodies


def body_attrs(body: bytes, compress_over: int) -> dict[str, Any]:
    """The ``b`` (and ``z`` codec flag) attributes of a body: bodies over
    ``compress_over`` bytes are compressed when that makes them smaller."""
    if len(body) <= compress_over:
        return {"b": {"B": body}}
    if zstandard is not None:
        codec, packed = "zstd", zstandard.ZstdCompressor(level=3).compress(body)
    else:
        codec, packed = "zlib", zlib.compress(body, 6)
    if len(packed) >= len(body):
        return {"b": {"B": body}}
    return {"b": {"B": packed}, "z": {"S": codec}}


def decode_body(item: dict[str, Any], limit: int) -> bytes:
    raw = bytes(item["b"]["B"]) if "b" in item else b""
    codec = item.get("z", {}).get("S")
    if codec is None:
        return raw
    if codec == "zlib":
        # Bounded: a corrupt (or hostile) item cannot inflate without limit.
        inflater = zlib.decompressobj()
        body = inflater.decompress(raw, limit + 1)
    elif codec == "zstd" and zstandard is not None:
        body = zstandard.ZstdDecompressor().decompress(raw, max_output_size=limit + 1)
    else:
        raise MessageTooLargeError(f"message body uses codec {codec!r}, not available here")
    if len(body) > limit:
        raise MessageTooLargeError(f"stored body inflates past {limit} bytes")
    return body


# ----------------------------------------------------------------- receipts


class Receipt(msgspec.Struct, frozen=True, array_like=True):
    """What a ReceivedMessage's ``receipt`` carries: where the message lives
    and the lease token its delivery wrote (ack/nack/extend are conditional
    on it: DynamoDB's receipt handle)."""

    table: str
    queue: str
    id: str
    lease: str


_receipt_encoder = msgspec.json.Encoder()
_receipt_decoder = msgspec.json.Decoder(Receipt)


def encode_receipt(receipt: Receipt) -> str:
    return _receipt_encoder.encode(receipt).decode()


def decode_receipt(text: str, table: str, queue: str, message_id: str) -> Receipt:
    try:
        receipt = _receipt_decoder.decode(text)
    except msgspec.DecodeError:
        receipt = None
    if receipt is None or receipt.table != table or receipt.queue != queue:
        raise ReceiptError(
            f"receipt of message {message_id} is not from dynamodb://{table}?queue={queue}",
            message_id=message_id,
        )
    return receipt


def new_lease() -> str:
    return uuid.uuid4().hex


class QueueMeta(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's lasting settings, stored once (``<queue>#meta``): every
    handle must agree on them, since they decide where items live."""

    fifo: bool
    shards: int
    dead_letter_queue: bool = False


def attributes_of(item: dict[str, Any]) -> dict[str, str]:
    attributes = item.get("at")
    if not attributes:
        return {}
    return {name: str(from_attr(value)) for name, value in attributes["M"].items()}
