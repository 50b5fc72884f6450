"""Records <-> DynamoDB items and wire envelopes: hypothesis round trips."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import msgcluster
from msgcluster import MessageClusterRecord, MessageRecord, RecordKey, Status
from msgcluster._itemcodec import decode_item, encode_item, from_attr, to_attr
from msgcluster._schemas import ErrorEntry, MessageEnvelope, S3Pointer, TaskEnvelope
from msgcluster.read._incoming import MessageKind, SqsMessage, classify

# Floats DynamoDB can hold exactly as Python's repr writes them; ints within 38 digits.
numbers = st.integers(min_value=-(10**37), max_value=10**37) | st.floats(
    allow_nan=False, allow_infinity=False, min_value=-1e100, max_value=1e100
).filter(lambda f: f == 0 or abs(f) > 1e-100)
leaves = st.none() | st.booleans() | st.text(max_size=20) | numbers
meta = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.uuids().map(str)
stamps = st.just("2026-11-22T12:00:00.000Z")


@st.composite
def message_records(draw: Any) -> MessageRecord:
    ident = draw(ids)
    return MessageRecord(
        pk=f"SQSMessage${ident}",
        rk="SQSMessage$message",
        id=ident,
        url="https://sqs.us-east-1.amazonaws.com/123456789012/q",
        status=draw(st.sampled_from(list(Status))),
        meta=draw(meta),
        body=draw(st.none() | st.text(max_size=50)),
        body_size=draw(st.integers(0, 2**31)),
        started_at=draw(stamps),
        updated_at=draw(stamps),
        expires_at=draw(st.integers(0, 2**40)),
        consumption_count=draw(st.integers(0, 1000)),
        error=draw(
            st.lists(
                st.builds(
                    ErrorEntry, at=stamps, message=st.text(max_size=30), type=st.text(max_size=10)
                ),
                max_size=3,
            )
        ),
    )


@settings(max_examples=200, deadline=None)
@given(message_records())
def test_message_record_round_trip(record: MessageRecord) -> None:
    assert decode_item(encode_item(record), MessageRecord) == record


@settings(max_examples=100, deadline=None)
@given(meta, st.integers(0, 10**6), st.integers(0, 10**6))
def test_cluster_record_round_trip(value: Any, total: int, completed: int) -> None:
    record = MessageClusterRecord(
        pk="SQSMessage$c",
        rk="SQSMessage$cluster",
        url="u",
        meta=value,
        total=total,
        completed=completed,
        started_at="s",
        updated_at="u",
        expires_at=1,
    )
    decoded = decode_item(encode_item(record), MessageClusterRecord)
    assert decoded == record
    assert decoded.in_progress == max(total - completed, 0)


@settings(max_examples=200, deadline=None)
@given(meta)
def test_attribute_round_trip(value: Any) -> None:
    assert from_attr(to_attr(value)) == value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 10**40, 1e-200, 1e200, object()])
def test_values_dynamodb_cannot_hold(bad: Any) -> None:
    with pytest.raises(msgcluster.ValidationError):
        to_attr(bad)


@settings(max_examples=100, deadline=None)
@given(ids, meta)
def test_envelopes_round_trip_through_the_tagged_union(ident: str, body: Any) -> None:
    raw = msgspec.Raw(msgspec.json.encode(body))
    message = MessageEnvelope(pk=f"SQSMessage${ident}", rk="SQSMessage$message", url="u", body=raw)
    task = TaskEnvelope(
        pk=f"SQSMessage${ident}$shard$0",
        rk="SQSMessage$task$0000000007",
        task=raw,
        globals_s3=S3Pointer(bucket="b", key="k", size=3),
    )
    for envelope in (message, task):
        wire = msgspec.json.encode(envelope).decode()
        incoming = classify(SqsMessage(id="m", body=wire))
        assert incoming.error is None
        assert incoming.kind is (MessageKind.MESSAGE if envelope is message else MessageKind.TASK)
        decoded = incoming.envelope
        assert type(decoded) is type(envelope)
        assert msgspec.json.encode(decoded) == msgspec.json.encode(envelope)


def test_record_keys() -> None:
    key = RecordKey("SQSMessage$a", "SQSMessage$message")
    assert RecordKey.of(key) is key
    assert RecordKey.of({"pk": key.pk, "rk": key.rk}) == key
    assert RecordKey.of({"pKey": key.pk, "rKey": key.rk}) == key
    assert RecordKey.of((key.pk, key.rk)) == key
    for bad in ("SQSMessage$a", {"pk": "x", "rk": "y"}, ("SQSMessage$a", 3), None):
        with pytest.raises(msgcluster.InvalidKeyError):
            RecordKey.of(bad)
    with pytest.raises(msgcluster.InvalidKeyError):
        RecordKey("SQSMessage$" + "x" * 2000, "SQSMessage$message")
