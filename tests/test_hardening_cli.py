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
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import msgcluster
from msgcluster import ConfigurationError, Status, StatusCode, ValidationError
from msgcluster._schemas import (
    CANCELLED,
    parse_cluster_status,
    parse_cluster_statuses,
    parse_statuses,
)
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


# --------------------------------------------------------------------------- 2. statuses

CLUSTER_SPELLINGS: list[tuple[object, tuple[object, ...]]] = [
    ("error", (Status.ERROR,)),
    (Status.ERROR, (Status.ERROR,)),
    (StatusCode.ERROR, (Status.ERROR,)),
    (StatusCode.IN_PROGRESS, (Status.IN_PROGRESS,)),
    (StatusCode.STOPPED, (CANCELLED,)),
    ("stopped", (CANCELLED,)),
    ("Canceled", (CANCELLED,)),
    (["cancelled", "in_progress", StatusCode.STOPPED], (CANCELLED, Status.IN_PROGRESS)),
    (("complete", "COMPLETE"), (Status.COMPLETE,)),
]


@pytest.mark.parametrize(("value", "expect"), CLUSTER_SPELLINGS, ids=repr)
def test_cluster_status_spellings(value: object, expect: tuple[object, ...]) -> None:
    assert parse_cluster_statuses(value) == expect
    if isinstance(value, str):  # Status and StatusCode members too
        assert parse_cluster_status(value) == expect[0]
    if isinstance(value, StatusCode):
        assert parse_cluster_status(value) == expect[0]


TASK_SPELLINGS: list[tuple[object, tuple[Status, ...]]] = [
    ("error", (Status.ERROR,)),
    ("PRE_FLIGHT", (Status.PRE_FLIGHT,)),
    (StatusCode.COMPLETE, (Status.COMPLETE,)),
    (Status.IN_PROGRESS, (Status.IN_PROGRESS,)),
    ({"error", "ERROR"}, (Status.ERROR,)),
    ([StatusCode.PRE_FLIGHT, "in progress"], (Status.PRE_FLIGHT, Status.IN_PROGRESS)),
]


@pytest.mark.parametrize(("value", "expect"), TASK_SPELLINGS, ids=repr)
def test_task_status_spellings(value: object, expect: tuple[Status, ...]) -> None:
    assert parse_statuses(value) == expect


BAD_TASK_STATUSES: list[tuple[object, str]] = [
    (["cancelled"], "applies only to clusters"),
    ("CANCELLED", "applies only to clusters"),
    (StatusCode.STOPPED, "applies only to clusters"),
    ("e", "unknown status 'e'"),
    (["error", "runing"], "unknown status 'runing'"),
    (5, "unknown status int"),
    (b"error", "unknown status bytes"),
    ([], "empty list"),
]


@pytest.mark.parametrize(("value", "needle"), BAD_TASK_STATUSES, ids=repr)
def test_bad_task_statuses(value: object, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as info:
        parse_statuses(value)
    assert "\n" not in str(info.value)
    assert "PRE FLIGHT, IN PROGRESS, COMPLETE, ERROR" in str(info.value)  # what is valid


async def test_status_filters_through_the_client(
    mc: msgcluster.Client, queue_url: str, cluster_layout: int
) -> None:
    running = await mc.create_message_cluster(queue_url, [{"n": 1}, {"n": 2}])
    cancelled = await mc.create_message_cluster(queue_url, [{"n": 3}])
    await mc.cancel_message_cluster(cancelled)

    async def listed(status: Any) -> set[msgcluster.RecordKey]:
        return {c.key async for c in mc.list_clusters(status=status)}

    assert await listed(StatusCode.STOPPED) == {cancelled}
    assert await listed(StatusCode.IN_PROGRESS) == {running}
    assert await listed(Status.IN_PROGRESS) == {running}
    assert await listed(["cancelled", StatusCode.IN_PROGRESS]) == {running, cancelled}
    assert await listed(StatusCode.ERROR) == {cancelled}  # stored as ERROR, documented
    assert await listed("complete") == set()
    for one in ("pre flight", Status.PRE_FLIGHT, StatusCode.PRE_FLIGHT, ["PRE_FLIGHT"]):
        tasks = [t async for t in mc.cluster_tasks(running, one)]
        assert len(tasks) == 2, one
    assert [t async for t in mc.cluster_tasks(running, "error")] == []
    for bad, needle in (("cancelled", "only to clusters"), ("e", "unknown status 'e'")):
        with pytest.raises(ValidationError, match=needle):
            [t async for t in mc.cluster_tasks(running, bad)]
        with pytest.raises(ValidationError, match=needle):
            [t async for t in mc.cluster_tasks(running, [bad])]


async def test_cli_status_spelling_is_the_same_everywhere(
    local_aws: LocalAWS,
    mc: msgcluster.Client,
    names: dict[str, str],
    queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = await mc.create_message_cluster(queue_url, [{"n": 1}])
    cancelled = await mc.create_message_cluster(queue_url, [{"n": 2}])
    await mc.cancel_message_cluster(cancelled)
    cid = cancelled.pk.removeprefix("SQSMessage$")
    rid = running.pk.removeprefix("SQSMessage$")
    aws_env(monkeypatch, local_aws, AWS_ENDPOINT_URL=local_aws.endpoint_url)
    table = ("--table", names["table"])

    code, out, err = await run_cli(capsys, "cluster", "status", cid, *table)
    assert code == 0, err
    (status_line,) = [line for line in out.splitlines() if line.startswith("status:")]
    assert status_line.split() == ["status:", "CANCELLED"]
    code, out, err = await run_cli(capsys, "cluster", "ls", *table)
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(cid)]
    assert "CANCELLED" in row.split()
    # --status is repeatable (any of them), on the index and on a Scan.
    for scan in ((), ("--scan",)):
        code, out, err = await run_cli(
            capsys, "cluster", "ls", "--status", "cancelled", "--status", "in_progress", *table,
            "--json", *scan,
        )  # fmt: skip
        assert code == 0, err
        assert rid in out, scan
        assert cid in out, scan
        code, out, err = await run_cli(
            capsys, "cluster", "ls", "--status", "stopped", *table, "--json", *scan
        )
        assert code == 0, err
        assert cid in out, scan
        assert rid not in out, scan


# --------------------------------------------------------------------------- 3. values for AWS

CK = msgcluster.RecordKey("SQSMessage$00000000-0000-0000-0000-000000000000", "SQSMessage$cluster")
DLQ = "sqs://q-dlq"
# (id, Client method, positional arguments, keyword arguments, text of the error)
BAD_VALUES: list[tuple[str, str, tuple[Any, ...], dict[str, Any], str]] = [
    ("list page_size 0", "list_clusters", (), {"page_size": 0}, "page_size must be >= 1"),
    ("list page_size -1", "list_clusters", (), {"page_size": -1}, "page_size"),
    ("list page_size True", "list_clusters", (), {"page_size": True}, "an int >= 1"),
    ("list page_size str", "list_clusters", (), {"page_size": "10"}, "an int >= 1"),
    ("list page_size float", "list_clusters", (), {"page_size": 2.5}, "an int >= 1"),
    ("list started_after int", "list_clusters", (), {"started_after": 5}, "ISO 8601"),
    ("list started_after ''", "list_clusters", (), {"started_after": ""}, "ISO 8601"),
    ("list newest_first str", "list_clusters", (), {"newest_first": "no"}, "True or False"),
    ("list bad status", "list_clusters", (), {"status": "e"}, "unknown status 'e'"),
    ("list bare int status", "list_clusters", (), {"status": 400}, "unknown status int"),
    ("tasks page_size 0", "cluster_tasks", (CK,), {"page_size": 0}, "page_size"),
    ("tasks page_size True", "cluster_tasks", (CK,), {"page_size": True}, "an int >= 1"),
    ("tasks page_size str", "cluster_tasks", (CK,), {"page_size": "9"}, "an int >= 1"),
    ("tasks consistent_read", "cluster_tasks", (CK,), {"consistent_read": "y"}, "True or"),
    ("tasks cancelled", "cluster_tasks", (CK, ["cancelled"]), {}, "only to clusters"),
    ("tasks bare string", "cluster_tasks", (CK, "e"), {}, "unknown status 'e'"),
    ("provision visibility 1.5", "provision", (["q"],), {"visibility_timeout": 1.5}, "an int"),
    ("provision visibility -1", "provision", (["q"],), {"visibility_timeout": -1}, "0-43200"),
    ("provision visibility big", "provision", (["q"],), {"visibility_timeout": 43_201}, "0-43200"),
    ("provision visibility True", "provision", (["q"],), {"visibility_timeout": True}, "an int"),
    ("provision receives True", "provision", (["q"],), {"max_receive_count": True}, "an int"),
    ("provision receives str", "provision", (["q"],), {"max_receive_count": "5"}, "an int"),
    ("provision receives 0", "provision", (["q"],), {"max_receive_count": 0}, "1-1000"),
    ("provision receives 1001", "provision", (["q"],), {"max_receive_count": 1001}, "1-1000"),
    ("provision dry_run str", "provision_report", (["q"],), {"dry_run": "no"}, "dry_run"),
    ("reconcile limit -1", "reconcile_dead_letters", (DLQ,), {"limit": -1}, "limit must be >= 1"),
    ("reconcile limit 0", "reconcile_dead_letters", (DLQ,), {"limit": 0}, "limit must be >= 1"),
    ("reconcile limit str", "reconcile_dead_letters", (DLQ,), {"limit": "5"}, "an int >= 1"),
    ("reconcile limit True", "reconcile_dead_letters", (DLQ,), {"limit": True}, "an int >= 1"),
    ("reconcile visibility", "reconcile_dead_letters", (DLQ,), {"visibility_timeout": 1.5}, "int"),
    ("reconcile visibility big", "reconcile_dead_letters", (DLQ,), {"visibility_timeout": 99_999},
     "0-43200"),
]  # fmt: skip


async def _call(result: Any) -> None:
    """Await a coroutine, or read an async iterator to its end."""
    if hasattr(result, "__aiter__"):
        [item async for item in result]
    else:
        await result


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "needle"),
    [c[1:] for c in BAD_VALUES],
    ids=[c[0] for c in BAD_VALUES],
)
async def test_values_checked_before_any_request(
    local_aws: LocalAWS,
    names: dict[str, str],
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    needle: str,
) -> None:
    """ValidationError at once: the Client points at a dead endpoint, so any
    request would fail with AwsConnectionError instead."""
    async with msgcluster.Client(
        table=names["table"], endpoint_url=DEAD, region=local_aws.region,
        aws_access_key_id="a", aws_secret_access_key="b",
    ) as mc:  # fmt: skip
        with anyio.fail_after(2), pytest.raises(ValidationError, match=needle) as info:
            await _call(getattr(mc, method)(*args, **kwargs))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- 4. CLI arguments

BAD_ARGS: list[tuple[str, list[str], str]] = [
    ("queue table too short", ["provision", "--dynamodb-queue-table", "ab"], "3-255"),
    ("queue table bad char", ["provision", "--dynamodb-queue-table", "my table"], "3-255"),
    ("queue table too long", ["provision", "--dynamodb-queue-table", "t" * 256], "3-255"),
    ("iam queue table", ["iam-policy", "--dynamodb-queue-table", "a/b"], "3-255"),
    ("iam queue bad name", ["iam-policy", "--queue", "bad name!"], "invalid queue name"),
    ("iam queue too long", ["iam-policy", "--queue", "q" * 81], "1-80"),
    ("iam queue fifo too long", ["iam-policy", "--queue", "q" * 76 + ".fifo"], "1-80"),
    ("iam queue dots", ["iam-policy", "--queue", "a.b"], "invalid queue name"),
    ("iam queue empty", ["iam-policy", "--queue", ""], "invalid queue name"),
    ("iam queue URL bad name", ["iam-policy", "--queue", "sqs://bad$name"], "invalid queue name"),
    ("local port too big", ["local", "--port", "99999"], "0-65535"),
    ("local port negative", ["local", "--port", "-1"], "0-65535"),
    ("local port not a number", ["local", "--port", "http"], "0-65535"),
    ("ls page size 0", ["cluster", "ls", "--page-size", "0"], "positive"),
    ("ls status cancelled typo", ["cluster", "ls", "--status", "cancel"], "CANCELLED"),
]


@pytest.mark.parametrize(
    ("argv", "needle"), [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS]
)
def test_bad_cli_arguments_are_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, needle)


GOOD_QUEUES = [
    "jobs",
    "jobs.fifo",
    "a" * 80,
    "a" * 75 + ".fifo",
    "Jobs_1-x",
    "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
    "sqs://jobs?region=eu-west-1",
]


@pytest.mark.parametrize("queue", GOOD_QUEUES)
def test_good_iam_queue_names(queue: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iam-policy", "--queue", queue, "--dynamodb-queue-table", "q.t-1_x"]) == 0
    assert "MsgclusterQueues" in capsys.readouterr().out


# --------------------------------------------------------------------------- 5. AWS config files


async def test_a_missing_profile_says_what_to_do() -> None:
    with pytest.raises(ConfigurationError) as info:
        async with msgcluster.Client(profile="nosuchprofile-9"):
            pass
    text = str(info.value)
    for needle in ("nosuchprofile-9", "AWS_PROFILE", "profile=", "credentials"):
        assert needle in text, text
    assert "\n" not in text


@pytest.mark.parametrize("variable", ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"])
async def test_a_malformed_config_file_is_a_configuration_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
) -> None:
    bad = tmp_path / "config"
    bad.write_text(f"no section header\naws_secret_access_key = {SECRET}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(bad))
    with pytest.raises(ConfigurationError, match="could not be parsed") as info:
        async with msgcluster.Client(endpoint_url=DEAD) as mc:
            await mc.get_queue_url("jobs")
    assert "K7MDENG" not in str(info.value)
    code, out, err = await run_cli(capsys, "--endpoint-url", DEAD, "cluster", "ls")
    assert code == 2
    assert_one_line_error(err, "could not be parsed", str(bad))
    assert "K7MDENG" not in out + err
