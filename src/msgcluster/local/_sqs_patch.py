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

What the patch does
-------------------
* ``Queue.attributes`` returns a :class:`LazyQueueAttributes`: the same keys
  in the same order, but the three ``ApproximateNumberOf*`` values are computed
  only when read (``[]``, ``get``, ``items``, ``values``, ``copy``, ``==``,
  ``repr``, ``dict(...)``, ``json.dumps``, pickling ...). Membership tests and
  the other values cost nothing extra; GetQueueAttributes still returns exact
  counts.
* ``Message.mark_received`` records every receipt handle it hands out in a
  ``weakref.WeakValueDictionary`` (handle -> message). ``Queue.delete_message``
  and ``SQSBackend.change_message_visibility`` look the handle up there and
  only check, at C speed, that the message is still in the queue. Semantics
  kept: a handle deleted before is a no-op, an unknown handle (or one whose
  message is gone) raises ``ReceiptHandleIsInvalid``, old handles of a message
  still resolve, the pending set is maintained, the 43,200 s visibility limit
  is enforced.
* ``Queue.messages`` returns a lazy view over a snapshot of the queue, yielding
  visible, non-delayed messages; ``bool()`` stops at the first one (long
  polling waits on it) and ``len()`` counts them.
* ``SQSBackend.is_message_valid_based_on_retention_period`` reads the queue's
  retention period directly instead of building the attribute dict three times
  per delivered message.

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

import copy
import importlib
import inspect
import json
import re
import threading
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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

# attribute name -> Queue property that computes it by scanning the queue
_COUNTERS: Final[dict[str, str]] = {
    "ApproximateNumberOfMessages": "approximate_number_of_messages",
    "ApproximateNumberOfMessagesDelayed": "approximate_number_of_messages_delayed",
    "ApproximateNumberOfMessagesNotVisible": "approximate_number_of_messages_not_visible",
}

# Maximum total visibility of a message, from moto's change_message_visibility.
_MAX_TOTAL_VISIBILITY_MS: Final = 43200 * 1000


class _Pending:
    """Placeholder for a counter that has not been computed yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<pending>"


_PENDING: Final = _Pending()

# handle -> message, for every handle handed out by Message.mark_received
_HANDLES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_lock = threading.Lock()
# (class, attribute name) -> the class's own attribute before patching
_originals: dict[tuple[type, str], Any] = {}


# --------------------------------------------------------------------------- #
# Queue.attributes                                                             #
# --------------------------------------------------------------------------- #


class LazyQueueAttributes(dict[str, Any]):
    """``Queue.attributes`` whose ApproximateNumberOf* values are computed on read.

    The keys are always present (so ``in`` and ``len`` are exact without a
    scan). Any operation that exposes values resolves them first; copies are
    plain dicts.
    """

    __slots__ = ("_queue",)

    def __init__(self, queue: Any) -> None:
        super().__init__()
        self._queue = queue

    def _resolve(self, key: str, value: Any) -> Any:
        if value is _PENDING:
            value = getattr(self._queue, _COUNTERS[key])
            dict.__setitem__(self, key, value)
        return value

    def _resolve_all(self) -> None:
        for key, value in list(dict.items(self)):
            if value is _PENDING:
                self._resolve(key, value)

    def __getitem__(self, key: str) -> Any:
        return self._resolve(key, dict.__getitem__(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default

    # Overriding __iter__ (even trivially) makes CPython's dict(x), {**x} and
    # d.update(x) go through keys() + __getitem__, which resolves values.
    def __iter__(self) -> Iterator[str]:
        return dict.__iter__(self)

    def items(self) -> Any:
        self._resolve_all()
        return dict.items(self)

    def values(self) -> Any:
        self._resolve_all()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        self._resolve_all()
        return dict(dict.items(self))

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(self.copy(), memo)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (dict, (self.copy(),))

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = self[key]
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._resolve_all()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        dict.__setitem__(self, key, default)
        return default

    def __eq__(self, other: object) -> bool:
        self._resolve_all()
        if isinstance(other, LazyQueueAttributes):
            other._resolve_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def __or__(self, other: Any) -> Any:
        return self.copy() | other

    def __ror__(self, other: Any) -> Any:
        return dict(other) | self.copy()

    def __repr__(self) -> str:
        self._resolve_all()
        return dict.__repr__(self)


def _camel_to_snake_table(names: list[str]) -> dict[str, str]:
    from moto.core.utils import camelcase_to_underscores

    return {name: camelcase_to_underscores(name) for name in names}


_snake: dict[str, str] = {}


def _queue_attributes(queue: Any) -> LazyQueueAttributes:
    """Same content as moto's ``Queue.attributes``, counters left lazy."""
    names: list[str] = list(queue.BASE_ATTRIBUTES)
    if queue.fifo_queue:
        names += queue.FIFO_ATTRIBUTES
    if queue.kms_master_key_id:
        names += queue.KMS_ATTRIBUTES
    if any(name not in _snake for name in names):
        _snake.update(_camel_to_snake_table(names))

    result = LazyQueueAttributes(queue)
    for name in names:
        if name in _COUNTERS:
            value: Any = _PENDING
        elif name == "RedrivePolicy":
            # moto stores the parsed policy and returns it as JSON when set.
            redrive = queue.redrive_policy
            value = json.dumps(redrive) if redrive else redrive
        else:
            # "Policy" is a property that already yields JSON or None.
            value = getattr(queue, _snake[name])
        if isinstance(value, bool):
            value = "true" if value else "false"
        dict.__setitem__(result, name, value)
    return result


# --------------------------------------------------------------------------- #
# Queue.messages                                                               #
# --------------------------------------------------------------------------- #


class _VisibleMessages:
    """Lazy stand-in for the list moto's ``Queue.messages`` returns."""

    __slots__ = ("_snapshot",)

    def __init__(self, queue: Any) -> None:
        # list(...) is one C-level copy: stable even if another thread edits the queue.
        self._snapshot: list[Any] = list(queue._messages)

    def __iter__(self) -> Iterator[Any]:
        for message in self._snapshot:
            if message.visible and not message.delayed:
                yield message

    def __bool__(self) -> bool:
        return next(iter(self), None) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<visible messages of {len(self._snapshot)} in queue>"


def _queue_messages(queue: Any) -> _VisibleMessages:
    return _VisibleMessages(queue)


# --------------------------------------------------------------------------- #
# receipt handles                                                              #
# --------------------------------------------------------------------------- #


def _wrap_mark_received(original: Callable[..., None]) -> Callable[..., None]:
    def mark_received(self: Any, visibility_timeout: int | None = None) -> None:
        original(self, visibility_timeout)
        _HANDLES[self.receipt_handle] = self

    mark_received.__wrapped__ = original  # type: ignore[attr-defined]
    mark_received.__doc__ = original.__doc__
    return mark_received


def _message_in(queue: Any, receipt_handle: str) -> Any:
    """The queue's message that had this handle, or None (no Python-level scan)."""
    message = _HANDLES.get(receipt_handle)
    # `in` compares by identity first (Message defines no __eq__): a C loop.
    if message is None or message not in queue._messages:
        return None
    return message


def _delete_message(self: Any, receipt_handle: str) -> None:
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    if receipt_handle in self.deleted_messages:
        return  # deleting again is a no-op, as in moto
    message = _message_in(self, receipt_handle)
    if message is None:
        raise ReceiptHandleIsInvalid()
    self.pending_messages.discard(message)
    self.deleted_messages.update(message.all_receipt_handles)
    # ValueError: deleted by a concurrent request.
    with self._messages_lock, suppress(ValueError):
        self._messages.remove(message)


def _change_message_visibility(
    self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

    queue = self.get_queue(queue_name)
    message = _message_in(queue, receipt_handle)
    if message is None:
        raise ReceiptHandleIsInvalid
    until_ms = unix_time_millis() + int(visibility_timeout) * 1000
    if until_ms - message.sent_timestamp > _MAX_TOTAL_VISIBILITY_MS:
        raise InvalidParameterValue(
            f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. "
            "Reason: Total VisibilityTimeout for the message is beyond the limit "
            "[43200 seconds]"
        )
    message.change_visibility(visibility_timeout)
    if message.visible:
        queue.pending_messages.discard(message)


def _is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
    from moto.core.utils import unix_time

    retention_s = int(self.get_queue(queue_name).message_retention_period)
    return bool(retention_s + message.sent_timestamp / 1000 > unix_time())


# --------------------------------------------------------------------------- #
# checks                                                                       #
# --------------------------------------------------------------------------- #


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

    for name in ("attributes", "messages", "pending_messages", "policy", *_COUNTERS.values()):
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
    if not isinstance(base, list) or not set(_COUNTERS) <= set(base):
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
        got = _queue_attributes(probe)
        if list(got) != list(expected) or got.copy() != expected:
            problems.append(
                f"Queue.attributes content changed for {probe.name}: moto gives {expected!r},"
                f" the patch would give {got!r}"
            )
    return problems


# --------------------------------------------------------------------------- #
# apply / revert                                                               #
# --------------------------------------------------------------------------- #


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
            (queue_cls, "attributes", property(_queue_attributes, doc="Lazy, see msgcluster.")),
            (queue_cls, "messages", property(_queue_messages, doc="Lazy, see msgcluster.")),
            (queue_cls, "delete_message", _delete_message),
            (backend_cls, "change_message_visibility", _change_message_visibility),
            (
                backend_cls,
                "is_message_valid_based_on_retention_period",
                _is_message_valid_based_on_retention_period,
            ),
            (
                message_cls,
                "mark_received",
                _wrap_mark_received(message_cls.__dict__["mark_received"]),
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
