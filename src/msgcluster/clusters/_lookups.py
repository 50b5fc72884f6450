"""Records as users see them, and the getters of a received message.

A layout-2 cluster task's status lives in its bucket, not on its record, so
reading a record (``get_message_record(s)``) overlays the bucket's word.
``LOOKUPS`` is what a :class:`~msgcluster.read.ParsedRecord`'s getters call:
the read pipeline sits below tracked messages and clusters, so the Client
hands it this object through its context instead of the pipeline importing
upwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._schemas import MessageRecord, RecordKey, RecordType, S3Pointer
from ..messages._messages import read_record, read_records
from ._buckets import with_bucket_status
from ._callbacks import ClusterView, globals_getter
from ._clusters import get_message_cluster
from ._globals import get_globals

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._context import Context

__all__ = ["LOOKUPS", "get_message_record", "get_message_records"]


async def get_message_record(
    ctx: Context, key: object, *, consistent_read: bool = False
) -> MessageRecord:
    record = await read_record(ctx, key, consistent_read=consistent_read)
    if record.type is RecordType.TASK:
        (overlaid,) = await with_bucket_status(ctx, [record], consistent_read=consistent_read)
        assert overlaid is not None
        return overlaid
    return record


async def get_message_records(
    ctx: Context, keys: Iterable[object], *, consistent_read: bool = False
) -> list[MessageRecord | None]:
    """Records in the order of ``keys``; ``None`` where no record exists."""
    records = await read_records(ctx, keys, consistent_read=consistent_read)
    return await with_bucket_status(ctx, records, consistent_read=consistent_read)


class Lookups:
    """The read pipeline's getters (``read._records.RecordLookups``)."""

    async def message_record(
        self, ctx: Context, key: RecordKey, consistent_read: bool
    ) -> MessageRecord:
        return await get_message_record(ctx, key, consistent_read=consistent_read)

    async def cluster_view(
        self, ctx: Context, key: RecordKey, consistent_read: bool
    ) -> ClusterView:
        record = await get_message_cluster(ctx, key, consistent_read=consistent_read)
        return ClusterView(record, globals_getter(ctx, record))

    async def globals(self, ctx: Context, pointer: S3Pointer, type: Any) -> Any:
        return await get_globals(ctx, pointer, type)


LOOKUPS: Final = Lookups()
