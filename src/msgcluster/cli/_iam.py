"""``msgcluster iam-policy``: the least-privilege IAM policy msgcluster needs.

:data:`OPERATIONS` lists every AWS API operation the library (and this CLI)
calls, with the IAM action that authorizes it and what needs it; the policy is
built from it, scoped to the ARNs of one table, bucket and set of queues.
``tests/test_cli.py`` greps the sources for AWS client calls and fails if one
is missing here, so the policy cannot fall behind the code.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._provision import dlq_name
from .._schemas import KEY_PREFIX
from ._common import EXIT_OK, Invocation, UsageError, queue_name, table_name

if TYPE_CHECKING:
    import argparse

__all__ = [
    "OPERATIONS",
    "QUEUE_TABLE_OPERATIONS",
    "TRANSACTION_ITEMS",
    "Need",
    "build_policy",
    "register",
]


class Need(enum.StrEnum):
    """Who calls an operation: every application, ``provision``, or only the CLI."""

    RUNTIME = "runtime"
    PROVISION = "provision"
    CLI = "cli"


class Permission(NamedTuple):
    action: str
    need: Need
    on_bucket: bool = False  # S3: the bucket itself, not its objects


_R, _P, _C = Need.RUNTIME, Need.PROVISION, Need.CLI

#: service -> API operation -> the IAM action that authorizes it.
OPERATIONS: Final[dict[str, dict[str, Permission]]] = {
    "dynamodb": {
        "BatchGetItem": Permission("dynamodb:BatchGetItem", _R),
        "BatchWriteItem": Permission("dynamodb:BatchWriteItem", _R),
        "DeleteItem": Permission("dynamodb:DeleteItem", _R),
        "GetItem": Permission("dynamodb:GetItem", _R),
        "PutItem": Permission("dynamodb:PutItem", _R),
        "Query": Permission("dynamodb:Query", _R),
        "UpdateItem": Permission("dynamodb:UpdateItem", _R),
        # A transaction is authorized per item by that item's action; msgcluster's
        # transactions only contain Update items (no ConditionCheck).
        "TransactWriteItems": Permission("dynamodb:UpdateItem", _R),
        "CreateTable": Permission("dynamodb:CreateTable", _P),
        "DescribeTable": Permission("dynamodb:DescribeTable", _P),
        "DescribeTimeToLive": Permission("dynamodb:DescribeTimeToLive", _P),
        "UpdateTimeToLive": Permission("dynamodb:UpdateTimeToLive", _P),
        "UpdateTable": Permission("dynamodb:UpdateTable", _P),  # adds the cluster index
        "Scan": Permission("dynamodb:Scan", _C),  # `cluster ls --scan`
    },
    "sqs": {
        "GetQueueUrl": Permission("sqs:GetQueueUrl", _R),
        "GetQueueAttributes": Permission("sqs:GetQueueAttributes", _R),
        "SendMessage": Permission("sqs:SendMessage", _R),
        "SendMessageBatch": Permission("sqs:SendMessage", _R),
        "ReceiveMessage": Permission("sqs:ReceiveMessage", _R),
        "DeleteMessage": Permission("sqs:DeleteMessage", _R),
        "DeleteMessageBatch": Permission("sqs:DeleteMessage", _R),
        "ChangeMessageVisibility": Permission("sqs:ChangeMessageVisibility", _R),
        "ChangeMessageVisibilityBatch": Permission("sqs:ChangeMessageVisibility", _R),
        "CreateQueue": Permission("sqs:CreateQueue", _P),
        "SetQueueAttributes": Permission("sqs:SetQueueAttributes", _P),
        "PurgeQueue": Permission("sqs:PurgeQueue", _C),  # `purge` on sqs://
    },
    "s3": {
        "GetObject": Permission("s3:GetObject", _R),
        "PutObject": Permission("s3:PutObject", _R),
        "DeleteObject": Permission("s3:DeleteObject", _R),
        "CreateBucket": Permission("s3:CreateBucket", _P, on_bucket=True),
        # HeadBucket is authorized by s3:ListBucket (`provision --dry-run`).
        "HeadBucket": Permission("s3:ListBucket", _P, on_bucket=True),
        "GetBucketLifecycleConfiguration": Permission(
            "s3:GetLifecycleConfiguration", _P, on_bucket=True
        ),
        "PutBucketLifecycleConfiguration": Permission(
            "s3:PutLifecycleConfiguration", _P, on_bucket=True
        ),
    },
}


#: The item kinds of a TransactWriteItems request and the action each needs.
TRANSACTION_ITEMS: Final = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}

#: What the dynamodb:// queue backend calls on its own table (``--dynamodb-queue-table``).
QUEUE_TABLE_OPERATIONS: Final[dict[str, Permission]] = {
    "GetItem": Permission("dynamodb:GetItem", _R),
    "PutItem": Permission("dynamodb:PutItem", _R),
    "UpdateItem": Permission("dynamodb:UpdateItem", _R),
    "DeleteItem": Permission("dynamodb:DeleteItem", _R),
    "Query": Permission("dynamodb:Query", _R),  # the ready index, and listings
    # Through msgcluster._dynamo's helpers (not visible to a grep of the backend):
    # the bodies of a batch of claims, and purge.
    "BatchGetItem": Permission("dynamodb:BatchGetItem", _R),
    "BatchWriteItem": Permission("dynamodb:BatchWriteItem", _R),
    # Its transactions hold Put, Update and Delete items.
    "TransactWriteItems": Permission("dynamodb:PutItem", _R),
    "CreateTable": Permission("dynamodb:CreateTable", _P),
    "DescribeTable": Permission("dynamodb:DescribeTable", _P),
    "UpdateTable": Permission("dynamodb:UpdateTable", _P),
    "DescribeTimeToLive": Permission("dynamodb:DescribeTimeToLive", _P),
    "UpdateTimeToLive": Permission("dynamodb:UpdateTimeToLive", _P),
}
_QUEUE_TABLE_TRANSACTION_ITEMS: Final = ("Put", "Update", "Delete")


def _queue_table_actions(needs: set[Need]) -> list[str]:
    actions = {p.action for p in QUEUE_TABLE_OPERATIONS.values() if p.need in needs}
    actions.update(TRANSACTION_ITEMS[kind] for kind in _QUEUE_TABLE_TRANSACTION_ITEMS)
    return sorted(actions)


def _actions(service: str, needs: set[Need], *, on_bucket: bool | None = None) -> list[str]:
    return sorted(
        {
            p.action
            for p in OPERATIONS[service].values()
            if p.need in needs and (on_bucket is None or p.on_bucket == on_bucket)
        }
    )


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def _table_statement(sid: str, table_arn: str, actions: list[str]) -> dict[str, Any]:
    return _statement(sid, actions, [table_arn, f"{table_arn}/index/*"])


def _queue_arns(sqs_arn: str, queues: list[str]) -> list[str]:
    """Each queue's ARN and its DLQ's."""
    arns = []
    for given in queues:
        # A queue name, or an SQS URL / sqs:// URI: the name is its last part.
        name = given.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        for queue in (name, dlq_name(name)):
            arns.append(f"{sqs_arn}:{queue}")
    return arns


def _bucket_statements(bucket_arn: str, needs: set[Need]) -> list[dict[str, Any]]:
    """The objects under msgcluster's prefix, and the bucket itself."""
    # Without ListBucket, S3 answers 403 (not 404) for a missing object, and
    # msgcluster could not tell "expired" from "denied". It lists names only.
    bucket_actions = ["s3:ListBucket", *_actions("s3", needs, on_bucket=True)]
    return [
        _statement(
            "MsgclusterObjects",
            _actions("s3", needs, on_bucket=False),
            [f"{bucket_arn}/{KEY_PREFIX}*"],
        ),
        _statement("MsgclusterBucket", sorted(bucket_actions), [bucket_arn]),
    ]


def build_policy(
    *,
    table: str,
    bucket: str | None,
    queues: list[str],
    region: str = "*",
    account: str = "*",
    partition: str = "aws",
    provision: bool = False,
    cli: bool = False,
    queue_tables: list[str] | None = None,
) -> dict[str, Any]:
    """The policy document: one statement per service and resource kind."""
    needs = (
        {Need.RUNTIME} | ({Need.PROVISION} if provision else set()) | ({Need.CLI} if cli else set())
    )
    tables = f"arn:{partition}:dynamodb:{region}:{account}:table"
    statements = [
        _table_statement("MsgclusterTable", f"{tables}/{table}", _actions("dynamodb", needs))
    ]
    for queue_table in queue_tables or []:
        sid = f"DynamodbQueues{''.join(c for c in queue_table if c.isalnum())}"
        statements.append(
            _table_statement(sid, f"{tables}/{queue_table}", _queue_table_actions(needs))
        )
    if queues:
        arns = _queue_arns(f"arn:{partition}:sqs:{region}:{account}", queues)
        statements.append(_statement("MsgclusterQueues", _actions("sqs", needs), arns))
    if bucket:
        statements += _bucket_statements(f"arn:{partition}:s3:::{bucket}", needs)
    return {"Version": "2012-10-17", "Statement": statements}


def iam_policy(inv: Invocation) -> int:
    args, settings = inv.args, inv.settings
    account: str = args.account or "*"
    if account != "*" and not (account.isdigit() and len(account) == 12):
        raise UsageError(f"--account takes a 12-digit AWS account id, got {account!r}")
    policy = build_policy(
        table=settings.table,
        bucket=settings.bucket,
        queues=args.queue or [],
        region=settings.region or "*",
        account=account,
        partition=args.partition,
        provision=args.provision,
        cli=args.cli,
        queue_tables=args.dynamodb_queue_table or [],
    )
    inv.out.document(policy, indent=0 if inv.out.json else 2)
    if not args.queue:
        inv.out.note("note: no --queue given, so the policy has no SQS statement")
    if not settings.bucket:
        inv.out.note("note: no --bucket given, so the policy has no S3 statements")
    return EXIT_OK


def register(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "iam-policy",
        parents=[common],
        help="print the least-privilege IAM policy for --table, --bucket and --queue",
        description="Print an IAM policy (JSON) allowing exactly the AWS actions msgcluster "
        "calls, on the ARNs of --table (and its indexes), --bucket (objects under "
        f"{KEY_PREFIX}) and each --queue with its DLQ. Region and account default to *.",
    )
    parser.add_argument(
        "--queue",
        action="append",
        type=queue_name,
        metavar="NAME",
        help="a queue name, URL or sqs:// URI (repeatable); its DLQ too",
    )
    parser.add_argument(
        "--dynamodb-queue-table",
        action="append",
        type=table_name,
        metavar="NAME",
        help="a table of dynamodb:// queues the application uses (repeatable)",
    )
    parser.add_argument("--account", default=None, help="12-digit AWS account id (default *)")
    parser.add_argument("--partition", default="aws", help="ARN partition (default aws)")
    parser.add_argument(
        "--provision", action="store_true", help="also what `provision` needs (create resources)"
    )
    parser.add_argument(
        "--cli", action="store_true", help="also what the CLI alone needs (Scan, PurgeQueue)"
    )
    parser.set_defaults(handler=iam_policy)
