"""Client lifecycle and settings: one session, long-lived clients, pool sizing."""

from __future__ import annotations

import anyio
import pytest
from conftest import client_for, receive_all

import msgcluster
from msgcluster.local import LocalAWS


async def test_clients_are_long_lived_and_pool_sized(
    local_aws: LocalAWS, names: dict[str, str]
) -> None:
    client = client_for(local_aws, names, concurrency=7, retry_mode="adaptive")
    with pytest.raises(msgcluster.ConfigurationError, match="not open"):
        _ = client.sqs
    async with client as mc:
        sqs, ddb, s3 = mc.sqs, mc.dynamodb, mc.s3
        await mc.provision(queues=[names["queue"]])
        assert mc.sqs is sqs and mc.dynamodb is ddb and mc.s3 is s3  # noqa: PT018
        for aws_client in (sqs, ddb, s3):
            config = aws_client.meta.config
            assert config.max_pool_connections == 7
            assert config.retries["mode"] == "adaptive"
        assert mc.ctx.limiter.total_tokens == 7
    with pytest.raises(msgcluster.ConfigurationError):
        _ = client.sqs


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGCLUSTER_TABLE", "env-table")
    monkeypatch.setenv("MSGCLUSTER_BUCKET", "env-bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = msgcluster.Client().settings
    assert (settings.table, settings.bucket) == ("env-table", "env-bucket")
    assert settings.endpoint_url == "http://localhost:5000"
    assert settings.region == "eu-west-1"
    assert msgcluster.Client(table="arg").settings.table == "arg"  # arguments win


@pytest.mark.parametrize(
    "options",
    [{"concurrency": 0}, {"max_message_bytes": 2_000_000}, {"retry_mode": "sometimes"}],
)
def test_bad_settings_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(msgcluster.ConfigurationError):
        msgcluster.Client(**options)  # type: ignore[arg-type]


async def test_concurrent_consumers_complete_once(mc: msgcluster.Client, queue_url: str) -> None:
    """Two consumers holding the same delivery: exactly one completes it."""
    await mc.send_message(queue_url, {"job": 1})
    (message,) = await receive_all(mc, queue_url, 1)
    wins: list[bool] = []

    async def consumer() -> None:
        if not await mc.is_complete(message):
            wins.append(await mc.mark_complete(message))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(consumer)
    assert wins.count(True) == 1
    assert await mc.is_complete(message)


async def test_missing_table_is_a_typed_error(local_aws: LocalAWS, names: dict[str, str]) -> None:
    async with client_for(local_aws, names) as mc:  # not provisioned
        with pytest.raises(msgcluster.TableNotFoundError, match=names["table"]):
            await mc.get_message_record(("SQSMessage$x", "SQSMessage$message"))
