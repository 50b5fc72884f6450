"""``sqs://<queue-name>`` (or a full SQS queue URL): Amazon SQS as a queue backend.

One request per call, as the contract asks: SendMessageBatch, ReceiveMessage
(long polling), DeleteMessageBatch, ChangeMessageVisibility. Bodies are
arbitrary bytes: a body SQS cannot carry as text (empty, not UTF-8, or with
characters outside SQS's XML set) is sent base64-encoded and flagged with the
``msgcluster.encoding`` message attribute, so every backend round-trips the
same bytes. The redrive policy (max receives, DLQ) and FIFO-ness are read
from the queue when it opens; SQS moves messages to its DLQ itself.

Credentials never come from the URI: pass ``client=`` (an aiobotocore SQS
client, e.g. ``msgcluster.Client(...).sqs``, shared and not closed here) or
let the default credential chain find them (environment, profile, role).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

from .._aws_errors import aws_errors, translate
from .._errors import (
    AwsError,
    AwsValidationError,
    MessageTooLargeError,
    MsgclusterError,
    QueueURIError,
    ReceiptError,
)
from ._checks import (
    attributes_bytes,
    check_batch_bytes,
    check_receive,
)
from ._contract import Capabilities, ReceivedMessage, SendResult
from ._handle import QueueHandle
from ._uri import Param, aws_client, boolean, endpoint, integer, read_params, session, text

if TYPE_CHECKING:
    from ._checks import PreparedMessage
    from ._uri import QueueURI

__all__ = ["SqsQueue", "open_sqs_queue"]

#: Message attribute that flags a base64-encoded body (reserved prefix).
ENCODING_ATTRIBUTE = "msgcluster.encoding"
_EMPTY_PLACEHOLDER = "-"
REASON_ATTRIBUTE = "msgcluster.dead-letter-reason"
SQS_MAX_ATTRIBUTES = 10
_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]
# SQS's text: XML 1.0 characters. Anything else must travel encoded.
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}|[A-Za-z0-9_-]{1,75}\.fifo")
_RECEIPT_CODES = {
    "ReceiptHandleIsInvalid",
    "InvalidReceiptHandle",
    "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
    "InvalidParameterValue",
}


PARAMS: dict[str, Param[Any]] = {
    "region": Param(text),
    "endpoint": Param(endpoint),
    "account": Param(text),
    # Default connection pool of a client this backend creates.
    "max_connections": Param(integer(1, 1000)),
    # Accept the queue's redrive policy as the DLQ capability (default true).
    "use_redrive_policy": Param(boolean),
    "client": Param(aws_client("send_message_batch"), query=False),
    "session": Param(session, query=False),
}


def check_uri(uri: QueueURI, /, **options: Any) -> dict[str, Any]:
    """The queue's parameters, checked (and its name) without opening it."""
    params = read_params(uri, options, PARAMS)
    _target(uri)
    return params


async def open_sqs_queue(uri: QueueURI, /, **options: Any) -> SqsQueue:
    """The backend factory registered for ``sqs://`` and SQS queue URLs."""
    params = check_uri(uri, **options)
    queue = SqsQueue(uri.uri, params)
    try:
        await queue._open(uri)
    except BaseException:
        await queue.aclose()
        raise
    return queue


def _target(uri: QueueURI) -> tuple[str | None, str]:
    """(queue URL, queue name) from the URI: a URL for http(s)://, else a name."""
    if uri.scheme in ("http", "https"):
        url = uri.uri.split("?", 1)[0]
        name = url.rstrip("/").rsplit("/", 1)[-1]
        return url, name
    name = uri.location.rstrip("/")
    if not _QUEUE_NAME.fullmatch(name):
        raise QueueURIError(
            "sqs:// takes a queue name (1-80 of A-Z a-z 0-9 _ -, FIFO names end in .fifo) "
            "or the queue's URL"
        )
    return None, name


class SqsQueue(QueueHandle):
    """A handle on one SQS queue (see :class:`~msgcluster.queues.Queue`)."""

    def __init__(self, uri: str, params: dict[str, Any]) -> None:
        super().__init__(uri)
        self._params = params
        self._client = params.get("client")
        self.url = ""
        self.name = ""
        self.max_receives: int | None = None
        self.dlq_arn: str | None = None
        self._dlq_url = ""
        self.content_based_dedup = False

    async def _open(self, uri: QueueURI) -> None:
        url, self.name = _target(uri)
        if self._client is None:
            local = None
            if url is not None and not url.startswith("https://sqs."):
                # A local endpoint's queue URL: talk to that endpoint.
                local = url.split("/", 3)[0] + "//" + url.split("/", 3)[2]
            self._client = await self._own_client("sqs", self._params, local)
        with aws_errors(resource=url or f"sqs://{self.name}"):
            if url is None:
                request: dict[str, Any] = {"QueueName": self.name}
                if "account" in self._params:
                    request["QueueOwnerAWSAccountId"] = self._params["account"]
                url = (await self._client.get_queue_url(**request))["QueueUrl"]
            self.url = url
            attributes = (
                await self._client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            )["Attributes"]
        self._capabilities = self._read_capabilities(attributes)

    def _read_capabilities(self, attributes: dict[str, str]) -> Capabilities:
        fifo = attributes.get("FifoQueue") == "true"
        self.content_based_dedup = attributes.get("ContentBasedDeduplication") == "true"
        policy = attributes.get("RedrivePolicy")
        if policy and self._params.get("use_redrive_policy", True):
            try:
                parsed = json.loads(policy)
                self.max_receives = int(parsed["maxReceiveCount"])
                self.dlq_arn = str(parsed["deadLetterTargetArn"])
            except (ValueError, KeyError, TypeError):
                self.max_receives = self.dlq_arn = None
        max_size = int(attributes.get("MaximumMessageSize", "262144"))
        return Capabilities(
            fifo=fifo,
            native_dlq=self.dlq_arn is not None,
            strict_receipts=False,
            max_send_batch=10,
            max_send_batch_bytes=max_size,
            max_receive_batch=10,
            max_ack_batch=10,
            max_body_bytes=max_size,
            max_attributes=9,  # SQS allows 10; one is kept for the encoding flag
            max_delay_seconds=900,
            max_visibility_seconds=43_200,
            max_wait_seconds=20,
            batch_visibility=True,
            dead_letter_now=True,
        )

    def __repr__(self) -> str:
        return f"<SqsQueue {self.name!r}{' closed' if self._closed else ''}>"

    # ------------------------------------------------------------------ send

    def _dedup_by_content(self) -> bool:
        return self.content_based_dedup

    async def _send_prepared(self, entries: dict[int, PreparedMessage]) -> dict[int, SendResult]:
        caps = self.capabilities
        results: dict[int, SendResult] = {}
        requests: list[dict[str, Any]] = []
        sizes: list[int] = []
        for index, p in entries.items():
            entry, size = _entry(index, p, caps)
            if isinstance(entry, MsgclusterError):
                results[index] = SendResult(index=index, error=entry)
                continue
            requests.append(entry)
            sizes.append(size)
        check_batch_bytes(sizes, caps)
        if requests:
            with aws_errors(resource=self.url):
                response = await self._client.send_message_batch(
                    QueueUrl=self.url, Entries=requests
                )
            for ok in response.get("Successful", []):
                i = int(ok["Id"])
                results[i] = SendResult(index=i, id=ok["MessageId"])
            for failed in response.get("Failed", []):
                i = int(failed["Id"])
                error = _entry_error(failed, self.url, receipts=False)
                results[i] = SendResult(index=i, error=error)
        return results

    # --------------------------------------------------------------- receive

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        self._check_open()
        check_receive(max_messages, wait_seconds, visibility_timeout, self.capabilities)
        request: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            # SQS waits in whole seconds; never shorter than asked.
            "WaitTimeSeconds": math.ceil(wait_seconds),
            "MessageSystemAttributeNames": _SYSTEM_ATTRIBUTES,
            "MessageAttributeNames": ["All"],
        }
        if visibility_timeout is not None:
            request["VisibilityTimeout"] = math.ceil(visibility_timeout)
        response: dict[str, Any] = {}
        with self._poll_scope(), aws_errors(resource=self.url):
            response = await self._client.receive_message(**request)
        return [_received(m) for m in response.get("Messages", [])]

    # ------------------------------------------------------ ack, nack, extend

    async def _ack_receipts(self, receipts: dict[int, str]) -> dict[int, MsgclusterError]:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in receipts.items()]
        with aws_errors(resource=self.url):
            response = await self._client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        return {int(f["Id"]): _entry_error(f, self.url) for f in response.get("Failed", [])}

    async def _change_receipts(
        self, changes: dict[int, tuple[str, float]]
    ) -> dict[int, MsgclusterError]:
        entries = [
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": math.ceil(seconds)}
            for i, (r, seconds) in changes.items()
        ]
        with aws_errors(resource=self.url):
            response = await self._client.change_message_visibility_batch(
                QueueUrl=self.url, Entries=entries
            )
        return {int(f["Id"]): _entry_error(f, self.url) for f in response.get("Failed", [])}

    async def _change_one(self, message: ReceivedMessage, seconds: float) -> None:
        """One ChangeMessageVisibility (not the batch form): a stale receipt
        is a ReceiptError saying why."""
        receipt = self._receipt(message)
        try:
            await self._client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=math.ceil(seconds)
            )
        except Exception as exc:
            error = translate(exc, resource=self.url)
            if getattr(error, "code", None) in _RECEIPT_CODES:
                raise ReceiptError(
                    f"message {message.id}: this delivery's receipt no longer holds "
                    f"(acked, or received again after its visibility timeout): {error}"
                ) from exc
            raise error from exc

    # ------------------------------------------------------------ dead letter

    async def dead_letter(self, message: ReceivedMessage, reason: str = "") -> bool:
        """Move a delivered message to the queue's DLQ now (send a copy, then
        delete it); False if the queue has no redrive policy. The copy keeps
        the body and attributes and adds ``msgcluster.dead-letter-reason``."""
        self._check_open()
        if self.dlq_arn is None:
            return False
        if not self._dlq_url:
            *_, account, name = self.dlq_arn.split(":", 5)
            with aws_errors(resource=self.dlq_arn):
                found = await self._client.get_queue_url(
                    QueueName=name, QueueOwnerAWSAccountId=account
                )
            self._dlq_url = found["QueueUrl"]
        request: dict[str, Any] = {"QueueUrl": self._dlq_url}
        request |= _dead_letter_copy(message, reason, self.capabilities.max_body_bytes)
        if self.capabilities.fifo:
            request["MessageGroupId"] = message.group_id or "dead-letter"
            request["MessageDeduplicationId"] = message.id
        with aws_errors(resource=self._dlq_url):
            await self._client.send_message(**request)
        # Only now delete it: a crash in between leaves a copy, never a loss.
        results = await self.ack([message])
        if results[0].error is not None:
            raise results[0].error
        return True

    # ----------------------------------------------------------------- close


# ------------------------------------------------------------------ helpers


def _entry(
    index: int, message: PreparedMessage, caps: Capabilities
) -> tuple[dict[str, Any] | MsgclusterError, int]:
    """The SendMessageBatch entry of one message and its size on the wire."""
    (body, encoding), attributes = _encode_body(message.body), dict(message.attributes)
    if encoding is not None:
        attributes[ENCODING_ATTRIBUTE] = encoding
    size = len(body.encode()) + attributes_bytes(attributes, message.attribute_types)
    if size > caps.max_body_bytes:
        return (
            MessageTooLargeError(
                f"message is {size} bytes on the wire (a binary body travels base64-encoded); "
                f"the queue takes at most {caps.max_body_bytes}"
            ),
            size,
        )
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": body}
    if attributes:
        entry["MessageAttributes"] = {
            name: _attribute(value, message.attribute_types.get(name, "String"))
            for name, value in attributes.items()
        }
    if message.group_id is not None:
        entry["MessageGroupId"] = message.group_id
    if message.dedup_id is not None:
        entry["MessageDeduplicationId"] = message.dedup_id
    elif caps.fifo and encoding is not None:
        # Content-based deduplication hashes the body SQS sees: the "-" of an
        # empty body and the base64 of b"-" would be one message, and one of
        # them lost. The hash of the bytes as sent is what the user deduplicates.
        entry["MessageDeduplicationId"] = hashlib.sha256(message.body).hexdigest()
    if message.delay_seconds is not None:
        entry["DelaySeconds"] = math.ceil(message.delay_seconds)
    return entry, size


def _dead_letter_copy(message: ReceivedMessage, reason: str, max_bytes: int) -> dict[str, Any]:
    """Body and attributes of a message's DLQ copy, as it was sent (types kept),
    plus the reason where SQS has room for it (10 attributes, the size limit):
    without room the copy goes without it (the worker logs the reason)."""
    body, encoding = _encode_body(message.body)
    attributes, types = dict(message.attributes), message.attribute_types
    if encoding is not None:
        attributes[ENCODING_ATTRIBUTE] = encoding
    reason = _NOT_SQS_TEXT.sub("?", reason[:1000])
    if reason and len(attributes) < SQS_MAX_ATTRIBUTES:
        with_reason = attributes | {REASON_ATTRIBUTE: reason}
        if len(body.encode()) + attributes_bytes(with_reason, types) <= max_bytes:
            attributes = with_reason
    return {
        "MessageBody": body,
        "MessageAttributes": {
            name: _attribute(value, types.get(name, "String")) for name, value in attributes.items()
        },
    }


def _attribute(value: str, data_type: str) -> dict[str, Any]:
    if data_type.startswith("Binary"):
        return {"DataType": data_type, "BinaryValue": base64.b64decode(value)}
    return {"DataType": data_type, "StringValue": value}


def _encode_body(body: bytes) -> tuple[str, str | None]:
    """The body as SQS text, and how it was encoded (None: as it is).

    SQS refuses an empty body (``MissingParameter``) and characters outside
    XML 1.0: an empty body travels as a placeholder flagged ``empty``, one
    that is not SQS text as base64 flagged ``base64``.
    """
    if not body:
        return _EMPTY_PLACEHOLDER, "empty"
    try:
        text_body = body.decode()
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
    if _NOT_SQS_TEXT.search(text_body):
        return base64.b64encode(body).decode("ascii"), "base64"
    return text_body, None


def _received(message: dict[str, Any]) -> ReceivedMessage:
    system = message.get("Attributes", {})
    attributes: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        if name == REASON_ATTRIBUTE:
            continue  # bookkeeping of dead_letter, as the other backends keep it
        if "StringValue" in value:
            attributes[name] = value["StringValue"]
        elif "BinaryValue" in value:
            attributes[name] = base64.b64encode(value["BinaryValue"]).decode("ascii")
        if value.get("DataType", "String") != "String" and name in attributes:
            types[name] = value["DataType"]
    raw = message["Body"]
    body = _decoded_body(raw, attributes.get(ENCODING_ATTRIBUTE))
    if body is not None:
        del attributes[ENCODING_ATTRIBUTE]
    else:
        # Not a body msgcluster encoded (another sender set the attribute):
        # delivered as it is, the attribute with it, never dropped or fatal.
        body = raw.encode()
    sent = system.get("SentTimestamp")
    return ReceivedMessage(
        id=message["MessageId"],
        body=body,
        receive_count=int(system.get("ApproximateReceiveCount", "1")),
        attributes=attributes,
        group_id=system.get("MessageGroupId"),
        sent_at=int(sent) / 1000 if sent else None,
        receipt=message["ReceiptHandle"],
        attribute_types=types,
    )


def _decoded_body(raw: str, encoding: str | None) -> bytes | None:
    """The bytes of a body ``_encode_body`` encoded; None if it was not one."""
    if encoding == "empty" and raw == _EMPTY_PLACEHOLDER:
        return b""
    if encoding == "base64":
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError:
            return None
    return None


def _entry_error(failed: dict[str, Any], url: str, *, receipts: bool = True) -> MsgclusterError:
    """A ``Failed`` entry as msgcluster's error: a stale receipt (acks and
    visibility changes), a refusal AWS blames on the sender, or a server fault."""
    code = failed.get("Code", "")
    text_ = f"{failed.get('Message', '')} ({url})"
    if receipts and code in _RECEIPT_CODES:
        return ReceiptError(f"{code}: {text_}")
    if failed.get("SenderFault"):
        return AwsValidationError(text_, code=code)
    return AwsError(text_, code=code)
