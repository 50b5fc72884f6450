"""Idempotent creation of the table, bucket and queues msgcluster needs.

Each step reads before it writes, so running ``provision`` again (or from
several processes at once) changes nothing that is already right.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._clusterkeys import CLUSTER_INDEX, CLUSTER_INDEX_KEY
from ._errors import (
    AwsError,
    ConfigurationError,
    QueueNotFoundError,
    ValidationError,
    aws_errors,
)
from ._schemas import KEY_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._context import Context

__all__ = ["provision"]

TTL_ATTRIBUTE: Final = "expiresAt"
LIFECYCLE_RULE_ID: Final = "msgcluster-expiry"
DLQ_SUFFIX: Final = "-dlq"
DLQ_RETENTION_SECONDS: Final = 14 * 86_400  # the SQS maximum: time to inspect and redrive


async def provision(
    ctx: Context,
    queues: Iterable[str] = (),
    *,
    max_receive_count: int | None = None,
    visibility_timeout: int | None = None,
) -> dict[str, str]:
    """Create what is missing; return ``{queue name: queue URL}`` (DLQs not listed)."""
    names = [queues] if isinstance(queues, str) else list(queues)
    for name in names:
        _check_queue_name(name)
    max_receives = max_receive_count or ctx.settings.max_receive_count
    await ensure_table(ctx)
    if ctx.settings.bucket:
        await ensure_bucket(ctx, ctx.settings.bucket)
    urls: dict[str, str] = {}
    for name in names:
        urls[name] = await ensure_queue(ctx, name, max_receives, visibility_timeout)
    return urls


def _check_queue_name(name: object) -> None:
    base = name.removesuffix(".fifo") if isinstance(name, str) else ""
    if (
        not base
        or len(base) + len(DLQ_SUFFIX) + 5 > 80
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in base)
    ):
        raise ValidationError(
            f"invalid queue name {name!r}: use letters, digits, '-' and '_' (at most "
            f"{80 - len(DLQ_SUFFIX) - 5} characters, so the DLQ name fits), optional '.fifo'"
        )


# --------------------------------------------------------------------------- table


_INDEX_ATTRIBUTES: Final[list[Any]] = [
    {"AttributeName": CLUSTER_INDEX_KEY, "AttributeType": "S"},
    {"AttributeName": "startedAt", "AttributeType": "S"},
]
_CLUSTER_INDEX: Final[Any] = {
    "IndexName": CLUSTER_INDEX,
    "KeySchema": [
        {"AttributeName": CLUSTER_INDEX_KEY, "KeyType": "HASH"},
        {"AttributeName": "startedAt", "KeyType": "RANGE"},
    ],
    "Projection": {"ProjectionType": "KEYS_ONLY"},
}


async def ensure_table(ctx: Context) -> None:
    table = ctx.table
    try:
        with aws_errors(resource=table):
            await ctx.ddb.create_table(
                TableName=table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "rk", "AttributeType": "S"},
                    *_INDEX_ATTRIBUTES,
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "rk", "KeyType": "RANGE"},
                ],
                GlobalSecondaryIndexes=[_CLUSTER_INDEX],
            )
    except AwsError as exc:
        if exc.code != "ResourceInUseException":
            raise
    await _wait_active(ctx)
    await _ensure_cluster_index(ctx)
    with aws_errors(resource=table):
        ttl = await ctx.ddb.describe_time_to_live(TableName=table)
    description = ttl.get("TimeToLiveDescription", {})
    if description.get("TimeToLiveStatus") in {"ENABLED", "ENABLING"}:
        if description.get("AttributeName") != TTL_ATTRIBUTE:
            raise ConfigurationError(
                f"table {table} has TTL on {description.get('AttributeName')!r}; msgcluster "
                f"needs it on {TTL_ATTRIBUTE!r} (a table has one TTL attribute)"
            )
        return
    with aws_errors(resource=table):
        await ctx.ddb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )


async def _ensure_cluster_index(ctx: Context) -> None:
    """Add the cluster index to a table made before it existed (clusters
    created before then are not in it: ``list_clusters`` does not see them)."""
    with aws_errors(resource=ctx.table):
        described = await ctx.ddb.describe_table(TableName=ctx.table)
    indexes = described["Table"].get("GlobalSecondaryIndexes", [])
    if any(index["IndexName"] == CLUSTER_INDEX for index in indexes):
        return
    with aws_errors(resource=ctx.table):
        await ctx.ddb.update_table(
            TableName=ctx.table,
            AttributeDefinitions=_INDEX_ATTRIBUTES,
            GlobalSecondaryIndexUpdates=[{"Create": _CLUSTER_INDEX}],
        )
    await _wait_active(ctx, limit=1800.0)  # AWS backfills the index from the table


async def _wait_active(ctx: Context, limit: float = 120.0) -> None:
    """Until the table and its indexes are ACTIVE."""
    with anyio.fail_after(limit):
        delay = 0.05
        while True:
            with aws_errors(resource=ctx.table):
                described = await ctx.ddb.describe_table(TableName=ctx.table)
            table = described["Table"]
            indexes = table.get("GlobalSecondaryIndexes", [])
            if table.get("TableStatus") == "ACTIVE" and all(
                index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes
            ):
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


# --------------------------------------------------------------------------- bucket


async def ensure_bucket(ctx: Context, bucket: str) -> None:
    request: dict[str, Any] = {"Bucket": bucket}
    region = ctx.s3.meta.region_name
    if region and region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        with aws_errors(resource=f"s3://{bucket}"):
            await ctx.s3.create_bucket(**request)
    except AwsError as exc:
        if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise
        if exc.code == "BucketAlreadyExists":
            raise ConfigurationError(
                f"bucket {bucket!r} exists and belongs to another account; choose another name"
            ) from exc
    await _ensure_lifecycle(ctx, bucket)


async def _ensure_lifecycle(ctx: Context, bucket: str) -> None:
    """Merge our expiry rule into the bucket's lifecycle, leaving other rules alone."""
    try:
        with aws_errors(resource=f"s3://{bucket}"):
            current = await ctx.s3.get_bucket_lifecycle_configuration(Bucket=bucket)
        rules: list[Any] = list(current.get("Rules", []))
    except AwsError as exc:
        if exc.code != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    ours = {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": KEY_PREFIX},
        "Status": "Enabled",
        "Expiration": {"Days": ctx.settings.retention_days},
    }
    existing = next((rule for rule in rules if rule.get("ID") == LIFECYCLE_RULE_ID), None)
    if existing is not None and _same_rule(existing, ours):
        return
    rules = [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE_ID] + [ours]
    with aws_errors(resource=f"s3://{bucket}"):
        await ctx.s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": rules}
        )


def _same_rule(existing: Any, ours: dict[str, Any]) -> bool:
    return bool(
        existing.get("Status") == ours["Status"]
        and existing.get("Filter", {}).get("Prefix") == KEY_PREFIX
        and existing.get("Expiration", {}).get("Days") == ours["Expiration"]["Days"]
    )


# --------------------------------------------------------------------------- queues


def dlq_name(name: str) -> str:
    if name.endswith(".fifo"):
        return f"{name.removesuffix('.fifo')}{DLQ_SUFFIX}.fifo"
    return f"{name}{DLQ_SUFFIX}"


async def ensure_queue(
    ctx: Context, name: str, max_receive_count: int, visibility_timeout: int | None
) -> str:
    fifo = name.endswith(".fifo")
    dlq_url = await _get_or_create_queue(
        ctx, dlq_name(name), fifo, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    )
    with aws_errors(resource=dlq_url):
        dlq = await ctx.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = json.dumps(
        {"deadLetterTargetArn": dlq["Attributes"]["QueueArn"], "maxReceiveCount": max_receive_count}
    )
    attributes = {"RedrivePolicy": redrive}
    if visibility_timeout is not None:
        attributes["VisibilityTimeout"] = str(visibility_timeout)
    url = await _get_or_create_queue(ctx, name, fifo, attributes)
    with aws_errors(resource=url):
        current = await ctx.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["RedrivePolicy", "VisibilityTimeout"]
        )
    have: Any = current.get("Attributes", {})
    changed = {
        key: value
        for key, value in attributes.items()
        if not _same_attribute(key, have.get(key), value)
    }
    if changed:
        with aws_errors(resource=url):
            await ctx.sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)  # type: ignore[arg-type]
    ctx.forget_queue(url)
    return url


def _same_attribute(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return False
    if key == "RedrivePolicy":
        try:
            a, b = json.loads(have), json.loads(want)
        except ValueError:
            return False
        return bool(
            a.get("deadLetterTargetArn") == b["deadLetterTargetArn"]
            and int(a.get("maxReceiveCount", 0)) == b["maxReceiveCount"]
        )
    return have == want


async def _get_or_create_queue(
    ctx: Context, name: str, fifo: bool, attributes: dict[str, str]
) -> str:
    try:
        with aws_errors(resource=name):
            return (await ctx.sqs.get_queue_url(QueueName=name))["QueueUrl"]
    except QueueNotFoundError:
        pass
    create = dict(attributes)
    if fifo:
        create["FifoQueue"] = "true"
    try:
        with aws_errors(resource=name):
            return (await ctx.sqs.create_queue(QueueName=name, Attributes=create))["QueueUrl"]  # type: ignore[arg-type]
    except AwsError as exc:
        if exc.code not in {"QueueAlreadyExists", "QueueNameExists"}:
            raise
        # Created concurrently with other attributes: use it; attributes are set after.
        with aws_errors(resource=name):
            return (await ctx.sqs.get_queue_url(QueueName=name))["QueueUrl"]
