"""Checks every backend applies the same way, so a message that memory://
accepts is one SQS accepts too (and the conformance suite can say so).

Limits follow SQS: attribute names, characters allowed in text, FIFO group
and deduplication ids. Whole-call problems raise; per-entry problems are
returned for the caller to put in that entry's result.
"""

from __future__ import annotations

import base64
import decimal
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import BatchLimitError, MessageTooLargeError, ValidationError
from ._contract import OutgoingMessage
from ._extended import parse_pointer

if TYPE_CHECKING:
    from ._contract import Capabilities

__all__ = [
    "RESERVED_ATTRIBUTE_PREFIXES",
    "PreparedMessage",
    "check_ack_batch",
    "check_batch_bytes",
    "check_receive",
    "check_attribute",
    "check_attribute_name",
    "check_send_batch",
    "check_visibility",
    "prepare_message",
    "sqs_attribute",
]

# Backends may use attributes under "msgcluster." for their own bookkeeping
# (the sqs backend flags encoded bodies); "aws." and "amazon." are SQS's.
RESERVED_ATTRIBUTE_PREFIXES = ("msgcluster.", "aws.", "amazon.")
# The SQS Extended Client's: a message carrying one is read as an S3 pointer.
RESERVED_ATTRIBUTE_NAMES = frozenset({"extendedpayloadsize", "sqslargepayloadsize"})
_DATA_TYPE = re.compile(r"(String|Number|Binary)(\.[A-Za-z0-9_.-]{1,250})?")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_-])?")
# Characters SQS accepts in text (XML 1.0 minus the rest).
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_FIFO_ID = re.compile(r"[!-~]{1,128}")


class PreparedMessage(NamedTuple):
    """One validated entry: the body as bytes and its size as counted
    against ``max_body_bytes`` (body plus attribute names and values)."""

    body: bytes
    attributes: dict[str, str]
    group_id: str | None
    dedup_id: str | None
    delay_seconds: float | None
    size: int
    attribute_types: dict[str, str] = {}  # noqa: RUF012 - a NamedTuple default, never mutated


def check_send_batch(messages: Sequence[object], capabilities: Capabilities) -> None:
    # One bytes/str/message passed bare would otherwise be iterated as a batch.
    if isinstance(messages, bytes | str | OutgoingMessage) or not isinstance(messages, Sequence):
        raise ValidationError("send takes a sequence of messages: wrap a single one in a list")
    count = len(messages)
    if count > capabilities.max_send_batch:
        raise BatchLimitError(
            f"send takes at most {capabilities.max_send_batch} messages per call, got {count}"
        )


def check_ack_batch(messages: Sequence[object], capabilities: Capabilities) -> None:
    if not isinstance(messages, Sequence) or isinstance(messages, bytes | str):
        raise ValidationError("ack takes a sequence of received messages: wrap one in a list")
    count = len(messages)
    if count > capabilities.max_ack_batch:
        raise BatchLimitError(
            f"ack takes at most {capabilities.max_ack_batch} messages per call, got {count}"
        )


def check_batch_bytes(sizes: list[int], capabilities: Capabilities) -> None:
    total = sum(sizes)
    if total > capabilities.max_send_batch_bytes:
        raise BatchLimitError(
            f"a send carries at most {capabilities.max_send_batch_bytes} bytes "
            f"per call, got {total}"
        )


def check_receive(
    max_messages: int,
    wait_seconds: float,
    visibility_timeout: float | None,
    capabilities: Capabilities,
) -> None:
    if isinstance(max_messages, bool) or not isinstance(max_messages, int):
        raise ValidationError(
            f"max_messages must be an int from 1 to {capabilities.max_receive_batch}, "
            f"got {type(max_messages).__name__}"
        )
    if not 1 <= max_messages <= capabilities.max_receive_batch:
        raise BatchLimitError(
            f"max_messages must be from 1 to {capabilities.max_receive_batch}, got {max_messages}"
        )
    if not _in_range(wait_seconds, capabilities.max_wait_seconds):
        raise ValidationError(
            f"wait_seconds must be from 0 to {capabilities.max_wait_seconds:g}, got {wait_seconds}"
        )
    if visibility_timeout is not None:
        check_visibility(visibility_timeout, capabilities, "visibility_timeout")


def check_visibility(seconds: float, capabilities: Capabilities, name: str) -> None:
    if not _in_range(seconds, capabilities.max_visibility_seconds):
        raise ValidationError(
            f"{name} must be from 0 to {capabilities.max_visibility_seconds:g} seconds, "
            f"got {seconds}"
        )


def prepare_message(
    item: object, capabilities: Capabilities, *, content_based_dedup: bool = False
) -> PreparedMessage:
    """Validate one entry of a send; raise ValidationError (or
    MessageTooLargeError) saying what is wrong with it."""
    message = item if isinstance(item, OutgoingMessage) else OutgoingMessage(body=item)
    body = _body_bytes(message.body)
    # The Extended Client's size attribute belongs on its pointer, and only there.
    pointer = body[:1] == b"[" and _is_pointer(body)
    attributes, types = _checked_attributes(message.attributes, capabilities, extended=pointer)
    size = len(body) + attributes_bytes(attributes, types)
    if size > capabilities.max_body_bytes:
        raise MessageTooLargeError(
            f"message is {size} bytes (body plus attributes); the queue takes at most "
            f"{capabilities.max_body_bytes}"
        )
    _check_fifo_fields(message, capabilities, content_based_dedup=content_based_dedup)
    delay = message.delay_seconds
    if delay is not None and not _in_range(delay, capabilities.max_delay_seconds):
        raise ValidationError(
            f"delay_seconds must be from 0 to {capabilities.max_delay_seconds:g}, got {delay}"
        )
    return PreparedMessage(
        body,
        attributes,
        message.group_id,
        message.dedup_id,
        message.delay_seconds,
        size,
        types,
    )


def attributes_bytes(attributes: Mapping[str, str], types: Mapping[str, str]) -> int:
    """What attributes count against SQS's size limit: each one's name, data
    type and value (a Binary value as its bytes, not their base64 text)."""
    total = 0
    for name, value in attributes.items():
        data_type = types.get(name, "String")
        raw = base64.b64decode(value) if data_type.startswith("Binary") else value.encode()
        total += len(name.encode()) + len(data_type) + len(raw)
    return total


def _body_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        try:
            return body.encode()
        except UnicodeEncodeError as exc:  # lone surrogates
            raise ValidationError(f"body is not encodable as UTF-8: {exc}") from exc
    raise ValidationError(f"a message body is bytes or str, not {type(body).__name__}")


def _is_pointer(body: bytes) -> bool:
    try:
        return parse_pointer(body.decode(), {}, attributes_known=False) is not None
    except UnicodeDecodeError:
        return False


def _checked_attributes(
    attributes: object, capabilities: Capabilities, *, extended: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """The attributes as text, and the data type of those that are not String."""
    if not isinstance(attributes, dict):
        raise ValidationError("attributes must be a dict of names to values")
    if len(attributes) > capabilities.max_attributes:
        raise ValidationError(
            f"at most {capabilities.max_attributes} attributes per message, got {len(attributes)}"
        )
    text: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, value in attributes.items():
        if not (extended and isinstance(name, str) and name.lower() in RESERVED_ATTRIBUTE_NAMES):
            check_attribute_name(name)
        attr = sqs_attribute(name, value)
        data_type = attr["DataType"]
        if "BinaryValue" in attr:
            check_attribute(name, data_type, attr["BinaryValue"])
            text[name] = base64.b64encode(attr["BinaryValue"]).decode("ascii")
        else:
            check_attribute(name, data_type, attr["StringValue"])
            text[name] = attr["StringValue"]
        if data_type != "String":
            types[name] = data_type
    return text, types


def sqs_attribute(name: str, value: Any) -> dict[str, Any]:
    """A plain value as an SQS message attribute: ``str`` -> String,
    ``int``/``float`` -> Number, ``bytes`` -> Binary, a mapping with
    ``DataType`` as it is (one converter for every path)."""
    if isinstance(value, Mapping):
        if "DataType" not in value or not ({"StringValue", "BinaryValue"} & value.keys()):
            raise ValidationError(
                f"message attribute {name!r}: a mapping needs 'DataType' and 'StringValue' "
                "or 'BinaryValue'"
            )
        return dict(value)
    if isinstance(value, bool):
        return {"DataType": "String", "StringValue": "true" if value else "false"}
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"message attribute {name!r}: {value} is not a number SQS takes")
        return {"DataType": "Number", "StringValue": repr(value)}
    if isinstance(value, bytes | bytearray):
        return {"DataType": "Binary", "BinaryValue": bytes(value)}
    raise ValidationError(
        f"message attribute {name!r} has unsupported type {type(value).__name__} "
        "(use str, int, float, bytes, or an SQS attribute mapping)"
    )


def check_attribute_name(
    name: object, *, reserved: tuple[str, ...] = RESERVED_ATTRIBUTE_PREFIXES
) -> str:
    """SQS's rules for a message attribute name (one validator for every path)."""
    if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name) or ".." in name:
        raise ValidationError(
            f"attribute name {name!r} is invalid: 1-256 of A-Z a-z 0-9 _ - . "
            "(not starting or ending with '.', no '..')"
        )
    lowered = name.lower()
    if lowered.startswith(reserved) or lowered in RESERVED_ATTRIBUTE_NAMES:
        raise ValidationError(
            f"attribute name {name!r} is reserved (prefixes: {', '.join(reserved)}; "
            "names: ExtendedPayloadSize, SQSLargePayloadSize)"
        )
    return name


def check_attribute(name: str, data_type: object, value: object) -> None:
    """SQS's rules for one attribute value: a known data type, a non-empty value
    (SQS refuses empty ones), text SQS can carry, a number that parses."""
    if not isinstance(data_type, str) or not _DATA_TYPE.fullmatch(data_type):
        raise ValidationError(
            f"attribute {name!r}: DataType must be String, Number or Binary (optionally "
            f"with a custom '.suffix'), got {data_type!r}"
        )
    if data_type.startswith("Binary"):
        if not isinstance(value, bytes | bytearray) or not value:
            raise ValidationError(f"attribute {name!r} must be non-empty bytes")
        return
    if not isinstance(value, str) or not value:
        raise ValidationError(f"attribute {name!r} must be a non-empty str")
    if _NOT_SQS_TEXT.search(value):
        raise ValidationError(
            f"attribute {name!r} holds characters queues cannot carry "
            "(control characters other than tab/newline/CR, or non-characters)"
        )
    if data_type.startswith("Number") and not _sqs_number(value):
        raise ValidationError(
            f"attribute {name!r} is a Number but {value[:40]!r} is not one SQS carries "
            "(at most 38 significant digits, magnitude from 10^-128 to 10^126)"
        )


def _sqs_number(text: str) -> bool:
    """SQS's Number: up to 38 digits of precision, between 10^-128 and 10^+126."""
    if not _NUMBER.fullmatch(text):
        return False
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    if value.is_zero():
        return True
    # Significant digits, counted without the context's rounding (28 digits).
    significant = "".join(map(str, value.as_tuple().digits)).strip("0")
    return len(significant) <= 38 and -128 <= value.adjusted() < 126


def _check_fifo_fields(
    message: OutgoingMessage, capabilities: Capabilities, *, content_based_dedup: bool
) -> None:
    for name, value in (("group_id", message.group_id), ("dedup_id", message.dedup_id)):
        if value is not None and not (isinstance(value, str) and _FIFO_ID.fullmatch(value)):
            raise ValidationError(
                f"{name} must be 1-128 printable ASCII characters (no spaces), got {value!r}"
            )
    if not capabilities.fifo:
        if message.dedup_id is not None:
            raise ValidationError("dedup_id is only for FIFO queues")
        return
    if message.group_id is None:
        raise ValidationError("a FIFO queue needs a group_id on every message")
    if message.dedup_id is None and not content_based_dedup:
        raise ValidationError(
            "a FIFO queue needs a dedup_id on every message unless it deduplicates by content"
        )
    if message.delay_seconds is not None:
        raise ValidationError("FIFO queues take no per-message delay_seconds (use the queue's)")


def _in_range(value: object, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= high
    )
