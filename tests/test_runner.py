"""The worker runner, ``msgcluster worker module:app``, as a subprocess.

The App is ``tests/tests_app.py``; the runner makes its Client from the
command line's options and the environment, against the local server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import receive_all
from test_cli import cli_env

import msgcluster
from msgcluster.local import LocalAWS

TESTS = Path(__file__).parent


def runner_argv(
    aws: LocalAWS, names: dict[str, str], *args: str, module: bool = False
) -> list[str]:
    entry = ["-m", "msgcluster.worker"] if module else ["-m", "msgcluster.cli", "worker"]
    table = ["--table", names["table"], "--bucket", names["bucket"]]
    return [sys.executable, *entry, "--endpoint-url", aws.endpoint_url, *table, *args]


def runner_env(aws: LocalAWS, out: Path, **extra: str) -> dict[str, str]:
    return cli_env(aws, {"TESTS_APP_OUT": str(out), **extra})


def handled(out: Path) -> list[int]:
    return [int(line) for line in out.read_text().split()] if out.exists() else []


@pytest.mark.parametrize("module", [False, True], ids=["msgcluster-worker", "python-m"])
async def test_burst_run_handles_every_message_and_exits_0(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    tmp_path: Path,
    module: bool,
) -> None:
    keys = (await mc.send_message_batch(queue_url, [{"n": n} for n in range(30)])).keys
    out = tmp_path / "handled"
    argv = runner_argv(
        local_aws, names, "tests_app:app", f"sqs://{names['queue']}", "--burst",
        "--wait-seconds", "1", module=module,
    )  # fmt: skip
    done = await anyio.run_process(argv, cwd=TESTS, env=runner_env(local_aws, out), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(handled(out)) == list(range(30))
    for record in await mc.get_message_records(keys, consistent_read=True):
        assert record is None  # completed: a message's record is deleted
    assert "stopped: 30 messages" in done.stderr.decode()


async def test_the_apps_default_queue_and_a_factory(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    tmp_path: Path,
) -> None:
    await mc.send_message_batch(queue_url, [{"n": n} for n in range(5)])
    out = tmp_path / "handled"
    env = runner_env(local_aws, out, TESTS_APP_QUEUE=f"sqs://{names['queue']}")
    argv = runner_argv(local_aws, names, "tests_app:make_app", "--burst", "--wait-seconds", "1")
    done = await anyio.run_process(argv, cwd=TESTS, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(handled(out)) == list(range(5))


async def test_sigterm_mid_run_drains_and_exits_0(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    tmp_path: Path,
) -> None:
    """Stopped mid-run: the handlers in flight finish and are acknowledged, nothing
    else is received, and what was not handled is still on the queue."""
    await mc.send_message_batch(queue_url, [{"n": n} for n in range(60)])
    out = tmp_path / "handled"
    env = runner_env(local_aws, out, TESTS_APP_DELAY="0.5")
    argv = runner_argv(
        local_aws, names, "tests_app:app", f"sqs://{names['queue']}", "--concurrency", "4",
        "--wait-seconds", "1", "--visibility-timeout", "60",
    )  # fmt: skip
    async with await anyio.open_process(
        argv, cwd=TESTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        try:
            with anyio.fail_after(30):
                while len(handled(out)) < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
        assert process.stderr is not None
        err = b"".join([chunk async for chunk in process.stderr])
    assert code == 0, err.decode()
    assert b"SIGTERM: stopping gracefully" in err
    done = handled(out)
    assert len(done) == len(set(done)) < 60
    # Every message not handled is visible again at once: none was held by the
    # stopped runner (its polls released what they got; no visibility left).
    rest = await receive_all(mc, queue_url, 60 - len(done))
    assert len(rest) == 60 - len(done)


async def test_check_probes_the_table_and_the_queues(
    local_aws: LocalAWS,
    names: dict[str, str],
    mc: msgcluster.Client,
    queue_url: str,
    tmp_path: Path,
) -> None:
    env = runner_env(local_aws, tmp_path / "out")
    ok = await anyio.run_process(
        runner_argv(local_aws, names, "tests_app:app", f"sqs://{names['queue']}", "--check"),
        cwd=TESTS, env=env, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()
    assert f"table {names['table']}: ok" in ok.stdout.decode()
    missing = await anyio.run_process(
        runner_argv(local_aws, names, "tests_app:app", "sqs://no-such-queue-x", "--check"),
        cwd=TESTS, env=env, check=False,
    )  # fmt: skip
    assert missing.returncode == 3, missing.stderr.decode()
    no_table = {**names, "table": "no-such-table-x"}
    gone = await anyio.run_process(
        runner_argv(local_aws, no_table, "tests_app:app", f"sqs://{names['queue']}", "--check"),
        cwd=TESTS, env=env, check=False,
    )  # fmt: skip
    assert gone.returncode == 3, gone.stderr.decode()
    assert "msgcluster provision" in gone.stderr.decode()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("tests_app", "expected module:attribute"),
        ("no_such_module_x:app", "no module named 'no_such_module_x'"),
        ("tests_app:nothing", "has no attribute 'nothing'"),
        ("tests_app:Job", "not a msgcluster.App"),
        ("tests_app:app", "no default queue"),
    ],
)
async def test_bad_app_or_no_queue_is_a_usage_error(
    local_aws: LocalAWS, names: dict[str, str], tmp_path: Path, spec: str, needle: str
) -> None:
    done = await anyio.run_process(
        runner_argv(local_aws, names, spec),
        cwd=TESTS, env=runner_env(local_aws, tmp_path / "out"), check=False,
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith("msgcluster: error: "), err
    assert needle in err, err
    assert "Traceback" not in err


async def test_the_worker_uses_the_apps_client(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """No queue_options: the Worker opens ``sqs://`` through the App's Client (its
    endpoint and credentials), even with other AWS settings in the environment."""
    seen: list[int] = []
    app = msgcluster.App(mc, queue=f"sqs://{names['queue']}")

    @app.handler(dict)
    async def handle(body: dict[str, Any]) -> None:
        seen.append(body["n"])

    await app.send({"n": 1})
    await app.send_batch([{"n": 2}, {"n": 3}])
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS")}
    os.environ["AWS_ENDPOINT_URL_SQS"] = "http://127.0.0.1:9"  # nothing listens there
    try:
        started = time.monotonic()
        stats = await msgcluster.Worker(app, app.queue or "", burst=True, wait_seconds=1).run()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert sorted(seen) == [1, 2, 3]
    assert stats.total == 3
    assert time.monotonic() - started < 20


async def test_app_send_checks_the_body_against_its_handlers(
    mc: msgcluster.Client, queue_url: str
) -> None:
    app = msgcluster.App(mc, queue=queue_url)

    @app.handler(int)
    async def handle(body: int) -> None: ...

    with pytest.raises(msgcluster.ValidationError, match="no handler for a str body"):
        await app.send("text")
    with pytest.raises(msgcluster.ConfigurationError, match="no Client"):
        await msgcluster.App(queue=queue_url).send(1)
    with pytest.raises(msgcluster.ConfigurationError, match="no default queue"):
        await msgcluster.App(mc).send(1)
    key = await app.create_cluster([1, 2, 3])
    assert (await mc.get_message_cluster(key)).total == 3
