"""The one exception tree of msgcluster.

::

    MsgclusterError
    ├── ConfigurationError          missing table/bucket, bad settings, missing extra
    ├── ValidationError             bad input from the caller (raised before any write)
    │   ├── InvalidKeyError             a RecordKey of the wrong shape
    │   ├── MetaTooLargeError           meta over the configured limit
    │   └── MessageTooLargeError        one entry cannot fit in a request
    ├── RecordError                 an SQS record / Lambda event that cannot be read
    │   ├── MalformedEventError         not a Lambda SQS event / not an SQS message
    │   ├── EnvelopeError               body is not a msgcluster envelope (or unknown type)
    │   ├── BodyDecodeError             body does not match ``body_type``
    │   └── PayloadNotLoadedError       body lives in S3: use ``await load_sqs_record``
    ├── RecordNotFoundError         no DynamoDB record for a key
    ├── BatchSendError              some entries of a batch send failed (carries the result)
    ├── GlobalsConflictError        update_globals lost every compare-and-swap race
    ├── ClusterError                a cluster operation could not proceed
    │   └── ClusterCreateError      creation stopped part-way: resume with its cluster_id
    ├── CallbackError               a completion callback raised (recorded, retried)
    ├── QueueError                  a queue opened by URI (msgcluster.queues) refused an operation
    │   ├── QueueURIError               bad queue URI: unknown/malformed parameter, credentials
    │   │   └── UnknownSchemeError          no backend for the scheme (lists the registered ones)
    │   ├── BackendUnavailableError     known scheme whose backend cannot be imported (yet)
    │   ├── QueueClosedError            the queue handle was closed
    │   ├── ReceiptError                stale, foreign or invalid receipt (ack/nack/extend)
    │   └── BatchLimitError             more entries than the backend's declared capabilities
    └── AwsError                    an AWS call failed (``code``, ``operation``)
        ├── ResourceNotFoundError
        │   ├── QueueNotFoundError
        │   ├── TableNotFoundError
        │   ├── BucketNotFoundError
        │   └── ObjectNotFoundError
        ├── ThrottledError
        │   └── TransactionConflictError  a write kept meeting a transaction on its item
        ├── AccessDeniedError
        ├── AwsValidationError      AWS rejected the request's parameters
        ├── ConditionFailedError    a conditional write lost (carries the current item)
        ├── TransactionCanceledError (carries the cancellation reasons)
        └── AwsConnectionError      no response: the request may or may not have applied

Third-party exceptions are translated in :mod:`msgcluster._aws_errors` and
only there (:func:`translate`, :func:`aws_errors`; that module imports this one, never the reverse),
always chained (``raise ... from exc``) so the botocore detail stays visible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import BatchSendResult

__all__ = [
    "AccessDeniedError",
    "AwsConnectionError",
    "AwsError",
    "AwsValidationError",
    "BackendUnavailableError",
    "BatchLimitError",
    "BatchSendError",
    "BodyDecodeError",
    "BucketNotFoundError",
    "CallbackError",
    "ClaimHeldError",
    "ClusterCreateError",
    "ClusterError",
    "ConditionFailedError",
    "ConfigurationError",
    "EnvelopeError",
    "GlobalsConflictError",
    "InvalidKeyError",
    "MalformedEventError",
    "MessageTooLargeError",
    "MetaTooLargeError",
    "MsgclusterError",
    "ObjectNotFoundError",
    "PayloadNotLoadedError",
    "QueueClosedError",
    "QueueError",
    "QueueNotFoundError",
    "QueueURIError",
    "ReceiptError",
    "RecordError",
    "RecordNotFoundError",
    "ResourceNotFoundError",
    "TableNotFoundError",
    "ThrottledError",
    "TransactionCanceledError",
    "TransactionConflictError",
    "UnknownSchemeError",
    "ValidationError",
]


class MsgclusterError(Exception):
    """Base of every error msgcluster raises."""

    def __init__(self, *args: object) -> None:
        # A message built from input (a message id, a name) may hold a lone
        # surrogate: escape it, so printing or logging the error never fails.
        if args and isinstance(args[0], str):
            args = (_printable(args[0]), *args[1:])
        super().__init__(*args)


def _printable(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


class ConfigurationError(MsgclusterError):
    """Settings are missing or inconsistent (table, bucket, region, extras)."""


class ValidationError(MsgclusterError, ValueError):
    """The caller passed something msgcluster cannot accept; nothing was written."""


class InvalidKeyError(ValidationError):
    """A record key does not have the ``SQSMessage$...`` shape."""


class MetaTooLargeError(ValidationError):
    """``meta`` encodes to more bytes than the configured limit."""


class MessageTooLargeError(ValidationError):
    """A message (or its attributes) cannot fit in a request, even offloaded."""


class RecordError(MsgclusterError, ValueError):
    """An SQS record or Lambda event could not be read.

    ``message_id`` names the SQS message when it is known.
    """

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class MalformedEventError(RecordError):
    """Not a Lambda SQS event, or a record/message missing required fields."""


class EnvelopeError(RecordError):
    """The body is not a msgcluster envelope (not JSON, no/unknown ``type``)."""


class BodyDecodeError(RecordError):
    """The body does not match the requested ``body_type``."""


class PayloadNotLoadedError(RecordError):
    """The body was offloaded to S3; load it with ``await client.load_sqs_record``."""


class RecordNotFoundError(MsgclusterError, LookupError):
    """No DynamoDB record exists for the key (completed and cleaned up, or expired)."""


class BatchSendError(MsgclusterError):
    """Some entries of a batch send failed after retries.

    ``result`` holds every entry: the keys and message ids of those sent and
    the failure of each one that was not, so nothing is dropped silently.
    """

    def __init__(self, message: str, result: BatchSendResult) -> None:
        super().__init__(message)
        self.result = result


class GlobalsConflictError(MsgclusterError):
    """``update_globals`` gave up: other writers changed the cluster's globals
    between every read and write, for ``max_attempts`` attempts.

    Nothing was written by the failed call. The update function may have run
    several times (once per attempt); retrying later, or with a larger
    ``max_attempts``, is safe.
    """


class ClusterError(MsgclusterError):
    """A message-cluster operation could not proceed (``cluster_id`` says which)."""

    def __init__(self, message: str, *, cluster_id: str = "") -> None:
        super().__init__(message)
        self.cluster_id = cluster_id


class ClusterCreateError(ClusterError):
    """``create_message_cluster`` stopped part-way; everything written is kept.

    Call it again with ``cluster_id=error.cluster_id`` and the same tasks to
    resume: tasks already sent are not written again.
    """


class ClaimHeldError(MsgclusterError):
    """(Claims on) Another consumer holds this message's claim and is running its
    handler: it was not run here, and is retried after ``retry_after`` seconds
    (the holder's lease), as Powertools' IdempotencyAlreadyInProgressError."""

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CallbackError(MsgclusterError):
    """A cluster's completion callback raised. The failure is recorded on the
    cluster (``callbackError``); ``final`` is True once ``callbackStatus`` is
    ERROR (attempts exhausted), else the callback will be retried."""

    def __init__(
        self, message: str, *, cluster_id: str = "", attempts: int = 0, final: bool = False
    ) -> None:
        super().__init__(message)
        self.cluster_id = cluster_id
        self.attempts = attempts
        self.final = final


class QueueError(MsgclusterError):
    """A queue opened with :func:`msgcluster.queues.open_queue` refused an operation."""


class QueueURIError(QueueError, ConfigurationError):
    """A queue URI or option is wrong: malformed, unknown or invalid parameter, or
    credentials in the URI. The message names the valid parameters; it never
    repeats a password."""


class UnknownSchemeError(QueueURIError):
    """No backend is registered for the URI's scheme.

    ``scheme`` is the one asked for, ``registered`` every known scheme and
    ``suggestion`` the closest of them (or None).
    """

    def __init__(
        self, message: str, *, scheme: str, registered: tuple[str, ...], suggestion: str | None
    ) -> None:
        super().__init__(message)
        self.scheme = scheme
        self.registered = registered
        self.suggestion = suggestion


class BackendUnavailableError(QueueError, ConfigurationError):
    """The scheme is known but its backend cannot be imported: not implemented
    in this version, or an optional dependency is missing (the message says which)."""


class QueueClosedError(QueueError):
    """The queue handle was closed (``aclose``); open a new one."""


class ReceiptError(QueueError):
    """A receipt no longer (or never) grants the operation: the message was
    received again by someone else since, it belongs to another queue, or its
    visibility already expired. ``message_id`` names the message."""

    def __init__(self, message: str, *, message_id: str = "") -> None:
        super().__init__(message)
        self.message_id = message_id


class BatchLimitError(QueueError, ValidationError):
    """A call asked for more than the backend's ``capabilities`` allow (entries
    per send/ack, bytes per send, messages per receive). Nothing was done:
    backends never split a batch, the caller does."""


class AwsError(MsgclusterError):
    """An AWS request failed.

    ``code`` is the AWS error code, ``operation`` the API name.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        operation: str = "",
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation
        self.status = status
        # Set when a send failed ambiguously: the record kept for the message.
        self.record_key: Any = None


class ResourceNotFoundError(AwsError, LookupError):
    """The queue, table, bucket or object does not exist."""


class QueueNotFoundError(ResourceNotFoundError):
    """The SQS queue does not exist (check the URL, or run ``provision``)."""


class TableNotFoundError(ResourceNotFoundError):
    """The DynamoDB table does not exist (run ``provision``)."""


class BucketNotFoundError(ResourceNotFoundError):
    """The S3 bucket does not exist (run ``provision``)."""


class ObjectNotFoundError(ResourceNotFoundError):
    """The S3 object does not exist (expired, or never written)."""


class ThrottledError(AwsError):
    """AWS kept throttling after botocore's retries."""


class TransactionConflictError(ThrottledError):
    """A plain write kept meeting a transaction in progress on its item
    (``TransactionConflictException``) after retries; it did not apply, and
    trying again later is safe, as after throttling."""


class AccessDeniedError(AwsError, PermissionError):
    """Credentials are missing, invalid, or lack a permission."""


class AwsValidationError(AwsError, ValueError):
    """AWS rejected the request's parameters."""


class ConditionFailedError(AwsError):
    """A conditional write found the item in another state.

    ``item`` is the current item (decoded attribute map) when AWS returned it.
    """

    def __init__(self, message: str, *, item: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.item = item


class TransactionCanceledError(AwsError):
    """A transaction was cancelled; ``reasons`` has one entry per item."""

    def __init__(self, message: str, *, reasons: list[dict[str, Any]], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reasons = reasons


class AwsConnectionError(AwsError, ConnectionError):
    """No usable response: the request may or may not have been applied."""
