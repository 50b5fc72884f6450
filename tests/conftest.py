"""Shared fixtures: one embedded moto server per session, unique names per test.

Every test talks to a real ``moto_server`` over HTTP on loopback (started in a
child process by :class:`msgcluster.local.LocalAWS`). Tests that need paths
moto never takes put a :class:`faultproxy.FaultProxy` in front of it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators import emulated_aws
from faultproxy import FaultProxy

import msgcluster
from msgcluster.local import LocalAWS

EVENTS = Path(__file__).parent / "events"


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAWS]:
    """moto; or, under ``make test-localstack``, SQS and S3 on LocalStack (see emulators)."""
    with emulated_aws() as aws:
        yield aws


@pytest.fixture
def names() -> dict[str, str]:
    """Unique table, bucket and queue names for one test."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "table": f"t-{suffix}",
        "bucket": f"b-{suffix}",
        "queue": f"q-{suffix}",
        "fifo": f"f-{suffix}.fifo",
    }


def client_for(aws: LocalAWS, names: dict[str, str], **options: Any) -> msgcluster.Client:
    return msgcluster.Client(
        table=names["table"],
        bucket=names["bucket"],
        endpoint_url=options.pop("endpoint_url", aws.endpoint_url),
        region=aws.region,
        aws_access_key_id=aws.aws_access_key_id,
        aws_secret_access_key=aws.aws_secret_access_key,
        **options,
    )


@pytest.fixture
async def mc(local_aws: LocalAWS, names: dict[str, str]) -> AsyncIterator[msgcluster.Client]:
    async with client_for(local_aws, names) as client:
        await client.provision()
        yield client


@pytest.fixture
async def queue_url(mc: msgcluster.Client, names: dict[str, str]) -> str:
    urls = await mc.provision(queues=[names["queue"]], max_receive_count=3)
    return urls[names["queue"]]


@pytest.fixture(params=[2, 1], ids=["layout2", "layout1"])
def cluster_layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """New clusters in fan-in layout 2 (bucket sets) and, as clusters created by
    earlier versions are, layout 1 (counted on task records)."""
    from msgcluster.clusters import _cluster_create

    monkeypatch.setattr(_cluster_create, "NEW_CLUSTER_LAYOUT", request.param)
    return int(request.param)


@pytest.fixture
def proxy(local_aws: LocalAWS) -> Iterator[FaultProxy]:
    with FaultProxy(local_aws.endpoint_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def pc(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, proxy: FaultProxy
) -> AsyncIterator[msgcluster.Client]:
    """A client whose every request goes through the fault proxy (table/bucket from ``mc``)."""
    async with client_for(local_aws, names, endpoint_url=proxy.url) as client:
        yield client


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


async def receive_all(
    mc: msgcluster.Client, url: str, expected: int, *, wait: float = 20.0
) -> list[dict[str, Any]]:
    """Receive until ``expected`` distinct messages arrived (ReceiveMessage dicts)."""
    import anyio

    seen: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(wait):
        while len(seen) < expected:
            response = await mc.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                seen.setdefault(message["MessageId"], message)
    return list(seen.values())


def as_lambda_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A ReceiveMessage message in the shape Lambda delivers it."""
    attributes = dict(message.get("Attributes", {}))
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


async def stored_keys(mc: msgcluster.Client, table: str) -> set[msgcluster.RecordKey]:
    """Every record key in ``table`` (a consistent, paginated Scan; tests only)."""
    keys: set[msgcluster.RecordKey] = set()
    request: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "pk, rk",
        "ConsistentRead": True,
    }
    while True:
        response = await mc.dynamodb.scan(**request)
        keys.update(msgcluster.RecordKey(i["pk"]["S"], i["rk"]["S"]) for i in response["Items"])
        if not response.get("LastEvaluatedKey"):
            return keys
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


async def queue_depth(mc: msgcluster.Client, url: str) -> int:
    """Messages on the queue: visible + in flight + delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    response = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(response["Attributes"].get(name, "0")) for name in names)
