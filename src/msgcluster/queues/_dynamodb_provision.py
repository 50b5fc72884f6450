"""Create the table of dynamodb:// queues (and its ready index), idempotently.

On-demand billing: a queue's load is bursty, and on-demand capacity needs no
tuning. The ready index projects keys only: a receive reads keys from it and
takes the whole item with the claim's ``ReturnValues``, so index writes cost
one WCU whatever the body size.
"""

from __future__ import annotations

from typing import Any

import anyio

from .._aws_errors import aws_errors
from .._errors import AwsError
from ._dynamodb_keys import INDEX_NAME, TTL_ATTRIBUTE

__all__ = ["provision_dynamodb_queue_table"]

_KEYS = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": "rk", "AttributeType": "S"},
    {"AttributeName": "gpk", "AttributeType": "S"},
    {"AttributeName": "gsk", "AttributeType": "S"},
]
_INDEX = {
    "IndexName": INDEX_NAME,
    "KeySchema": [
        {"AttributeName": "gpk", "KeyType": "HASH"},
        {"AttributeName": "gsk", "KeyType": "RANGE"},
    ],
    "Projection": {"ProjectionType": "KEYS_ONLY"},
}


async def provision_dynamodb_queue_table(client: Any, table: str, *, wait: float = 120.0) -> bool:
    """Make ``table`` ready for dynamodb:// queues: create it (pk/rk, the
    ``ready-index`` GSI, on-demand) or add the index to an existing table
    with the same key names, then enable TTL on ``expiresAt`` (dedup records
    expire by it; a table whose TTL is on another attribute is left alone).

    ``client`` is an aiobotocore DynamoDB client (``msgcluster.Client(...).dynamodb``).
    Returns True if it created the table or the index. Safe to run again,
    and from several processes at once.
    """
    created = await _create_table(client, table)
    described = await _wait_active(client, table, wait)
    indexes = {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])}
    if INDEX_NAME not in indexes:
        with aws_errors(resource=table):
            await client.update_table(
                TableName=table,
                AttributeDefinitions=_KEYS[2:],
                GlobalSecondaryIndexUpdates=[{"Create": _INDEX}],
            )
        created = True
        await _wait_active(client, table, wait)
    await _ensure_ttl(client, table)
    return created


async def _create_table(client: Any, table: str) -> bool:
    try:
        with aws_errors(resource=table):
            await client.create_table(
                TableName=table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=_KEYS,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "rk", "KeyType": "RANGE"},
                ],
                GlobalSecondaryIndexes=[_INDEX],
            )
    except AwsError as exc:
        if exc.code != "ResourceInUseException":
            raise
        return False
    return True


async def _wait_active(client: Any, table: str, limit: float) -> dict[str, Any]:
    """The table's description once it and every index are ACTIVE."""
    with anyio.fail_after(limit):
        delay = 0.05
        while True:
            with aws_errors(resource=table):
                described: dict[str, Any] = (await client.describe_table(TableName=table))["Table"]
            indexes = described.get("GlobalSecondaryIndexes", [])
            if described.get("TableStatus") == "ACTIVE" and all(
                i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
            ):
                return described
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _ensure_ttl(client: Any, table: str) -> None:
    with aws_errors(resource=table):
        ttl = await client.describe_time_to_live(TableName=table)
    if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") in {"ENABLED", "ENABLING"}:
        return  # ours, or the table's owner chose another: dedup checks expiry itself
    with aws_errors(resource=table):
        await client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
