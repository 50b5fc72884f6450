"""provision(): table with TTL, bucket with lifecycle, queues with DLQ and redrive."""

from __future__ import annotations

import json

import pytest
from conftest import client_for

import msgcluster
from msgcluster.local import LocalAWS


async def test_provision_creates_everything_idempotently(
    local_aws: LocalAWS, names: dict[str, str]
) -> None:
    async with client_for(local_aws, names) as mc:
        s3 = mc.s3
        await s3.create_bucket(Bucket=names["bucket"])
        other_rule = {
            "ID": "keep-me",
            "Filter": {"Prefix": "logs/"},
            "Status": "Enabled",
            "Expiration": {"Days": 3},
        }
        await s3.put_bucket_lifecycle_configuration(
            Bucket=names["bucket"], LifecycleConfiguration={"Rules": [other_rule]}
        )
        queues = [names["queue"], names["fifo"]]
        urls = await mc.provision(queues=queues, max_receive_count=4)
        assert sorted(urls) == sorted(queues)
        assert await mc.provision(queues=queues, max_receive_count=4) == urls  # idempotent

        table = (await mc.dynamodb.describe_table(TableName=names["table"]))["Table"]
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
            "pk": "HASH",
            "rk": "RANGE",
        }
        ttl = await mc.dynamodb.describe_time_to_live(TableName=names["table"])
        assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
        assert ttl["TimeToLiveDescription"]["AttributeName"] == "expiresAt"

        rules = (await s3.get_bucket_lifecycle_configuration(Bucket=names["bucket"]))["Rules"]
        by_id = {rule["ID"]: rule for rule in rules}
        assert set(by_id) == {"keep-me", "msgcluster-expiry"}
        ours = by_id["msgcluster-expiry"]
        assert ours["Filter"]["Prefix"] == "SQSMessage$"
        assert ours["Expiration"]["Days"] == 30

        for name, dlq in (
            (names["queue"], f"{names['queue']}-dlq"),
            (names["fifo"], names["fifo"].replace(".fifo", "-dlq.fifo")),
        ):
            attrs = (
                await mc.sqs.get_queue_attributes(QueueUrl=urls[name], AttributeNames=["All"])
            )["Attributes"]
            policy = json.loads(attrs["RedrivePolicy"])
            assert policy["deadLetterTargetArn"].endswith(f":{dlq}")
            assert int(policy["maxReceiveCount"]) == 4
            assert (attrs.get("FifoQueue") == "true") == name.endswith(".fifo")

        await mc.provision(queues=[names["queue"]], max_receive_count=9)
        attrs = (
            await mc.sqs.get_queue_attributes(
                QueueUrl=urls[names["queue"]], AttributeNames=["RedrivePolicy"]
            )
        )["Attributes"]
        assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) == 9


@pytest.mark.parametrize("bad", ["", "has space", "x" * 80, "é", ".fifo"])
async def test_invalid_queue_names(mc: msgcluster.Client, bad: str) -> None:
    with pytest.raises(msgcluster.ValidationError, match="invalid queue name"):
        await mc.provision(queues=[bad])
