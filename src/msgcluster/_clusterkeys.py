"""Where a cluster's items live in the table.

- cluster record: pk ``SQSMessage$<cid>``, rk ``SQSMessage$cluster``;
- shard ``k``: pk ``SQSMessage$<cid>$shard$<k>``, rk ``SQSMessage$shard``;
- task ``i``: under its shard's pk, rk ``SQSMessage$task$<i:010d>``;
- bucket ``j`` of shard ``k`` (layout 2): pk ``<shard pk>$b<j>``, rk
  ``SQSMessage$bucket``: the sets of counted task indexes of tasks
  ``k * SHARD_SIZE + j * BUCKET_SIZE ...`` (see ``clusters._buckets``).

Task ``i`` belongs to shard ``i // SHARD_SIZE``. Ids are deterministic, so a
creation resumed with the same cluster id addresses the same items; tasks of
one shard share a partition, so a shard's task list is one Query (no Scan),
and a receive batch (SQS returns roughly in send order) touches one or two
shards.
"""

from __future__ import annotations

from typing import Final

from ._errors import InvalidKeyError
from ._schemas import KEY_PREFIX, RecordKey

__all__ = [
    "BUCKET_SIZE",
    "BUCKET_SORT_KEY",
    "CLUSTER_INDEX",
    "CLUSTER_INDEX_KEY",
    "CLUSTER_INDEX_VALUE",
    "CLUSTER_SORT_KEY",
    "SHARD_SIZE",
    "SHARD_SORT_KEY",
    "TASK_SORT_PREFIX",
    "TaskRef",
    "bucket_key",
    "cluster_id_of",
    "cluster_key",
    "shard_key",
    "task_key",
]

# Tasks per shard. A shard's task records share its partition, so counting a
# receive batch of 10 costs ~22 WCU there (transactional writes cost double):
# with every consumer inside one shard that is ~450 tasks/s per partition
# until DynamoDB's adaptive capacity splits it; shards fill and drain one
# after another, so several are usually active at once.
SHARD_SIZE: Final = 1_000
# Tasks per counting bucket (layout 2): 100 indexes of up to 7 digits keep a
# bucket item under 1 KB, so each counting write costs 1 WCU. Every bucket has
# its own partition key.
BUCKET_SIZE: Final = 100
BUCKET_SORT_KEY: Final = f"{KEY_PREFIX}bucket"
CLUSTER_SORT_KEY: Final = f"{KEY_PREFIX}cluster"
# A sparse, keys-only index that only cluster records are in (they alone carry
# the attribute), sorted by start time: listing clusters reads clusters only,
# never the table's task and message records. Its key attributes never change,
# so the many updates of a running cluster's item cost the index nothing.
CLUSTER_INDEX: Final = "clusters-by-start"
CLUSTER_INDEX_KEY: Final = "clusterIndex"
CLUSTER_INDEX_VALUE: Final = "cluster"
SHARD_SORT_KEY: Final = f"{KEY_PREFIX}shard"
TASK_SORT_PREFIX: Final = f"{KEY_PREFIX}task$"
_SHARD_MARK: Final = "$shard$"


def cluster_key(cluster_id: str) -> RecordKey:
    return RecordKey(f"{KEY_PREFIX}{cluster_id}", CLUSTER_SORT_KEY)


def shard_key(cluster_id: str, shard: int) -> RecordKey:
    return RecordKey(f"{KEY_PREFIX}{cluster_id}{_SHARD_MARK}{shard}", SHARD_SORT_KEY)


def bucket_key(cluster_id: str, shard: int, bucket: int) -> RecordKey:
    return RecordKey(f"{shard_key(cluster_id, shard).pk}$b{bucket}", BUCKET_SORT_KEY)


def task_key(cluster_id: str, index: int) -> RecordKey:
    return RecordKey(
        shard_key(cluster_id, index // SHARD_SIZE).pk, f"{TASK_SORT_PREFIX}{index:010d}"
    )


def cluster_id_of(key: object) -> str:
    """The cluster id in a cluster, shard or task key (or a bare id)."""
    if isinstance(key, str) and not key.startswith(KEY_PREFIX):
        return key
    pk = key if isinstance(key, str) else RecordKey.of(key).pk
    ident = pk[len(KEY_PREFIX) :].split(_SHARD_MARK, 1)[0]
    if not ident:
        raise InvalidKeyError(f"not a cluster key: {pk!r}")
    return ident


class TaskRef:
    """A task addressed by key: its cluster, shard and index."""

    __slots__ = ("cluster_id", "index", "key", "shard")

    def __init__(self, key: RecordKey) -> None:
        pk, rk = key.pk, key.rk
        if _SHARD_MARK not in pk or not rk.startswith(TASK_SORT_PREFIX):
            raise InvalidKeyError(f"not a cluster task key: {pk!r} / {rk!r}")
        ident, _, shard = pk[len(KEY_PREFIX) :].partition(_SHARD_MARK)
        try:
            self.shard = int(shard)
            self.index = int(rk[len(TASK_SORT_PREFIX) :])
        except ValueError as exc:
            raise InvalidKeyError(f"not a cluster task key: {pk!r} / {rk!r}") from exc
        self.cluster_id = ident
        self.key = key

    @property
    def task_id(self) -> str:
        return f"{self.cluster_id}:{self.index}"

    @property
    def shard_key(self) -> RecordKey:
        return shard_key(self.cluster_id, self.shard)

    @property
    def cluster_key(self) -> RecordKey:
        return cluster_key(self.cluster_id)

    @property
    def bucket(self) -> int:
        """The task's bucket within its shard (layout 2)."""
        return (self.index % SHARD_SIZE) // BUCKET_SIZE

    @property
    def bucket_key(self) -> RecordKey:
        return bucket_key(self.cluster_id, self.shard, self.bucket)

    def __repr__(self) -> str:
        return f"TaskRef({self.task_id!r})"
