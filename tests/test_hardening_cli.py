"""The CLI and the cluster/provision entry points refuse bad input up front.

Found by an audit: per-service endpoints dropped by the CLI, one status
spelling not parsed the same everywhere, values sent to AWS unchecked (each
took 25-55 s of retries, then a misleading error), CLI arguments accepted
that AWS would refuse, and AWS config-file errors without a hint. Each case
is a row of a table: a typed MsgclusterError (ValidationError before any
request), or for the CLI one line on stderr, no traceback, the documented
exit code.

The CLI runs in-process here (``main`` in a worker thread: it runs its own
event loop), with the environment set by ``monkeypatch``.
"""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest

import msgcluster
from msgcluster.cli import main
from msgcluster.local import LocalAWS

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET9999"


def aws_env(monkeypatch: pytest.MonkeyPatch, aws: LocalAWS, **extra: str) -> None:
    """The environment of a CLI run against ``aws``: its credentials and region,
    no endpoint unless given in ``extra``."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "MSGCLUSTER_TABLE",
        "MSGCLUSTER_BUCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws.aws_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws.aws_secret_access_key)
    monkeypatch.setenv("AWS_REGION", aws.region)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("msgcluster: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


# --------------------------------------------------------------------------- 1. endpoints


@pytest.mark.parametrize(
    ("dead_service", "expect"),
    [("dynamodb", 1), ("common", 0)],
    ids=["dynamodb-endpoint-dead", "only-dynamodb-endpoint-live"],
)
async def test_cluster_ls_honours_per_service_endpoints(
    local_aws: LocalAWS,
    mc: msgcluster.Client,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dead_service: str,
    expect: int,
) -> None:
    """AWS_ENDPOINT_URL_DYNAMODB wins over AWS_ENDPOINT_URL for `cluster ls`:
    pointed at a dead port it fails (fast, one line) although moto is the
    common endpoint; pointed at moto it works although the common one is dead."""
    live = local_aws.endpoint_url
    common, dynamodb = (live, DEAD) if dead_service == "dynamodb" else (DEAD, live)
    aws_env(monkeypatch, local_aws, AWS_ENDPOINT_URL=common, AWS_ENDPOINT_URL_DYNAMODB=dynamodb)
    started = time.monotonic()
    code, out, err = await run_cli(capsys, "cluster", "ls", "--table", names["table"], "--json")
    assert code == expect, (out, err)
    if expect:
        assert_one_line_error(err, "127.0.0.1:9", "check the endpoint")
        assert time.monotonic() - started < 20
    else:
        assert '"count":0' in out.replace(" ", "")


async def test_the_cli_client_keeps_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from msgcluster._settings import Settings
    from msgcluster.cli._cluster_cmds import client
    from msgcluster.cli._common import Invocation
    from msgcluster.cli._render import Output

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1111")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:2222")
    settings = Settings.resolve(table="tbl", region="eu-west-1")
    inv = Invocation(args=argparse.Namespace(), settings=settings, out=Output(json_mode=True))
    async with client(inv) as mc:
        assert mc.settings == settings
        assert mc.dynamodb.meta.endpoint_url == "http://127.0.0.1:2222"
        assert mc.sqs.meta.endpoint_url == "http://127.0.0.1:1111"
