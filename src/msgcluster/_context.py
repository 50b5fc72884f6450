"""Shared state of one Client: settings, long-lived AWS clients, limits, caches.

Operation modules take a :class:`Context` rather than the Client so the
public class stays a thin, documented surface.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ._errors import QueueNotFoundError, ValidationError

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

    from ._settings import Settings
    from .queues import PortableQueue

__all__ = ["Context", "GlobalsCache", "QueueInfo", "iso_now"]


def iso_now() -> str:
    """Fixed-width UTC timestamp with milliseconds (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class QueueInfo(msgspec.Struct, frozen=True):
    """What msgcluster needs to know about a queue (read once per Client)."""

    url: str
    arn: str
    fifo: bool
    content_based_dedup: bool
    max_receive_count: int | None
    visibility_timeout: int
    max_message_size: int
    max_attributes: int = 10


class Context:
    def __init__(
        self,
        settings: Settings,
        sqs: SQSClient,
        ddb: DynamoDBClient,
        s3: S3Client,
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.ddb = ddb
        self.s3 = s3
        self.table = settings.table
        self.limiter = anyio.CapacityLimiter(settings.concurrency)
        self._queues: dict[str, QueueInfo] = {}
        self._opened: dict[str, PortableQueue] = {}
        # Cluster globals by S3 key: (ETag, bytes), revalidated with IfNoneMatch.
        self.globals_cache: GlobalsCache = GlobalsCache()
        # cluster id -> "may be final" as last seen by this process: lets
        # on_cluster_complete skip a read for clusters known to be running.
        self.cluster_hints: Hints = Hints()
        # Cluster id -> counted in bucket sets (layout 2)? Layouts never change.
        self.cluster_layouts: Hints = Hints()
        # Completion callbacks registered with Client.register_cluster_callback.
        self.cluster_callbacks: list[Any] = []
        # clusters._group_commit.GroupCommit, made on first use (it lives above
        # this layer): the counting of this Client's consumers, together.
        self.group_commit: Any = None
        # read._records.RecordLookups: what a ParsedRecord's getters call. The
        # Client sets clusters._lookups.LOOKUPS (the pipeline sits below it).
        self.lookups: Any = None
        self.clock = time.time

    def expires_at(self) -> int:
        return int(time.time()) + self.settings.retention_days * 86_400

    async def queue(self, target: str) -> PortableQueue:
        """The queue at ``target`` (an SQS queue URL, or a URI such as
        ``sqs://name`` or ``dynamodb://table?queue=name``), opened once per Client
        through the queue layer on this Client's own AWS clients."""
        check_queue_target(target)
        queue = self._opened.get(target)
        if queue is not None:
            return queue
        from .queues import PortableQueue, open_queue

        scheme = target.split("://", 1)[0].lower()
        # The AWS backends use this Client's clients; any other backend its own.
        clients = {"dynamodb": self.ddb, "sqs": self.sqs, "http": self.sqs, "https": self.sqs}
        options = {"client": clients[scheme]} if scheme in clients else {}
        try:
            opened = await open_queue(target, **options)
        except QueueNotFoundError as exc:
            raise QueueNotFoundError(
                f"{exc} Check the queue URL (and region), or create the queue with "
                "Client.provision(queues=[...]).",
                code=exc.code,
                operation=exc.operation,
                status=exc.status,
            ) from exc
        # The Client's limit on concurrent requests applies to its queues too.
        mine = PortableQueue(opened.driver, concurrency=self.settings.concurrency)  # type: ignore[attr-defined]
        queue = self._opened.setdefault(target, mine)
        if queue is not mine:  # opened concurrently by another task: keep one
            await opened.aclose()
        return queue

    async def queue_info(self, url: str) -> QueueInfo:
        """What msgcluster needs to know about the queue at ``url``, read once."""
        info = self._queues.get(url)
        if info is not None:
            return info
        queue = await self.queue(url)
        driver = queue.driver
        caps = queue.capabilities
        info = QueueInfo(
            url=url,
            arn=str(getattr(driver, "arn", "") or ""),
            fifo=caps.fifo,
            content_based_dedup=bool(getattr(driver, "content_based_dedup", False)),
            max_receive_count=queue.max_receives,
            visibility_timeout=int(getattr(driver, "visibility_timeout", 30) or 30),
            max_message_size=caps.max_body_bytes,
            max_attributes=caps.max_attributes,
        )
        self._queues[url] = info
        return info

    async def aclose(self) -> None:
        """Close the queues this Client opened (their AWS clients are the Client's)."""
        opened, self._opened = list(self._opened.values()), {}
        for queue in opened:
            await queue.aclose()

    def forget_queue(self, url: str) -> None:
        """Read the queue's attributes again next time (its redrive policy changed)."""
        self._queues.pop(url, None)
        self._opened.pop(url, None)


class GlobalsCache:
    """A small LRU of globals objects: S3 key -> (ETag, body).

    Bounded in entries and in bytes per entry, so a process that touches many
    clusters (or huge globals) keeps bounded memory.
    """

    def __init__(self, *, max_entries: int = 256, max_object_bytes: int = 1 << 20) -> None:
        self.max_entries = max_entries
        self.max_object_bytes = max_object_bytes
        self._items: dict[str, tuple[str, bytes]] = {}

    def get(self, key: str) -> tuple[str, bytes] | None:
        hit = self._items.pop(key, None)
        if hit is not None:
            self._items[key] = hit  # most recently used last
        return hit

    def put(self, key: str, etag: str, body: bytes) -> None:
        self._items.pop(key, None)
        if len(body) > self.max_object_bytes:
            return
        self._items[key] = (etag, body)
        while len(self._items) > self.max_entries:
            self._items.pop(next(iter(self._items)))

    def discard(self, key: str) -> None:
        self._items.pop(key, None)


class Hints:
    """A bounded map of flags (oldest dropped first)."""

    def __init__(self, max_entries: int = 4_096) -> None:
        self.max_entries = max_entries
        self._items: dict[str, bool] = {}

    def get(self, key: str) -> bool | None:
        return self._items.get(key)

    def put(self, key: str, value: bool) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.pop(next(iter(self._items)))


def check_queue_target(target: Any) -> str:
    """A queue URL (``https://sqs.<region>.amazonaws.com/<account>/<name>``) or a
    queue URI (``sqs://name``, ``dynamodb://table?queue=name``)."""
    if not isinstance(target, str) or "://" not in target:
        # Shown only when it cannot be a pasted secret (no '@' or ':', short).
        plain = isinstance(target, str) and len(target) <= 80 and not set(target) & set("@:/")
        got = repr(target) if plain else f"a {type(target).__name__} that is neither"
        raise ValidationError(
            "a queue is an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>) "
            f"or a queue URI (sqs://<name>, dynamodb://<table>?queue=<name>), got {got}"
        )
    return target
