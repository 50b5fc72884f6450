"""The ``msgcluster`` command, run as a subprocess against the session's moto server.

Every command is run at least once as ``python -m msgcluster.cli``; independent
runs go concurrently (each process costs ~1 s of interpreter and botocore
start-up). Usage errors that need no AWS are also checked in-process with
``main(argv)``, which is cheap.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import queue_depth, receive_all

import msgcluster
from msgcluster.cli import main
from msgcluster.cli._iam import (
    OPERATIONS,
    QUEUE_TABLE_OPERATIONS,
    TRANSACTION_ITEMS,
    build_policy,
)
from msgcluster.local import LocalAWS
from msgcluster.queues import open_queue

SRC = Path(__file__).resolve().parent.parent / "src" / "msgcluster"
HAVE_DYNAMODB = importlib.util.find_spec("msgcluster.queues._dynamodb") is not None
needs_dynamodb = pytest.mark.skipif(
    not HAVE_DYNAMODB, reason="the dynamodb:// backend (msgcluster.queues._dynamodb) is absent"
)
ANSI = re.compile(r"\x1b\[")
# Subprocesses at once: start-up is CPU-bound and moto shares the cores.
PARALLEL = anyio.CapacityLimiter(3)


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Run:
    args: list[str]
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        """stdout as exactly one JSON document."""
        return json.loads(self.out)

    def one_line_error(self, *needles: str) -> str:
        assert self.err.startswith("msgcluster: error: "), self.err
        assert self.err.count("\n") == 1, self.err
        assert "Traceback" not in self.err, self.err
        for needle in needles:
            assert needle in self.err, (needle, self.err)
        return self.err


@dataclass
class Call:
    args: list[str]
    expect: int = 0
    env: dict[str, str] = field(default_factory=dict)


# What `redrive --json` adds when no dead letter is a cluster task.
EMPTY_CLUSTERS: dict[str, Any] = {"cluster_tasks_left": 0, "clusters": []}


def cli_env(aws: LocalAWS, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MSGCLUSTER_")) and k not in ("TTY_COMPATIBLE", "FORCE_COLOR")
    }
    env |= {
        "AWS_ACCESS_KEY_ID": aws.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": aws.aws_secret_access_key,
        "AWS_REGION": aws.region,
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    return env | (extra or {})


async def cli(aws: LocalAWS, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Run:
    """``msgcluster --endpoint-url <moto> <args>``; asserts the exit code."""
    argv = [sys.executable, "-m", "msgcluster.cli", "--endpoint-url", aws.endpoint_url, *args]
    async with PARALLEL:
        done = await anyio.run_process(argv, env=cli_env(aws, env), check=False)
    run = Run(list(args), done.returncode, done.stdout.decode(), done.stderr.decode())
    assert run.code == expect, (args, run.code, run.out, run.err)
    return run


async def cli_many(aws: LocalAWS, *calls: Call) -> list[Run]:
    """Independent runs, concurrently; results in call order."""
    runs: list[Run | None] = [None] * len(calls)

    async def one(index: int, call: Call) -> None:
        runs[index] = await cli(aws, *call.args, expect=call.expect, env=call.env)

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(one, index, call)
    return [run for run in runs if run is not None]


# --------------------------------------------------------------------------- sqs://


async def test_sqs_queue_commands(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str], queue_url: str
) -> None:
    uri = f"sqs://{names['queue']}"
    sent = (await cli(local_aws, "enqueue-test", uri, "-n", "12", "--json")).json
    assert sent["sent"] == 12
    assert len(set(sent["ids"])) == 12
    qstat, dlq = await cli_many(
        local_aws, Call(["qstat", uri, "--json"]), Call(["dlq", queue_url, "--json"])
    )
    assert qstat.json | {"oldest_age_seconds": None} == {
        "queue": uri,
        "name": names["queue"],
        "visible": 12,
        "in_flight": 0,
        "delayed": 0,
        "dead_letters": 0,
        "oldest_age_seconds": None,
        "fifo": False,
    }
    assert (dlq.json["name"], dlq.json["visible"]) == (f"{names['queue']}-dlq", 0)

    peek = (await cli(local_aws, "receive", uri, "-n", "3", "--json")).json
    assert (peek["count"], peek["acked"]) == (3, False)
    assert all(json.loads(m["body"])["test"] in range(12) for m in peek["messages"])
    # Not deleted, and visible again at once (not hidden for the visibility timeout).
    counts = await mc.sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert counts["Attributes"]["ApproximateNumberOfMessages"] == "12"

    acked = await cli(local_aws, "receive", uri, "-n", "2", "--ack")
    assert len(acked.out.strip().splitlines()) == 3  # header + 2 rows, plain text
    assert not ANSI.search(acked.out)
    assert "deleted (--ack)" in acked.err
    assert await queue_depth(mc, queue_url) == 10

    dlq_url = await mc.get_queue_url(f"{names['queue']}-dlq")
    for n in range(3):
        await mc.sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=f"dead {n}",
            MessageAttributes={"k": {"DataType": "String", "StringValue": str(n)}},
        )
    moved = (await cli(local_aws, "redrive", uri, "--all", "--json")).json
    assert moved == {**EMPTY_CLUSTERS, "queue": uri, "id": None, "redriven": 3}
    assert (await queue_depth(mc, queue_url), await queue_depth(mc, dlq_url)) == (13, 0)

    # A tracked message in the DLQ with its record not final, as a consumer
    # dying on the message's last receive leaves it.
    key = await mc.send_message(dlq_url, {"tracked": True})
    reconciled = (
        await cli(local_aws, "dlq", uri, "--reconcile", "--table", names["table"], "--json")
    ).json
    assert (reconciled["seen"], reconciled["recorded"]) == (1, 1)
    record = await mc.get_message_record(key, consistent_read=True)
    assert record.status is msgcluster.Status.ERROR

    await mc.sqs.send_message(QueueUrl=dlq_url, MessageBody="dead again")
    purged, purged_dlq = await cli_many(
        local_aws, Call(["purge", uri, "--json"]), Call(["purge", uri, "--dlq", "--json"])
    )
    assert purged.json == {"queue": uri, "dead_letters": False, "purged": 13, "approximate": True}
    assert (purged_dlq.json["dead_letters"], purged_dlq.json["purged"]) == (True, 2)
    assert (await queue_depth(mc, queue_url), await queue_depth(mc, dlq_url)) == (0, 0)


async def test_errors_are_one_line_with_exit_codes(
    local_aws: LocalAWS, names: dict[str, str], queue_url: str
) -> None:
    runs = await cli_many(
        local_aws,
        Call(["qstat", "jobs"], expect=2),
        Call(["qstat", "sqss://jobs"], expect=2),
        Call(["get", f"sqs://{names['queue']}", "some-id"], expect=2),
        Call(["qstat", "sqs://no-such-queue-here", "--json"], expect=3),
        Call(["receive", queue_url, "-n", "0"], expect=2),
        Call(["qstat", "memory://jobs"], expect=2),
    )
    bad_uri, scheme, by_id, missing, bad_arg, memory = runs
    bad_uri.one_line_error("not a queue URI")
    scheme.one_line_error("no queue backend for sqss://", "did you mean sqs://")
    by_id.one_line_error("`get` is not supported by sqs://", "use dynamodb://")
    missing.one_line_error("does not exist")
    assert missing.out == ""
    bad_arg.one_line_error("--count", "positive integer")
    memory.one_line_error("not supported by memory://")


@pytest.mark.parametrize(
    ("argv", "expect", "needle"),
    [
        (["ls", "sqs://jobs"], 2, "SQS cannot list messages"),
        (["get", "sqs://jobs", "x"], 2, "SQS cannot address a message by id"),
        (["delete", "sqs://jobs", "x"], 2, "`delete` is not supported by sqs://"),
        (["fail", "sqs://jobs", "x"], 2, "`fail` is not supported by sqs://"),
        (["invalid", "sqs://jobs", "x"], 2, "`invalid` is not supported by sqs://"),
        (["reset", "sqs://jobs", "x"], 2, "`reset` is not supported by sqs://"),
        (["redrive", "sqs://jobs", "x"], 2, "`redrive <id>` is not supported by sqs://"),
        (
            ["get", "https://sqs.us-east-1.amazonaws.com/123456789012/jobs", "x"],
            2,
            "not supported by sqs://",
        ),
        (["redrive", "sqs://jobs"], 2, "a message id or --all"),
        (["redrive", "sqs://jobs", "x", "--all"], 2, "a message id or --all"),
        (["cluster"], 2, "required"),
        (["nope"], 2, "invalid choice"),
        (["qstat", "sqs://jobs", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["cluster", "watch", "c", "--interval", "-1"], 2, "seconds >= 0"),
        (["cluster", "ls", "--status", "done"], 2, "unknown status 'done'"),
        (["iam-policy", "--account", "12"], 2, "12-digit"),
        (["qstat", "sqs://user:secret@jobs"], 2, "never carry credentials"),
    ],
)
def test_usage_errors_in_process(
    argv: list[str], expect: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == expect
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("msgcluster: error: ")
    assert captured.err.count("\n") == 1
    assert needle in captured.err
    assert "secret" not in captured.err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qstat", "sqs://jobs?regoin=1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("msgcluster: error: unknown query parameter 'regoin'")


def test_queue_options_region_and_endpoint() -> None:
    import argparse

    from msgcluster._settings import Settings
    from msgcluster.cli._common import Invocation
    from msgcluster.cli._opening import queue_options
    from msgcluster.cli._render import Output
    from msgcluster.queues._uri import parse_queue_uri

    settings = Settings.resolve(region="us-west-2", endpoint_url="http://127.0.0.1:1")
    inv = Invocation(args=argparse.Namespace(), settings=settings, out=Output(json_mode=True))

    def options(uri: str) -> dict[str, Any]:
        return queue_options(parse_queue_uri(uri), inv)

    local = {"endpoint": "http://127.0.0.1:1", "region": "us-west-2"}
    assert options("sqs://jobs") == local
    assert options("dynamodb://queues?queue=jobs") == local
    # An AWS queue URL names its region; parameters in the URI win over flags.
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"
    assert options(url)["region"] == "eu-west-1"
    assert options("sqs://jobs?region=ap-south-1&endpoint=http://x:2") == {}
    assert options("memory://jobs") == {}


def test_help_version_and_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("msgcluster ")
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="msgcluster")
    assert script.value == "msgcluster.cli:main"


# ---------------------------------------------------------------------- dynamodb:// (QueueAdmin)


@needs_dynamodb
async def test_dynamodb_admin_commands(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str]
) -> None:
    from msgcluster.queues._dynamodb import provision_dynamodb_queue_table

    table = f"{names['table']}-q"
    await provision_dynamodb_queue_table(mc.dynamodb, table)
    uri = f"dynamodb://{table}?queue=jobs&max_receives=3"
    async with open_queue(uri, client=mc.dynamodb) as queue:
        results = await queue.send([f"body {n}" for n in range(6)])
        ids = [r.id for r in results]
        assert all(ids)
        m0, m1, m2, m3, m4, m5 = (str(i) for i in ids)

        # Reads: counts, a paginated listing of everything, one message, a missing one.
        qstat, listing, got, text, missing = await cli_many(
            local_aws,
            Call(["qstat", uri, "--json"]),
            Call(["ls", uri, "--page-size", "2", "--json"]),
            Call(["get", uri, m0, "--json"]),
            Call(["ls", uri, "--limit", "4"]),
            Call(["get", uri, "no-such-id"], expect=3),
        )
        assert (qstat.json["visible"], qstat.json["in_flight"], qstat.json["dead_letters"]) == (
            6,
            0,
            0,
        )
        assert listing.json["count"] == 6
        assert sorted(m["id"] for m in listing.json["messages"]) == sorted([m0, m1, m2, m3, m4, m5])
        message = got.json["message"]
        assert (message["id"], message["body"], message["state"]) == (m0, "body 0", "ready")
        assert len(text.out.strip().splitlines()) == 5
        assert "4 message(s)" in text.err
        missing.one_line_error("no message no-such-id")

        # Repairs by id, each on its own message; a missing id is exit code 3.
        await queue.fail_message(m4)
        runs = await cli_many(
            local_aws,
            Call(["delete", uri, m1, "--json"]),
            Call(["fail", uri, m2, "--json"]),
            Call(["invalid", uri, m3, "--reason", "bad input", "--json"]),
            Call(["reset", uri, m4, "--json"]),
            Call(["delete", uri, "no-such-id", "--json"], expect=3),
        )
        assert [r.json["action"] for r in runs[:4]] == [
            "deleted",
            "failed",
            "dead_lettered",
            "reset",
        ]
        assert runs[4].out == ""
        assert await queue.get_message(m1) is None
        failed, dead, reset = [await queue.get_message(i) for i in (m2, m3, m4)]
        assert failed is not None
        assert failed.receive_count == 1
        assert dead is not None
        assert dead.state == "dead_letter"
        assert dead.dead_letter_reason is not None
        assert "bad input" in dead.dead_letter_reason
        assert reset is not None
        assert (reset.state, reset.receive_count) == ("ready", 0)

        dlq, dead_letters, received = await cli_many(
            local_aws,
            Call(["dlq", uri, "--json"]),
            Call(["ls", uri, "--dlq", "--json"]),
            Call(["receive", uri, "-n", "2", "--json"]),
        )
        assert dlq.json["visible"] == 1
        assert [m["id"] for m in dead_letters.json["messages"]] == [m3]
        assert received.json["count"] == 2
        assert (await queue.stats()).visible == 4  # received, then visible again
        one = (await cli(local_aws, "redrive", uri, m3, "--json")).json
        assert one == {**EMPTY_CLUSTERS, "queue": uri, "id": m3, "redriven": 1}
        (await cli(local_aws, "redrive", uri, m3, expect=3)).one_line_error("no dead letter")

        await queue.dead_letter_message(m0)
        await queue.dead_letter_message(m5)
        everything = (await cli(local_aws, "redrive", uri, "--all", "--json")).json
        assert everything["redriven"] == 2
        await queue.dead_letter_message(m5)
        purged, purged_dlq = await cli_many(
            local_aws, Call(["purge", uri, "--json"]), Call(["purge", uri, "--dlq", "--json"])
        )
        assert (purged.json["purged"], purged.json["approximate"]) == (4, False)
        assert purged_dlq.json["purged"] == 1
        assert (await queue.stats()).visible == 0
        assert [m async for m in queue.list_messages(dead_letters=True)] == []


# --------------------------------------------------------------------------- clusters


async def consume_tasks(mc: msgcluster.Client, url: str, count: int, *, fail: int = 0) -> None:
    """Receive ``count`` tasks; the first ``fail`` fail for good, the rest complete."""
    messages = await receive_all(mc, url, count)
    records = [mc.read_sqs_record(m) for m in messages]
    for record in records[:fail]:
        await mc.mark_failed(record, RuntimeError("boom"), final=True)
    await mc.mark_complete_batch(records[fail:])
    await mc.sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ],
    )


async def test_cluster_commands(
    local_aws: LocalAWS, mc: msgcluster.Client, names: dict[str, str], queue_url: str
) -> None:
    table = ["--table", names["table"], "--bucket", names["bucket"]]
    key = await mc.create_message_cluster(queue_url, [{"n": n} for n in range(3)], meta={"a": 1})
    cid = key.pk.removeprefix("SQSMessage$")

    status, listing, timeout, missing = await cli_many(
        local_aws,
        Call(["cluster", "status", cid, *table, "--json"]),
        Call(["cluster", "ls", *table, "--json"]),
        Call(
            ["cluster", "watch", cid, "--interval", "0.1", "--timeout", "0.3", *table, "--json"], 5
        ),
        Call(["cluster", "status", "no-such-cluster", *table], expect=3),
    )
    doc = status.json
    assert (doc["id"], doc["status"], doc["total"], doc["in_progress"]) == (
        cid,
        "IN PROGRESS",
        3,
        3,
    )
    assert doc["meta"] == {"a": 1}
    assert doc["callback_status"] is None
    assert [c["id"] for c in listing.json["clusters"]] == [cid]
    assert (listing.json["count"], listing.json["source"]) == (1, "index")
    scanned = (await cli(local_aws, "cluster", "ls", "--scan", *table, "--json")).json
    assert [c["id"] for c in scanned["clusters"]] == [cid]
    assert scanned["cost"]["scanned_items"] >= 1
    assert timeout.json["outcome"] == "timeout"
    missing.one_line_error("no cluster no-such-cluster")

    await consume_tasks(mc, queue_url, 3, fail=1)
    other = await mc.create_message_cluster(queue_url, [{"n": 9}])
    errored, cancelled = await cli_many(
        local_aws,
        Call(["cluster", "watch", f"SQSMessage${cid}", *table, "--json"], expect=4),
        Call(["cluster", "cancel", other.pk, *table, "--json"]),
    )
    assert (errored.json["outcome"], errored.json["failed"], errored.json["completed"]) == (
        "error",
        1,
        2,
    )
    assert cancelled.json["cancelled"]
    assert cancelled.json["status_code"] == 500

    redriven = (await cli(local_aws, "cluster", "redrive", cid, *table, "--json")).json
    assert redriven == {"id": cid, "redriven": 1}
    await consume_tasks(mc, queue_url, 2)  # the redriven task, and the cancelled cluster's
    rich_env = {"TTY_COMPATIBLE": "1"}
    watched, refused, stopped = await cli_many(
        local_aws,
        Call(["cluster", "watch", cid, "--interval", "0.1", *table], env=rich_env),
        Call(["cluster", "cancel", cid, *table], expect=1),
        Call(["cluster", "ls", "--status", "error", "--no-live", *table], env=rich_env),
    )
    assert ANSI.search(watched.out)
    assert f"cluster {cid}: complete (3/3 complete" in watched.out
    refused.one_line_error(f"cluster {cid} is already COMPLETE")
    assert other.pk.removeprefix("SQSMessage$") in stopped.out
    assert "CANCELLED" in stopped.out
    assert cid not in stopped.out


async def test_text_output_without_rich(local_aws: LocalAWS, mc: msgcluster.Client) -> None:
    """rich missing: text output still works, plain, even on a 'terminal'."""
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from msgcluster.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    table = mc.settings.table
    argv = [sys.executable, "-c", code, "--endpoint-url", local_aws.endpoint_url, "cluster", "ls"]
    env = cli_env(local_aws, {"TTY_COMPATIBLE": "1", "MSGCLUSTER_TABLE": table})
    done = await anyio.run_process(argv, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [
        "ID",
        "STATUS",
        "TOTAL",
        "COMPLETED",
        "FAILED",
        "STARTED",
        "CALLBACK",
    ]
    assert "0 cluster(s)" in done.stderr.decode()


# --------------------------------------------------------------------------- setup and local


async def test_provision_and_iam_policy(local_aws: LocalAWS, names: dict[str, str]) -> None:
    queue_table = ["--dynamodb-queue-table", f"{names['table']}-q"] if HAVE_DYNAMODB else []
    provision = [
        "provision",
        "--table",
        names["table"],
        "--bucket",
        names["bucket"],
        "--queue",
        names["queue"],
        "--queue",
        names["fifo"],
        "--max-receive-count",
        "2",
        *queue_table,
        "--json",
    ]
    policy = [
        "iam-policy",
        "--table",
        "jobs-table",
        "--bucket",
        "jobs-bucket",
        "--queue",
        "jobs",
        "--queue",
        "urgent.fifo",
        "--region",
        "eu-west-1",
        "--account",
        "123456789012",
    ]
    provisioned, printed, bare = await cli_many(
        local_aws, Call(provision), Call([*policy, "--json"]), Call(["iam-policy"])
    )
    doc = provisioned.json
    assert (doc["table"], doc["bucket"]) == (names["table"], names["bucket"])
    assert sorted(doc["queues"]) == sorted([names["queue"], names["fifo"]])
    assert doc["queues"][names["queue"]]["dlq"] == f"{names['queue']}-dlq"
    async with msgcluster.Client(
        table=names["table"], bucket=names["bucket"], **local_aws.settings()
    ) as mc:
        url = doc["queues"][names["fifo"]]["url"]
        attributes = await mc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        redrive = json.loads(attributes["Attributes"]["RedrivePolicy"])
        assert redrive["maxReceiveCount"] == 2
        assert redrive["deadLetterTargetArn"].endswith(f"{names['fifo'][:-5]}-dlq.fifo")
        await mc.dynamodb.describe_table(TableName=names["table"])
        await mc.s3.head_bucket(Bucket=names["bucket"])
        if queue_table:
            await mc.dynamodb.describe_table(TableName=f"{names['table']}-q")

    statements = {s["Sid"]: s for s in printed.json["Statement"]}
    table_arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/jobs-table"
    assert statements["MsgclusterTable"]["Resource"] == [table_arn, f"{table_arn}/index/*"]
    assert "dynamodb:CreateTable" not in statements["MsgclusterTable"]["Action"]
    assert statements["MsgclusterQueues"]["Resource"] == [
        f"arn:aws:sqs:eu-west-1:123456789012:{q}"
        for q in ("jobs", "jobs-dlq", "urgent.fifo", "urgent-dlq.fifo")
    ]
    assert statements["MsgclusterObjects"]["Resource"] == ["arn:aws:s3:::jobs-bucket/SQSMessage$*"]
    assert statements["MsgclusterBucket"]["Action"] == ["s3:ListBucket"]
    assert printed.out.count("\n") == 1  # --json: compact, one document
    # Without names: the default table, wildcards, and notes about what is left out.
    assert json.loads(bare.out)["Statement"][0]["Resource"][0] == (
        f"arn:aws:dynamodb:{local_aws.region}:*:table/msgcluster"
    )
    assert "no SQS statement" in bare.err
    assert "no S3 statements" in bare.err


TRANSACTION_ITEM = re.compile(r'\{\s*"(Put|Update|Delete|ConditionCheck)"\s*:')


def aws_calls(paths: list[Path], *, by_name: bool = False) -> set[tuple[str, str]]:
    """(service, operation) of every SQS, DynamoDB and S3 call in the sources;
    ``by_name``: also operations named as strings (``getattr(client, "query")``)."""
    from botocore import xform_name
    from botocore.session import get_session

    session = get_session()
    texts = [path.read_text() for path in paths]
    used: set[tuple[str, str]] = set()
    for service in OPERATIONS:
        for operation in session.get_service_model(service).operation_names:
            name = xform_name(operation)
            pattern = rf"\.{name}\(" + (rf'|"{name}"' if by_name else "")
            if any(re.search(pattern, text) for text in texts):
                used.add((service, operation))
    for text in texts:
        used.update(("transaction", kind) for kind in TRANSACTION_ITEM.findall(text))
    return used


def test_iam_policy_covers_every_aws_call_in_the_code() -> None:
    """Every SQS, DynamoDB and S3 operation the code calls must be listed (and so
    be in the policy), transaction item kinds included."""
    paths = [
        path
        for path in SRC.rglob("*.py")
        # The embedded local AWS (moto and its patches) makes no AWS calls; the
        # dynamodb:// backend has its own table.
        if "local" not in path.relative_to(SRC).parts[:-1] and not path.name.startswith("_dynamodb")
    ]
    used = aws_calls(paths)
    assert ("dynamodb", "TransactWriteItems") in used
    assert ("sqs", "PurgeQueue") in used
    policy = build_policy(table="t", bucket="b", queues=["q"], provision=True, cli=True)
    granted = {action for s in policy["Statement"] for action in s["Action"]}
    for service, operation in sorted(used):
        if service == "transaction":
            assert TRANSACTION_ITEMS[operation] in granted, operation
            continue
        assert operation in OPERATIONS[service], f"add {service} {operation} to _iam.OPERATIONS"
        assert OPERATIONS[service][operation].action in granted, (service, operation)


@needs_dynamodb
def test_iam_policy_covers_the_dynamodb_queue_backend() -> None:
    used = aws_calls(sorted((SRC / "queues").glob("_dynamodb*.py")), by_name=True)
    assert ("dynamodb", "Query") in used
    # Calls made through msgcluster._dynamo's batch helpers.
    for helper, operation in (("batch_get(", "BatchGetItem"), ("batch_write(", "BatchWriteItem")):
        if any(helper in p.read_text() for p in (SRC / "queues").glob("_dynamodb*.py")):
            used.add(("dynamodb", operation))
    policy = build_policy(
        table="t", bucket=None, queues=[], provision=True, queue_tables=["jobs-queues"]
    )
    (statement,) = [s for s in policy["Statement"] if s["Sid"].startswith("DynamodbQueues")]
    assert statement["Resource"][0].endswith(":table/jobs-queues")
    for service, operation in sorted(used):
        if service == "transaction":
            assert TRANSACTION_ITEMS[operation] in statement["Action"], operation
            continue
        assert service == "dynamodb", (service, operation)
        permission = QUEUE_TABLE_OPERATIONS.get(operation)
        assert permission is not None, f"add {operation} to _iam.QUEUE_TABLE_OPERATIONS"
        assert permission.action in statement["Action"], operation


def test_local_runs_until_sigint(local_aws: LocalAWS) -> None:
    argv = [sys.executable, "-m", "msgcluster.cli", "local", "--json"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(local_aws), text=True
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        url = started["endpoint_url"]
        assert started["env"]["AWS_ENDPOINT_URL"] == url
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/moto-api/")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the moto child went with it
        try:
            os.kill(started["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the local AWS server outlived `msgcluster local`")


async def test_demo(local_aws: LocalAWS) -> None:
    run = await cli(local_aws, "demo", "--json")
    assert run.json["ok"] is True
    assert "callback DONE (ran 1x" in run.err
    assert "done in" in run.err
