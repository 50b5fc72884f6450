"""The curated public surface: exported names and the documented signatures."""

from __future__ import annotations

import inspect

import msgcluster

EXPECTED = {
    "CallbackError",
    "ClusterCreateError",
    "ClusterError",
    "CallbackStatus",
    "ClusterEventEnvelope",
    "ShardRecord",
    "ClusterCallback",
    "ClusterView",
    "DeadLetterReport",
    "AccessDeniedError",
    "AwsConnectionError",
    "AwsError",
    "AwsValidationError",
    "BackendUnavailableError",
    "BatchLimitError",
    "BatchSendError",
    "BatchSendResult",
    "BodyDecodeError",
    "BucketNotFoundError",
    "Client",
    "ConditionFailedError",
    "ConfigurationError",
    "EntryFailure",
    "EnvelopeError",
    "ErrorEntry",
    "GlobalsConflictError",
    "InvalidKeyError",
    "MalformedEventError",
    "MessageClusterRecord",
    "MessageEnvelope",
    "MessageRecord",
    "MessageTooLargeError",
    "MetaTooLargeError",
    "MsgclusterError",
    "ObjectNotFoundError",
    "OutgoingMessage",
    "ParsedRecord",
    "PayloadNotLoadedError",
    "QueueClosedError",
    "QueueError",
    "QueueNotFoundError",
    "QueueURIError",
    "ReceiptError",
    "RecordError",
    "RecordKey",
    "RecordNotFoundError",
    "RecordType",
    "ResourceNotFoundError",
    "S3Pointer",
    "Settings",
    "Status",
    "StatusCode",
    "TableNotFoundError",
    "Task",
    "TaskEnvelope",
    "ThrottledError",
    "TransactionCanceledError",
    "UnknownSchemeError",
    "ValidationError",
    "__version__",
}


def test_all_is_exactly_the_curated_surface() -> None:
    assert set(msgcluster.__all__) == EXPECTED
    assert msgcluster.__all__ == sorted(msgcluster.__all__)
    for name in msgcluster.__all__:
        assert hasattr(msgcluster, name), name


def test_every_error_is_a_msgcluster_error() -> None:
    for name in msgcluster.__all__:
        obj = getattr(msgcluster, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, msgcluster.MsgclusterError), name


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_documented_signatures() -> None:
    c = msgcluster.Client
    assert params(c.send_message)[:4] == ["self", "queue_url", "body", "meta"]
    kw = inspect.signature(c.send_message).parameters
    for name in ("delay_seconds", "attributes", "group_id", "dedup_id"):
        assert kw[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params(c.send_message_batch)[:4] == ["self", "queue_url", "bodies", "meta"]
    assert params(c.read_sqs_record) == ["self", "record", "body_type"]
    assert params(c.get_message_record) == ["self", "key", "consistent_read"]
    assert params(c.get_message_records)[:2] == ["self", "keys"]
    assert params(c.update_message_record)[:2] == ["self", "key"]
    assert params(c.is_complete) == ["self", "record"]
    assert params(c.mark_complete) == ["self", "record"]
    sp = inspect.signature(c.safe_process_batch).parameters
    assert list(sp)[:3] == ["self", "event", "process_record"]
    assert sp["concurrency"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sp["fifo"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params(c.provision)[:2] == ["self", "queues"]
    for name in ("table", "bucket", "endpoint_url"):
        assert name in params(c.__init__)
    for name in ("url", "pk", "rk", "task", "id", "body", "type", "get_message_record"):
        assert hasattr(msgcluster.ParsedRecord, name), name


def test_status_vocabulary() -> None:
    statuses = ["PRE FLIGHT", "IN PROGRESS", "COMPLETE", "ERROR"]
    assert [s.value for s in msgcluster.Status] == statuses
    assert [int(c) for c in msgcluster.StatusCode] == [0, 100, 200, 400, 500]
    assert [t.value for t in msgcluster.RecordType] == ["cluster", "task", "message"]
