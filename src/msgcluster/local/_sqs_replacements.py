"""What :mod:`msgcluster.local._sqs_patch` installs in moto's SQS backend.

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
"""

from __future__ import annotations

import copy
import json
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "COUNTERS",
    "LazyQueueAttributes",
    "change_message_visibility",
    "delete_message",
    "is_message_valid_based_on_retention_period",
    "queue_attributes",
    "queue_messages",
    "wrap_mark_received",
]

# attribute name -> Queue property that computes it by scanning the queue
COUNTERS: Final[dict[str, str]] = {
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


# --------------------------------------------------------------------------- Queue.attributes


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
            value = getattr(self._queue, COUNTERS[key])
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


def queue_attributes(queue: Any) -> LazyQueueAttributes:
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
        if name in COUNTERS:
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


# --------------------------------------------------------------------------- Queue.messages


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


def queue_messages(queue: Any) -> _VisibleMessages:
    return _VisibleMessages(queue)


# --------------------------------------------------------------------------- receipt handles


def wrap_mark_received(original: Callable[..., None]) -> Callable[..., None]:
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


def delete_message(self: Any, receipt_handle: str) -> None:
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


def change_message_visibility(
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


def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
    from moto.core.utils import unix_time

    retention_s = int(self.get_queue(queue_name).message_retention_period)
    return bool(retention_s + message.sent_timestamp / 1000 > unix_time())
