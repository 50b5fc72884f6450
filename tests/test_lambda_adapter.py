"""msgcluster.integrations.aws_lambda: an App as a Lambda handler, against moto.

The handler is synchronous (Lambda calls it so); tests call it from a worker
thread, like the Lambda runtime's own loop would, with events from
``tests/events`` filled with real messages.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio.to_thread
import msgspec
import pytest
from conftest import client_for, load_event
from test_lambda import Job, failures, fill

import msgcluster
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.local import LocalAWS
from msgcluster.worker import App, Retry

#: Importing the adapter in a fresh interpreter (cold start): measured ~0.4-0.8 s
#: on the development machine, almost all of it aiobotocore/botocore.
IMPORT_BUDGET_SECONDS = 2.5


async def invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await anyio.to_thread.run_sync(handler, event, None)
    return result


async def test_tracked_messages_run_once_and_the_client_is_reused(
    mc: msgcluster.Client, queue_url: str, local_aws: LocalAWS, names: dict[str, str]
) -> None:
    app = App(client=client_for(local_aws, names))
    seen: list[int] = []

    @app.handler(Job)
    async def job(body: Job) -> None:
        if body.n == 1:
            raise Retry()
        seen.append(body.n)

    handler = lambda_handler(app)
    first = await fill(mc, queue_url, "sqs_standard.json")
    result = await invoke(handler, first.event)
    assert failures(result) == [first.id(1)]
    assert sorted(seen) == [0, 2]
    for index in (0, 2):
        with pytest.raises(msgcluster.RecordNotFoundError):
            await mc.get_message_record(first.keys[index], consistent_read=True)
    loop, client = handler.loop, handler.client

    # A warm invocation: same loop, same opened client; a duplicate is skipped.
    seen.clear()
    result = await invoke(handler, first.event)
    assert failures(result) == [first.id(1)]
    assert seen == []
    assert handler.loop is loop
    assert handler.client is client
    assert handler.invocations == 2
    await anyio.to_thread.run_sync(handler.close)
    assert loop.is_closed()
    assert not client.is_open


async def test_an_open_client_is_refused(mc: msgcluster.Client, queue_url: str) -> None:
    handler = lambda_handler(App(client=mc))
    first = await fill(mc, queue_url, "sqs_standard.json")
    with pytest.raises(msgcluster.ConfigurationError, match="not open yet"):
        await invoke(handler, first.event)
    await anyio.to_thread.run_sync(handler.close)


async def test_plain_bodies_and_poison(local_aws: LocalAWS) -> None:
    app = App()
    seen: list[int] = []

    @app.handler(Job)
    async def job(body: Job) -> None:
        seen.append(body.n)

    event = load_event("sqs_standard.json")
    bodies = [msgspec.json.encode(Job(n=7)).decode(), "not json", '{"n": "x"}']
    for record, body in zip(event["Records"], bodies, strict=False):
        record["body"] = body
    event["Records"] = event["Records"][: len(bodies)]
    result = await invoke(lambda_handler(app), event)
    ids = [r["messageId"] for r in event["Records"]]
    assert failures(result) == ids[1:]
    assert seen == [7]


async def test_not_an_sqs_event_is_a_clear_error() -> None:
    handler = lambda_handler(App())
    with pytest.raises(
        msgcluster.MalformedEventError, match=r"Records\[0\]: SQS record has no 'messageId'"
    ):
        await invoke(handler, load_event("not_sqs_s3_event.json"))


def test_import_stays_within_budget() -> None:
    code = (
        "import time; t = time.perf_counter(); "
        "import msgcluster.integrations.aws_lambda; print(time.perf_counter() - t)"
    )
    best = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout)
        for _ in range(3)
    )  # fmt: skip
    assert best < IMPORT_BUDGET_SECONDS, f"importing the adapter took {best:.2f} s"
