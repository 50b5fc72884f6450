"""The curated public surface: exported names and the documented signatures."""

from __future__ import annotations

import collections.abc
import inspect
import sys
import typing
from typing import Any

import msgspec

import msgcluster
import msgcluster.queues
import msgcluster.worker
from msgcluster import _errors

#: Public, but met by name rather than in a signature: entry points, the
#: documented task shape, settings and the version.
BY_NAME = {
    "App",
    "Client",
    "ClusterCallback",
    "MessageKind",
    "OutgoingMessage",  # msgcluster.queues', taken by the Client's batch sends too
    "Settings",
    "Task",
    "Worker",
    "__version__",
    "open_queue",
}
#: Reachable through ``Client.ctx`` (the shared state msgcluster's own
#: integrations use) but internal.
INTERNAL = {"Context", "QueueInfo", "GlobalsCache", "Hints"}


def _namespace() -> dict[str, Any]:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

    ns: dict[str, Any] = {**vars(collections.abc), **vars(typing)}
    for name, module in sorted(sys.modules.items()):
        if name.startswith("msgcluster") and module is not None:
            ns.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    ns.update(vars(msgcluster))
    ns.update(SQSClient=SQSClient, DynamoDBClient=DynamoDBClient, S3Client=S3Client)
    return ns


def _flatten(tp: Any, out: set[type]) -> None:
    if isinstance(tp, type):
        out.add(tp)
    origin = typing.get_origin(tp)
    if isinstance(origin, type):
        out.add(origin)
    for arg in typing.get_args(tp):
        _flatten(arg, out)


def reachable_types(roots: list[type]) -> set[type]:
    """msgcluster's own types a user meets in the signatures of the public
    methods of ``roots`` and, recursively, of the types found there (Struct
    fields included)."""
    ns = _namespace()
    seen: set[type] = set()
    todo = list(roots)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        found: set[type] = set()
        targets: list[Any] = [cls] if issubclass(cls, msgspec.Struct) else []
        for name, member in inspect.getmembers(cls):
            # Constructors count for the entry points; other objects are made
            # by msgcluster and handed out (a ParsedRecord, a cluster view).
            if name.startswith("_") and not (name == "__init__" and cls in roots):
                continue
            member = member.fget if isinstance(member, property) else member
            if callable(member):
                targets.append(member)
        for target in targets:
            for hint in typing.get_type_hints(target, globalns=ns, localns=ns).values():
                _flatten(hint, found)
        if cls not in roots and not issubclass(cls, msgspec.Struct):
            # A handed-out object's public attributes, typed where it sets them.
            init = typing.get_type_hints(cls.__init__, globalns=ns, localns=ns)
            public = {n for n in getattr(cls, "__slots__", ()) if not n.startswith("_")}
            for name in public & init.keys():
                _flatten(init[name], found)
        todo += [t for t in found if t.__module__.startswith("msgcluster.")]
    return seen


def test_all_is_derived_from_the_public_api() -> None:
    """``__all__`` is every error of the one exception tree, every type the
    public API's signatures lead to (those of ``msgcluster.queues`` and
    ``msgcluster.worker`` are exported there), and the names met by name;
    nothing else: no wire envelope, no internal record."""
    errors = {
        name
        for name, obj in vars(_errors).items()
        if isinstance(obj, type) and issubclass(obj, msgcluster.MsgclusterError)
    }
    reached = {
        t.__name__
        for t in reachable_types([msgcluster.Client, msgcluster.App, msgcluster.Worker])
        if not t.__module__.startswith(("msgcluster.queues", "msgcluster.worker"))
        and not t.__name__.startswith("_")
    }
    assert set(msgcluster.__all__) == (errors | reached | BY_NAME) - INTERNAL
    assert msgcluster.__all__ == sorted(msgcluster.__all__)
    for name in msgcluster.__all__:
        assert hasattr(msgcluster, name), name
    for name in ("MessageEnvelope", "TaskEnvelope", "ClusterEventEnvelope", "ShardRecord"):
        assert name not in msgcluster.__all__  # wire envelopes and internal records
    assert msgcluster.App is msgcluster.worker.App
    assert msgcluster.Worker is msgcluster.worker.Worker
    assert msgcluster.open_queue is msgcluster.queues.open_queue
    # One message type for the Client and the queue layer.
    assert msgcluster.OutgoingMessage is msgcluster.queues.OutgoingMessage


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
    assert [k.value for k in msgcluster.MessageKind] == ["message", "task", "cluster", "plain"]
