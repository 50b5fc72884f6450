"""Record <-> DynamoDB item codec: msgcluster's vs boto3's TypeSerializer.

Run: ``.venv/bin/python -m benchmarks.bench_itemcodec``

boto3 is not a runtime dependency (it is installed here only because moto
needs it); this shows that the hand-written tag mapping over
``msgspec.to_builtins`` / ``msgspec.convert`` is worth keeping.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import msgspec

from msgcluster import MessageRecord
from msgcluster._itemcodec import decode_item, encode_item

N = 20_000


def sample() -> MessageRecord:
    return MessageRecord(
        pk="SQSMessage$6b1f0f0e-7d3c-4f5e-9a59-1c2d3e4f5a6b",
        rk="SQSMessage$message",
        id="6b1f0f0e-7d3c-4f5e-9a59-1c2d3e4f5a6b",
        url="https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
        meta={"customer": "acme", "priority": 3, "tags": ["a", "b"], "ratio": 0.25},
        body='{"order":1,"item":"book"}',
        body_size=25,
        started_at="2026-11-22T12:00:00.000Z",
        updated_at="2026-11-22T12:00:00.000Z",
        expires_at=1_797_000_000,
    )


def timed(func: Any) -> float:
    start = time.perf_counter()
    for _ in range(N):
        func()
    return (time.perf_counter() - start) / N * 1e6


def main() -> None:
    record = sample()
    item = encode_item(record)
    ours_encode = timed(lambda: encode_item(record))
    ours_decode = timed(lambda: decode_item(item, MessageRecord))
    print("| codec | encode µs/item | decode µs/item |")
    print("|---|---|---|")
    print(f"| msgcluster._itemcodec | {ours_encode:.1f} | {ours_decode:.1f} |")
    try:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
    except ImportError:
        print("(boto3 not installed: no comparison)")
        return
    ser, de = TypeSerializer(), TypeDeserializer()

    def boto_encode() -> dict[str, Any]:
        builtins = msgspec.to_builtins(record)
        builtins["meta"]["ratio"] = Decimal("0.25")  # boto3 refuses floats
        return {k: ser.serialize(v) for k, v in builtins.items()}

    boto_item = boto_encode()

    def plain(value: Any) -> Any:  # boto3 hands back Decimals for every number
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    def boto_decode() -> MessageRecord:
        plain_item = {k: plain(de.deserialize(v)) for k, v in boto_item.items()}
        return msgspec.convert(plain_item, MessageRecord, strict=False)

    b_encode, b_decode = timed(boto_encode), timed(boto_decode)
    print(f"| boto3 TypeSerializer + msgspec | {b_encode:.1f} | {b_decode:.1f} |")
    print(f"| speed-up | {b_encode / ours_encode:.1f}x | {b_decode / ours_decode:.1f}x |")


if __name__ == "__main__":
    main()
