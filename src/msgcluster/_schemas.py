"""Records, keys and wire envelopes (msgspec Structs).

Schema evolution rules: new fields get defaults; a field's type never
changes; field names on the wire and in DynamoDB are camelCase so records read
the same in the DynamoDB console as the documented system's.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias, TypeVar

import msgspec

from ._errors import InvalidKeyError, ValidationError

__all__ = [
    "KEY_PREFIX",
    "CallbackStatus",
    "ClusterEventEnvelope",
    "Envelope",
    "ErrorEntry",
    "MessageClusterRecord",
    "MessageEnvelope",
    "MessageRecord",
    "RecordKey",
    "RecordType",
    "S3Pointer",
    "ShardRecord",
    "Status",
    "StatusCode",
    "Task",
    "TaskEnvelope",
    "new_message_key",
]

KEY_PREFIX: Final = "SQSMessage$"
MESSAGE_SORT_KEY: Final = f"{KEY_PREFIX}message"
# DynamoDB limits: partition key <= 2048 bytes, sort key <= 1024 bytes.
_MAX_KEY_BYTES: Final = 1024
T = TypeVar("T")


class Status(enum.StrEnum):
    """Lifecycle status, spelled as in the documented system (stored so);
    :meth:`parse` takes any spelling users type."""

    PRE_FLIGHT = "PRE FLIGHT"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"

    @classmethod
    def parse(cls, value: object) -> Status:
        """A status from its value or name in any case, with ' ', '_' or '-':
        ``"IN PROGRESS"``, ``"in_progress"``, ``"In-Progress"``, ``Status.ERROR``,
        ``StatusCode.ERROR``. ``CANCELLED`` (``StatusCode.STOPPED``) names a
        cancelled cluster, not a record status: see :func:`parse_cluster_status`."""
        found = _parse_status(value, cluster=False)
        if isinstance(found, Status):
            return found
        raise ValidationError(
            f"{_shown(value)} is a cluster status (a cancelled cluster: status code 500, "
            "STOPPED) and applies only to clusters (list_clusters, `cluster ls`); a task or "
            f"message record is one of {_VALID} (a cancelled cluster's tasks keep theirs)"
        )


class StatusCode(enum.IntEnum):
    """Numeric status; ``STOPPED`` marks a cancelled cluster."""

    PRE_FLIGHT = 0
    IN_PROGRESS = 100
    COMPLETE = 200
    ERROR = 400
    STOPPED = 500


class RecordType(enum.StrEnum):
    CLUSTER = "cluster"
    TASK = "task"
    MESSAGE = "message"


STATUS_CODES: Final = {
    Status.PRE_FLIGHT: StatusCode.PRE_FLIGHT,
    Status.IN_PROGRESS: StatusCode.IN_PROGRESS,
    Status.COMPLETE: StatusCode.COMPLETE,
    Status.ERROR: StatusCode.ERROR,
}

#: What a status filter takes: one status (text in any spelling, a Status or a
#: StatusCode) or an iterable of them.
StatusLike: TypeAlias = Status | StatusCode | str
Statuses: TypeAlias = StatusLike | Iterable[StatusLike]
_CODE_STATUS: Final = {code: status for status, code in STATUS_CODES.items()}


def _spelling(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def _shown(value: object) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


_VALID: Final = "PRE FLIGHT, IN PROGRESS, COMPLETE, ERROR"
_STATUS_TEXT: Final = {_spelling(s.value): s for s in Status}
# A cancelled cluster's status word (CLI, list_clusters); stored as status code 500.
CANCELLED: Final = "CANCELLED"
_CANCELLED_TEXT: Final = frozenset({"cancelled", "canceled", "stopped"})


def _parse_status(value: object, *, cluster: bool) -> Status | str:
    """A Status, or CANCELLED; else ValidationError listing what is valid."""
    if isinstance(value, Status):
        return value
    if isinstance(value, StatusCode):
        return _CODE_STATUS.get(value, CANCELLED)  # STOPPED: a cancelled cluster
    if isinstance(value, str):
        spelled = _spelling(value)
        if spelled in _CANCELLED_TEXT:
            return CANCELLED
        found = _STATUS_TEXT.get(spelled)
        if found is not None:
            return found
    valid = f"{_VALID}, CANCELLED" if cluster else _VALID
    raise ValidationError(
        f"unknown status {_shown(value)}; valid: {valid} (a Status, a StatusCode, or text "
        "in any case, '_' or '-' for the space)"
    )


def parse_cluster_status(value: object) -> Status | str:
    """:meth:`Status.parse`, or ``CANCELLED`` (also ``canceled``, ``stopped``,
    ``StatusCode.STOPPED``) for clusters."""
    return _parse_status(value, cluster=True)


def parse_statuses(value: object) -> tuple[Status, ...]:
    """Record statuses to filter on: one (text, Status or StatusCode) or an
    iterable of them; duplicates dropped, order kept."""
    return _many(value, Status.parse)


def parse_cluster_statuses(value: object) -> tuple[Status | str, ...]:
    """:func:`parse_statuses` for clusters (``CANCELLED`` allowed)."""
    return _many(value, parse_cluster_status)


def _many(value: object, parse: Callable[[object], T]) -> tuple[T, ...]:
    if isinstance(value, str | StatusCode | bytes | bytearray) or not isinstance(value, Iterable):
        return (parse(value),)
    found = tuple(dict.fromkeys(parse(item) for item in value))
    if not found:
        raise ValidationError(
            "an empty list of statuses matches nothing: pass None for every status, or "
            f"one or more of {_VALID}"
        )
    return found


def check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` if it is an int (not a bool) in ``low..high``, else ValidationError
    naming the range (``why``: whose range it is)."""
    span = f">= {low}" if high is None else f"{low}-{high}"
    why = f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value)[:40]
        raise ValidationError(
            f"{name} must be an int {span}{why}, got {type(value).__name__} {shown}"
        )
    if value < low or (high is not None and value > high):
        raise ValidationError(f"{name} must be {span}{why}, got {value}")
    return value


class RecordKey(msgspec.Struct, frozen=True):
    """Primary key of a record: partition key ``pk`` and range key ``rk``."""

    pk: str
    rk: str

    def __post_init__(self) -> None:
        for name in ("pk", "rk"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.startswith(KEY_PREFIX):
                raise InvalidKeyError(
                    f"RecordKey.{name} must be a string starting with {KEY_PREFIX!r}, "
                    f"got {value!r:.200}"
                )
            if len(value.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
                raise InvalidKeyError(f"RecordKey.{name} is longer than {_MAX_KEY_BYTES} bytes")
            if not value.isprintable():  # control characters, lone surrogates
                raise InvalidKeyError(
                    f"RecordKey.{name} holds control or non-UTF-8 characters: it is not a "
                    "msgcluster key"
                )

    @classmethod
    def of(cls, value: object) -> RecordKey:
        """Accept a RecordKey, ``{"pk", "rk"}`` / ``{"pKey", "rKey"}`` mapping, or pair."""
        if isinstance(value, RecordKey):
            return value
        if isinstance(value, dict):
            pk = value.get("pk", value.get("pKey"))
            rk = value.get("rk", value.get("rKey"))
            if pk is not None and rk is not None:
                return cls(pk, rk)
        if isinstance(value, tuple | list) and len(value) == 2:
            return cls(value[0], value[1])
        raise InvalidKeyError(
            "a record key must be a RecordKey, a mapping with 'pk' and 'rk', or a (pk, rk) "
            f"pair; got {type(value).__name__}: {value!r:.200}"
        )


def new_message_key() -> tuple[str, RecordKey]:
    """A fresh id and the key of the simple-message record it names."""
    ident = str(uuid.uuid4())
    return ident, RecordKey(f"{KEY_PREFIX}{ident}", MESSAGE_SORT_KEY)


class ErrorEntry(msgspec.Struct, rename="camel", omit_defaults=True):
    """One recorded processing failure (messages are truncated to 1 KiB)."""

    at: str
    message: str
    type: str = ""
    receive_count: int = 0


class MessageRecord(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """The DynamoDB record that tracks one message (or one cluster task)."""

    pk: str
    rk: str
    id: str
    url: str
    type: RecordType = RecordType.MESSAGE
    status: Status = Status.PRE_FLIGHT
    status_code: StatusCode = StatusCode.PRE_FLIGHT
    meta: Any = None
    # The body is kept on the record only while it is small: a DynamoDB write
    # costs 1 WCU per KB of the whole item, so large bodies are not copied.
    body: str | None = None
    body_size: int = 0
    started_at: str
    updated_at: str
    completed_at: str | None = None
    expires_at: int
    consumption_count: int = 0
    error: list[ErrorEntry] = []

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.pk, self.rk)


class Task(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """One task of a message cluster, as documented (``type`` is always ``task``)."""

    meta: Any = None
    type: str = "task"
    id: str | None = None
    status: Status | None = None


class CallbackStatus(enum.StrEnum):
    """State of a cluster's completion callback (claimed with a lease)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    ERROR = "ERROR"


class MessageClusterRecord(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """The record of a message cluster: progress counters, never task arrays.

    ``completed`` / ``failed`` are the sums over the cluster's shard counters
    when read with :meth:`Client.get_message_cluster`; on the stored item they
    only include closed shards.
    """

    pk: str
    rk: str
    id: str = ""
    url: str
    type: RecordType = RecordType.CLUSTER
    status: Status = Status.PRE_FLIGHT
    status_code: StatusCode = StatusCode.PRE_FLIGHT
    meta: Any = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    # Shards written so far / still open; ``sealed`` once every task was sent.
    shards: int = 0
    shards_open: int = 0
    sealed: bool = False
    # 1: tasks counted on their records in transactions (clusters created
    # before 2026-12); 2: counted into bucket sets (``clusters._buckets``).
    layout: int = 1
    tolerated_failures: int = 0
    tolerated_failure_rate: float = 0.0
    completion_queue_url: str | None = None
    globals_bucket: str | None = None
    globals_key: str | None = None
    # The completion callback by name (``create_message_cluster(callback=)``):
    # run by the callback registered under it; None: the default callback.
    callback_name: str | None = None
    callback_status: CallbackStatus | None = None
    callback_attempts: int = 0
    callback_error: str | None = None
    callback_at: str | None = None
    started_at: str
    updated_at: str
    completed_at: str | None = None
    cancelled_at: str | None = None
    expires_at: int
    error: list[ErrorEntry] = []

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.pk, self.rk)

    @property
    def in_progress(self) -> int:
        return max(self.total - self.completed - self.failed, 0)

    @property
    def done(self) -> bool:
        """True once the cluster reached a final state (complete, error or cancelled)."""
        return self.status_code >= StatusCode.COMPLETE

    @property
    def cancelled(self) -> bool:
        return self.status_code == StatusCode.STOPPED

    @property
    def globals_pointer(self) -> S3Pointer | None:
        if self.globals_bucket and self.globals_key:
            return S3Pointer(bucket=self.globals_bucket, key=self.globals_key)
        return None


class ShardRecord(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """One progress shard of a cluster: counters for a block of tasks."""

    pk: str
    rk: str
    total: int = 0
    pending: int = 0
    done: int = 0
    failed_count: int = 0
    sealed: bool = False
    closed_at: str | None = None
    expires_at: int = 0
    # Layout 2: the buckets whose counts this shard holds (ids 0-9).
    buckets: frozenset[int] = frozenset()


# msgspec cannot decode ``Raw | None``; an empty Raw marks "absent" instead.
NO_BODY: Final = msgspec.Raw(b"")


class S3Pointer(msgspec.Struct, rename="camel", omit_defaults=True):
    """Where an offloaded body (or a cluster's globals) lives in S3."""

    bucket: str
    key: str
    size: int = 0


class MessageEnvelope(
    msgspec.Struct, tag="message", tag_field="type", rename="camel", omit_defaults=True
):
    """Wire body of a tracked message. ``body`` is kept raw until a type is known."""

    pk: str
    rk: str
    url: str = ""
    # Raw (not decoded until a body type is known).
    body: msgspec.Raw = NO_BODY
    # Read only: msgcluster's pointer before it offloaded in the Extended
    # Client's format (envelopes still in flight may carry it).
    body_s3: S3Pointer | None = None


class TaskEnvelope(
    msgspec.Struct, tag="task", tag_field="type", rename="camel", omit_defaults=True
):
    """Wire body of a cluster task: the cluster key, the task, where globals live."""

    pk: str
    rk: str
    url: str = ""
    task_id: str = ""
    cluster_pk: str = ""
    task: msgspec.Raw = NO_BODY
    task_s3: S3Pointer | None = None  # read only, as MessageEnvelope.body_s3
    globals_s3: S3Pointer | None = None


class ClusterEventEnvelope(
    msgspec.Struct, tag="cluster", tag_field="type", rename="camel", omit_defaults=True
):
    """Wire body of a cluster's durable completion event (key of the cluster record)."""

    pk: str
    rk: str
    url: str = ""
    event: str = "complete"


Envelope = MessageEnvelope | TaskEnvelope | ClusterEventEnvelope
ENVELOPE_TYPES: Final = ("message", "task", "cluster")
