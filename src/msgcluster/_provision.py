"""Idempotent creation of the table, bucket and queues msgcluster needs.

Each step reads before it writes, so running ``provision`` again (or from
several processes at once) changes nothing that is already right. Settings
of a queue that exists are left alone unless asked for (``max_receive_count``,
``visibility_timeout``): re-running provision never resets what an operator
tuned. Every step is reported (:class:`ProvisionReport`); ``dry_run`` reads
and reports what it would do, writing nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from ._aws_errors import aws_errors
from ._clusterkeys import CLUSTER_INDEX, CLUSTER_INDEX_KEY
from ._errors import (
    AwsError,
    ConfigurationError,
    QueueNotFoundError,
    ResourceNotFoundError,
    ValidationError,
)
from ._schemas import KEY_PREFIX, check_int

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._context import Context

__all__ = ["ProvisionReport", "ProvisionStep", "provision"]

TTL_ATTRIBUTE: Final = "expiresAt"
LIFECYCLE_RULE_ID: Final = "msgcluster-expiry"
DLQ_SUFFIX: Final = "-dlq"
DLQ_RETENTION_SECONDS: Final = 14 * 86_400  # the SQS maximum: time to inspect and redrive


class ProvisionStep(msgspec.Struct, frozen=True):
    """One thing provision did (or, dry, would do) to one resource.

    ``action``: ``created``, ``updated``, ``unchanged`` or ``kept`` (exists with
    a setting other than the default, left alone), with ``would `` before it
    in a dry run; ``detail`` says what.
    """

    resource: str
    action: str
    detail: str = ""


class ProvisionReport(msgspec.Struct):
    """What ``provision`` found and did; ``urls`` maps queue names to URLs."""

    urls: dict[str, str] = {}
    steps: list[ProvisionStep] = []
    dry_run: bool = False

    def add(self, resource: str, action: str, detail: str = "") -> None:
        if self.dry_run and action in ("created", "updated"):
            action = "would be " + action
        self.steps.append(ProvisionStep(resource, action, detail))


async def provision(
    ctx: Context,
    queues: Iterable[str] = (),
    *,
    max_receive_count: int | None = None,
    visibility_timeout: int | None = None,
    dry_run: bool = False,
) -> ProvisionReport:
    """Create what is missing and report every step (DLQs are not in ``urls``)."""
    names = [queues] if isinstance(queues, str) else list(queues)
    for name in names:
        _check_queue_name(name)
    if max_receive_count is not None:
        check_int("max_receive_count", max_receive_count, 1, 1000, why="SQS's range")
    if visibility_timeout is not None:
        check_int("visibility_timeout", visibility_timeout, 0, 43_200, why="seconds, SQS's range")
    if not isinstance(dry_run, bool):
        raise ValidationError(f"dry_run must be True or False, got {type(dry_run).__name__}")
    report = ProvisionReport(dry_run=dry_run)
    await ensure_table(ctx, report)
    if ctx.settings.bucket:
        await ensure_bucket(ctx, ctx.settings.bucket, report)
    for name in names:
        url = await ensure_queue(ctx, name, max_receive_count, visibility_timeout, report)
        if url:
            report.urls[name] = url
    return report


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


async def ensure_table(ctx: Context, report: ProvisionReport) -> None:
    table = ctx.table
    resource = f"table {table}"
    if report.dry_run:
        try:
            with aws_errors(resource=table):
                await ctx.ddb.describe_table(TableName=table)
        except ResourceNotFoundError:
            report.add(resource, "created", "with TTL on expiresAt and the cluster index")
            return
    else:
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
            report.add(resource, "created", "pay per request, with the cluster index")
        except AwsError as exc:
            if exc.code != "ResourceInUseException":
                raise
            report.add(resource, "unchanged", "exists")
        await _wait_active(ctx)
    await _ensure_cluster_index(ctx, report)
    await _ensure_ttl(ctx, report)


async def _ensure_ttl(ctx: Context, report: ProvisionReport) -> None:
    table = ctx.table
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
    report.add(f"table {table}", "updated", f"TTL enabled on {TTL_ATTRIBUTE}")
    if report.dry_run:
        return
    with aws_errors(resource=table):
        await ctx.ddb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )


async def _ensure_cluster_index(ctx: Context, report: ProvisionReport) -> None:
    """Add the cluster index to a table made before it existed (clusters
    created before then are not in it: ``list_clusters`` does not see them)."""
    with aws_errors(resource=ctx.table):
        described = await ctx.ddb.describe_table(TableName=ctx.table)
    indexes = described["Table"].get("GlobalSecondaryIndexes", [])
    if any(index["IndexName"] == CLUSTER_INDEX for index in indexes):
        return
    report.add(f"table {ctx.table}", "updated", f"index {CLUSTER_INDEX} added")
    if report.dry_run:
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


async def ensure_bucket(ctx: Context, bucket: str, report: ProvisionReport) -> None:
    # HeadBucket first: CreateBucket in us-east-1 answers 200 for a bucket
    # you already own, so its answer cannot say whether it created one.
    resource = f"bucket {bucket}"
    try:
        with aws_errors(resource=f"s3://{bucket}"):
            await ctx.s3.head_bucket(Bucket=bucket)
        report.add(resource, "unchanged", "exists")
    except ResourceNotFoundError:
        days = ctx.settings.retention_days
        report.add(resource, "created", f"msgcluster objects expire after {days} days")
        if report.dry_run:
            return
        await _create_bucket(ctx, bucket)
    await _ensure_lifecycle(ctx, bucket, report)


async def _create_bucket(ctx: Context, bucket: str) -> None:
    request: dict[str, Any] = {"Bucket": bucket}
    region = ctx.s3.meta.region_name
    if region and region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        with aws_errors(resource=f"s3://{bucket}"):
            await ctx.s3.create_bucket(**request)
    except AwsError as exc:
        if exc.code == "BucketAlreadyExists":
            raise ConfigurationError(
                f"bucket {bucket!r} exists and belongs to another account; choose another name"
            ) from exc
        if exc.code != "BucketAlreadyOwnedByYou":  # created concurrently: fine
            raise


async def _ensure_lifecycle(ctx: Context, bucket: str, report: ProvisionReport) -> None:
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
    days = ctx.settings.retention_days
    report.add(
        f"bucket {bucket}", "updated", f"lifecycle rule: {KEY_PREFIX}* expire in {days} days"
    )
    if report.dry_run:
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
    ctx: Context,
    name: str,
    max_receive_count: int | None,
    visibility_timeout: int | None,
    report: ProvisionReport,
) -> str | None:
    """The queue's URL (None in a dry run when it does not exist yet)."""
    fifo, dlq = name.endswith(".fifo"), dlq_name(name)
    dlq_attributes = {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    dlq_url, created = await _get_or_create_queue(
        ctx, dlq, fifo, dlq_attributes, dry_run=report.dry_run
    )
    report.add(f"queue {dlq}", "created" if created else "unchanged", "" if created else "exists")
    dlq_arn = None
    if dlq_url is not None:
        with aws_errors(resource=dlq_url):
            found = await ctx.sqs.get_queue_attributes(
                QueueUrl=dlq_url, AttributeNames=["QueueArn"]
            )
        dlq_arn = found["Attributes"]["QueueArn"]
    receives = max_receive_count or ctx.settings.max_receive_count
    wanted = {"RedrivePolicy": _redrive_policy(dlq_arn or "", receives)}
    if visibility_timeout is not None:
        wanted["VisibilityTimeout"] = str(visibility_timeout)
    url, created = await _get_or_create_queue(ctx, name, fifo, wanted, dry_run=report.dry_run)
    if created:
        report.add(f"queue {name}", "created", f"dead letters to {dlq} after {receives} receives")
        return url
    assert url is not None
    with aws_errors(resource=url):
        current = await ctx.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["RedrivePolicy", "VisibilityTimeout"]
        )
    have: Any = current.get("Attributes", {})
    changed = _queue_changes(
        name, have, dlq_arn, receives, max_receive_count, visibility_timeout, report
    )
    if changed and not report.dry_run:
        with aws_errors(resource=url):
            await ctx.sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)  # type: ignore[arg-type]
    ctx.forget_queue(url)
    return url


def _redrive_policy(dlq_arn: str, receives: int) -> str:
    return json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": receives})


def _queue_changes(
    name: str,
    have: dict[str, str],
    dlq_arn: str | None,
    receives: int,
    asked_receives: int | None,
    asked_visibility: int | None,
    report: ProvisionReport,
) -> dict[str, str]:
    """The attributes to set on an existing queue: what is missing or asked for.

    A redrive policy that exists is kept unless ``max_receive_count`` was
    given (reported as kept when it differs from the default).
    """
    resource, changed = f"queue {name}", {}
    try:
        policy = json.loads(have.get("RedrivePolicy") or "null") or {}
    except ValueError:
        policy = {}
    count = int(policy.get("maxReceiveCount", 0) or 0)
    target = policy.get("deadLetterTargetArn")
    if not policy:
        changed["RedrivePolicy"] = _redrive_policy(dlq_arn or "", receives)
        report.add(
            resource, "updated", f"dead letters to {dlq_name(name)} after {receives} receives"
        )
    elif asked_receives is not None and (count != asked_receives or target != dlq_arn):
        changed["RedrivePolicy"] = _redrive_policy(dlq_arn or "", asked_receives)
        report.add(resource, "updated", f"maxReceiveCount {count} -> {asked_receives}")
    elif count != receives or (dlq_arn is not None and target != dlq_arn):
        report.add(
            resource,
            "kept",
            f"maxReceiveCount {count}, dead letters to {str(target).rsplit(':', 1)[-1]} "
            "(pass max_receive_count / --max-receive-count to change it)",
        )
    if asked_visibility is not None and have.get("VisibilityTimeout") != str(asked_visibility):
        changed["VisibilityTimeout"] = str(asked_visibility)
        report.add(
            resource,
            "updated",
            f"VisibilityTimeout {have.get('VisibilityTimeout')} -> {asked_visibility}",
        )
    if not changed and report.steps[-1].resource != resource:
        report.add(resource, "unchanged", "exists")
    return changed


async def _get_or_create_queue(
    ctx: Context, name: str, fifo: bool, attributes: dict[str, str], *, dry_run: bool
) -> tuple[str | None, bool]:
    """(URL, created now): created with ``attributes`` when missing; in a dry
    run a missing queue is (None, True)."""
    try:
        with aws_errors(resource=name):
            return (await ctx.sqs.get_queue_url(QueueName=name))["QueueUrl"], False
    except QueueNotFoundError:
        if dry_run:
            return None, True
    create = dict(attributes)
    if fifo:
        create["FifoQueue"] = "true"
    try:
        with aws_errors(resource=name):
            response = await ctx.sqs.create_queue(QueueName=name, Attributes=create)  # type: ignore[arg-type]
        return response["QueueUrl"], True
    except AwsError as exc:
        if exc.code not in {"QueueAlreadyExists", "QueueNameExists"}:
            raise
        # Created concurrently with other attributes: use it; attributes are set after.
        with aws_errors(resource=name):
            return (await ctx.sqs.get_queue_url(QueueName=name))["QueueUrl"], False
