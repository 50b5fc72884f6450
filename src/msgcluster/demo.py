"""The README's first command: tracked messages end to end on an embedded local AWS.

Run with ``python -m msgcluster.demo`` (``make demo``). Nothing touches real
AWS: a moto server is started on a loopback port and stopped at the end.
"""

from __future__ import annotations

import random
import time

import anyio
import msgspec

from ._client import Client
from .local import LocalAWS


class Thumbnail(msgspec.Struct):
    """The body type the demo's producer sends and its consumer decodes."""

    image: str
    width: int


async def produce(mc: Client, url: str) -> None:
    key = await mc.send_message(url, Thumbnail("cover.png", 320), meta={"user": "ada"})
    print(f"  sent 1 tracked message        -> record {key.pk}")
    bodies = [Thumbnail(f"photo-{i:03}.jpg", 160) for i in range(49)]
    keys = await mc.send_message_batch(url, bodies, meta={"batch": "holiday"})
    print(f"  sent {len(keys)} in one batch call    -> {len(keys)} records (PRE FLIGHT)")


async def consume(mc: Client, url: str, expected: int) -> dict[str, int]:
    """A plain ReceiveMessage loop: skip what is done, fail some, complete the rest."""
    outcome = {"completed": 0, "failed": 0, "skipped": 0}
    rng = random.Random(7)
    while outcome["completed"] < expected:
        response = await mc.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            if await mc.is_complete(message):  # a duplicate delivery
                outcome["skipped"] += 1
            else:
                record = mc.read_sqs_record(message, body_type=Thumbnail)
                if rng.random() < 0.1:  # a flaky handler: recorded, redelivered later
                    await mc.mark_failed(record, RuntimeError(f"{record.body.image}: timeout"))
                    await mc.sqs.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                    )
                    outcome["failed"] += 1
                    continue
                await mc.mark_complete(record)
                outcome["completed"] += 1
            await mc.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return outcome


async def main() -> None:
    started = time.perf_counter()
    print("msgcluster demo: tracked messages on an embedded local AWS (moto)")
    with LocalAWS() as aws:
        print(f"  local AWS at {aws.endpoint_url}")
        async with Client(
            table="demo",
            bucket="demo-bucket",
            **aws.settings(),
        ) as mc:
            urls = await mc.provision(queues=["thumbnails"])
            url = urls["thumbnails"]
            print(f"  provisioned table 'demo', bucket 'demo-bucket', queue {url} (+ DLQ)")
            await produce(mc, url)
            outcome = await consume(mc, url, expected=50)
            print(
                f"  consumed: {outcome['completed']} completed, {outcome['failed']} failed "
                f"attempts (recorded, then redelivered and completed), "
                f"{outcome['skipped']} duplicates skipped"
            )
            left = await mc.dynamodb.scan(TableName="demo", Select="COUNT")
            print(f"  records left in the table: {left['Count']} (completed records are removed)")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    anyio.run(main)
