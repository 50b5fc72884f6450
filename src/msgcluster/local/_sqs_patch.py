"""Make moto's SQS backend cost independent of queue depth.

Targets ``moto>=5.2.5,<5.3`` (see ``SUPPORTED_MOTO``). Applied by
:mod:`msgcluster.local._child` inside the local server process only; nothing in
the library imports it otherwise.

Why
---
In moto 5.2.5 (``moto/sqs/models.py``) the cost of every SQS call grows with
the number of messages in the queue:

* ``Queue.attributes`` builds a fresh dict and, to do so, recomputes
  ``ApproximateNumberOfMessages``, ``...NotVisible`` and ``...Delayed`` by
  scanning every message (three Python-level passes, each reading
  ``Message.visible`` / ``Message.delayed``). ``SQSBackend.send_message``,
  ``_validate_message`` and ``Queue.add_message`` read it to look up
  ``ContentBasedDeduplication``; ``receive_message`` reads it (through
  ``is_message_valid_based_on_retention_period`` -> ``get_queue_attributes``)
  once per delivered message. Measured: 10 messages/s at depth 4,000.
* ``Queue.delete_message`` and ``SQSBackend.change_message_visibility`` find
  the message by calling ``Message.had_receipt_handle`` (which builds a list)
  on every message in the queue.
* ``Queue.messages`` builds the full list of visible messages on every
  receive and on every long-poll wake-up, although a receive needs at most 10.

What the patch does (``Queue.attributes``, ``Queue.messages``, receipt-handle
lookups, the retention check) is described in :mod:`msgcluster.local._sqs_replacements`.

:func:`apply` is idempotent and refuses (``RuntimeError`` naming what changed)
to patch a moto outside the supported range or whose patched code no longer has
the expected shape; it also checks that the lazy attribute dict equals moto's
own ``Queue.attributes`` on probe queues. Apply it before any message is
received: handles handed out earlier are not in the index.

Not addressed: FIFO de-duplication in ``Queue.add_message`` still scans the
queue on each send with a deduplication id; messages are never freed by moto
(``BaseModel.instances_tracked`` keeps every instance).
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from typing import Any, Final

from . import _sqs_replacements as ours
from ._sqs_replacements import LazyQueueAttributes

__all__ = [
    "SUPPORTED_MOTO",
    "LazyQueueAttributes",
    "apply",
    "is_applied",
    "revert",
]

#: Half-open range of moto versions whose SQS code this patch was written against.
SUPPORTED_MOTO: Final[tuple[tuple[int, int, int], tuple[int, int, int]]] = ((5, 2, 5), (5, 3, 0))
_SUPPORTED_TEXT: Final = ">=5.2.5,<5.3"

_MARKER: Final = "__msgcluster_moto_patch__"

_lock = threading.Lock()
# (class, attribute name) -> the class's own attribute before patching
_originals: dict[tuple[type, str], Any] = {}


# --------------------------------------------------------------------------- checks


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def _params(func: Any) -> list[str] | None:
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _check(models: Any) -> list[str]:
    """What in this moto differs from what the patch expects (empty: all good)."""
    problems = _check_version()
    queue_cls = getattr(models, "Queue", None)
    backend_cls = getattr(models, "SQSBackend", None)
    message_cls = getattr(models, "Message", None)
    if not (
        isinstance(queue_cls, type)
        and isinstance(backend_cls, type)
        and isinstance(message_cls, type)
    ):
        problems.append("moto.sqs.models no longer defines Queue, SQSBackend and Message")
        return problems
    problems += _check_members(queue_cls, backend_cls, message_cls)
    problems += _check_constants(queue_cls)
    if problems:
        return problems
    problems.extend(_probe(queue_cls, message_cls))
    return problems


def _check_version() -> list[str]:
    import moto

    version = str(getattr(moto, "__version__", "unknown"))
    parsed = _version_tuple(version)
    low, high = SUPPORTED_MOTO
    if parsed is None or not low <= parsed < high:
        return [f"moto {version} is outside the supported range {_SUPPORTED_TEXT}"]
    return []


def _check_members(queue_cls: type, backend_cls: type, message_cls: type) -> list[str]:
    """The properties and method signatures the patch replaces or relies on."""
    problems: list[str] = []

    def expect_property(cls: type, name: str) -> None:
        if not isinstance(cls.__dict__.get(name), property):
            problems.append(f"{cls.__name__}.{name} is no longer a property")

    def expect_method(cls: type, name: str, params: list[str]) -> None:
        func = cls.__dict__.get(name)
        if not inspect.isfunction(func):
            problems.append(f"{cls.__name__}.{name} is no longer a plain method")
        elif _params(func) != params:
            problems.append(
                f"{cls.__name__}.{name} signature changed: expected ({', '.join(params)}),"
                f" found ({', '.join(_params(func) or ['?'])})"
            )

    for name in ("attributes", "messages", "pending_messages", "policy", *ours.COUNTERS.values()):
        expect_property(queue_cls, name)
    expect_method(queue_cls, "delete_message", ["self", "receipt_handle"])
    expect_method(queue_cls, "add_message", ["self", "message"])
    expect_method(
        backend_cls,
        "change_message_visibility",
        ["self", "queue_name", "receipt_handle", "visibility_timeout"],
    )
    expect_method(
        backend_cls, "is_message_valid_based_on_retention_period", ["self", "queue_name", "message"]
    )
    expect_method(backend_cls, "get_queue", ["self", "queue_name"])
    expect_method(message_cls, "mark_received", ["self", "visibility_timeout"])
    expect_method(message_cls, "change_visibility", ["self", "visibility_timeout"])
    for name in ("visible", "delayed", "all_receipt_handles"):
        expect_property(message_cls, name)
    return problems


def _check_constants(queue_cls: type) -> list[str]:
    """Queue's attribute-name lists and the moto helpers the replacements import."""
    problems: list[str] = []
    base = getattr(queue_cls, "BASE_ATTRIBUTES", None)
    if not isinstance(base, list) or not set(ours.COUNTERS) <= set(base):
        problems.append("Queue.BASE_ATTRIBUTES no longer lists the ApproximateNumberOf* counters")
    for name in ("FIFO_ATTRIBUTES", "KMS_ATTRIBUTES"):
        if not isinstance(getattr(queue_cls, name, None), list):
            problems.append(f"Queue.{name} is no longer a list")
    for module, names in (
        ("moto.sqs.exceptions", ("ReceiptHandleIsInvalid", "InvalidParameterValue")),
        ("moto.core.utils", ("unix_time", "unix_time_millis", "camelcase_to_underscores")),
    ):
        mod = importlib.import_module(module)
        problems.extend(f"{module}.{n} is missing" for n in names if not hasattr(mod, n))
    return problems


def _probe(queue_cls: type, message_cls: type) -> list[str]:
    """Instance-level shape, and lazy attributes == moto's own, on throwaway objects."""
    problems: list[str] = []
    try:
        probes = [
            queue_cls("msgcluster-probe", region="us-east-1", account_id="123456789012"),
            queue_cls(
                "msgcluster-probe.fifo",
                region="us-east-1",
                account_id="123456789012",
                FifoQueue="true",
                ContentBasedDeduplication="true",
                KmsMasterKeyId="alias/probe",
                Policy='{"Statement": [{"Sid": "probe"}]}',
            ),
        ]
        message = message_cls("probe-id", "probe-body")
    except Exception as exc:
        return [f"cannot build probe Queue/Message objects: {exc!r}"]

    for attr, kind in (("_messages", list), ("_pending_messages", set), ("deleted_messages", set)):
        if not isinstance(getattr(probes[0], attr, None), kind):
            problems.append(f"Queue.{attr} is no longer a {kind.__name__}")
    if not callable(getattr(getattr(probes[0], "_messages_lock", None), "wait_for", None)):
        problems.append("Queue._messages_lock is no longer a Condition")
    if not isinstance(getattr(message, "_old_receipt_handles", None), list):
        problems.append("Message._old_receipt_handles is no longer a list")
    if not hasattr(probes[0], "message_retention_period"):
        problems.append("Queue.message_retention_period is missing")
    if problems:
        return problems

    original = queue_cls.__dict__["attributes"]
    if _originals.get((queue_cls, "attributes")) is not None:
        original = _originals[(queue_cls, "attributes")]
    for probe in probes:
        expected = original.fget(probe)
        got = ours.queue_attributes(probe)
        if list(got) != list(expected) or got.copy() != expected:
            problems.append(
                f"Queue.attributes content changed for {probe.name}: moto gives {expected!r},"
                f" the patch would give {got!r}"
            )
    return problems


# --------------------------------------------------------------------------- apply / revert


def _models() -> Any:
    return importlib.import_module("moto.sqs.models")


def is_applied() -> bool:
    """Whether moto's SQS classes currently carry this patch."""
    try:
        models = _models()
    except ImportError:
        return False
    return all(
        getattr(cls, _MARKER, False) is True
        for cls in (models.Queue, models.SQSBackend, models.Message)
    ) and isinstance(models.Queue.__dict__.get("attributes"), property)


def apply() -> None:
    """Patch moto's SQS backend in this process (idempotent).

    Raises ``RuntimeError`` naming every difference if moto is outside
    ``>=5.2.5,<5.3`` or its SQS code no longer has the shape the patch expects.
    """
    with _lock:
        models = _models()
        if is_applied():
            return
        problems = _check(models)
        if problems:
            raise RuntimeError(
                "msgcluster cannot patch moto's SQS backend (written for moto "
                f"{_SUPPORTED_TEXT}); moto changed: " + "; ".join(problems)
            )
        queue_cls, backend_cls, message_cls = models.Queue, models.SQSBackend, models.Message
        replacements: list[tuple[type, str, Any]] = [
            (queue_cls, "attributes", property(ours.queue_attributes, doc="Lazy, see msgcluster.")),
            (queue_cls, "messages", property(ours.queue_messages, doc="Lazy, see msgcluster.")),
            (queue_cls, "delete_message", ours.delete_message),
            (backend_cls, "change_message_visibility", ours.change_message_visibility),
            (
                backend_cls,
                "is_message_valid_based_on_retention_period",
                ours.is_message_valid_based_on_retention_period,
            ),
            (
                message_cls,
                "mark_received",
                ours.wrap_mark_received(message_cls.__dict__["mark_received"]),
            ),
        ]
        for cls, name, value in replacements:
            _originals[(cls, name)] = cls.__dict__[name]
            setattr(cls, name, value)
        for cls in (queue_cls, backend_cls, message_cls):
            setattr(cls, _MARKER, True)


def revert() -> None:
    """Undo :func:`apply` (for tests). No-op if not applied."""
    with _lock:
        for (cls, name), original in _originals.items():
            setattr(cls, name, original)
        for cls, _ in list(_originals):
            if _MARKER in cls.__dict__:
                delattr(cls, _MARKER)
        _originals.clear()
