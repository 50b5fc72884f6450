"""Malformed input across the public API: each gets a typed MsgclusterError
with a hint, nothing is lost, no worker dies, and no secret is ever echoed.

One table of inputs per entry point (settings, URIs, worker options, sends,
records and events, handler bodies, CLI arguments); a last test runs a whole
scenario with a distinctive fake secret and looks for it in every output and
log record (DEBUG included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest

import msgcluster
from msgcluster import App, ConfigurationError, MsgclusterError, QueueURIError, Worker
from msgcluster.cli import main as cli_main
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.local import LocalAWS
from msgcluster.queues import OutgoingMessage, open_queue

# Shaped like real credentials, so a leak is unmistakable.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET9999"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLETOKENxyz0123456789"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def assert_no_secret(text: str) -> None:
    for secret in (SECRET, TOKEN, "se/cret", "K7MDENG"):
        assert secret not in text, text


class Order(msgspec.Struct):
    order_id: int
    item: str


# --------------------------------------------------------------------------- settings

BAD_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("empty table", {"table": ""}),
    ("short table", {"table": "ab"}),
    ("long table", {"table": "t" * 256}),
    ("table with spaces", {"table": "my table"}),
    ("bucket with capitals", {"bucket": "My_Bucket"}),
    ("short bucket", {"bucket": "ab"}),
    ("endpoint not a URL", {"endpoint_url": "not a url"}),
    ("endpoint bad scheme", {"endpoint_url": "htp://localhost:4566"}),
    ("endpoint no host", {"endpoint_url": "http://"}),
    ("endpoint bad port", {"endpoint_url": "http://localhost:99999"}),
    ("endpoint port not a number", {"endpoint_url": "http://localhost:port"}),
    ("endpoint with query", {"endpoint_url": "http://localhost:4566/?x=1"}),
    ("endpoint with credentials", {"endpoint_url": f"https://{KEY_ID}:{SECRET}@sqs.aws"}),
    ("endpoint secret with slash", {"endpoint_url": f"https://{KEY_ID}:se/cret@sqs.aws"}),
    ("region with spaces", {"region": "us east 1"}),
    ("region with slash", {"region": "us-east-1/"}),
    ("max_meta_bytes negative", {"max_meta_bytes": -1}),
    ("max_meta_bytes zero", {"max_meta_bytes": 0}),
    ("max_receive_count zero", {"max_receive_count": 0}),
    ("max_receive_count over SQS", {"max_receive_count": 5000}),
    ("concurrency zero", {"concurrency": 0}),
    ("concurrency huge", {"concurrency": 1_000_000}),
    ("max_attempts zero", {"max_attempts": 0}),
    ("retention_days zero", {"retention_days": 0}),
    ("max_message_bytes over 1 MiB", {"max_message_bytes": 2_000_000}),
    ("max_message_bytes tiny", {"max_message_bytes": 10}),
    ("retry_mode unknown", {"retry_mode": "sometimes"}),
    ("concurrency not a number", {"concurrency": "many"}),
    ("endpoints unknown service", {"endpoints": {"sns": "http://localhost:4566"}}),
    ("endpoints bad URL", {"endpoints": {"sqs": "nowhere"}}),
    ("endpoints with credentials", {"endpoints": {"s3": f"http://u:{SECRET}@localhost"}}),
    ("key id without secret", {"aws_access_key_id": KEY_ID}),
    ("secret without key id", {"aws_secret_access_key": SECRET}),
]


@pytest.mark.parametrize("options", [c[1] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        msgcluster.Client(**options)
    text = str(info.value)
    assert "\n" not in text
    assert_no_secret(text)


def test_settings_never_show_secrets() -> None:
    client = msgcluster.Client(
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, aws_session_token=TOKEN
    )
    for text in (repr(client.settings), str(client.settings), repr(client)):
        assert_no_secret(text)
    assert "***" in repr(client.settings)


def test_per_service_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:1111")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://localhost:2222")
    settings = msgcluster.Client().settings
    assert settings.endpoint_for("sqs") == "http://localhost:2222"
    assert settings.endpoint_for("s3") == "http://localhost:1111"
    # An explicit endpoint_url wins over the environment; endpoints= over both.
    explicit = msgcluster.Client(
        endpoint_url="http://localhost:3333", endpoints={"s3": "http://localhost:4444"}
    ).settings
    assert explicit.endpoint_for("sqs") == "http://localhost:3333"
    assert explicit.endpoint_for("s3") == "http://localhost:4444"
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "htp://typo")
    with pytest.raises(ConfigurationError, match="AWS_ENDPOINT_URL_DYNAMODB"):
        msgcluster.Client()


async def test_env_endpoints_reach_each_service(
    local_aws: LocalAWS, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL_<SERVICE> alone (no endpoint_url) is honoured, and S3
    then uses path-style addressing (a local endpoint has no bucket DNS)."""
    for service in ("SQS", "S3", "DYNAMODB"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", local_aws.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    async with msgcluster.Client(
        table=names["table"],
        bucket=names["bucket"],
        region=local_aws.region,
        aws_access_key_id=local_aws.aws_access_key_id,
        aws_secret_access_key=local_aws.aws_secret_access_key,
    ) as mc:
        urls = await mc.provision([names["queue"]])
        key = await mc.send_message(urls[names["queue"]], "x" * 300_000)  # offloaded to S3
        assert (await mc.get_message_record(key)).status == msgcluster.Status.PRE_FLIGHT
        assert mc.s3.meta.config.s3["addressing_style"] == "path"


async def test_a_profile_that_does_not_exist() -> None:
    with pytest.raises(ConfigurationError, match="nosuchprofile"):
        async with msgcluster.Client(profile="nosuchprofile-9"):
            pass


@pytest.mark.parametrize("target", ["not a url", f"{KEY_ID}:{SECRET}", f"https://u:{SECRET}@h/1/q"])
async def test_bad_queue_targets_on_the_client(mc: msgcluster.Client, target: str) -> None:
    with pytest.raises((msgcluster.ValidationError, QueueURIError)) as info:
        await mc.send_message(target, "x")
    assert_no_secret(str(info.value))


async def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    async with msgcluster.Client(
        table="ttt", endpoint_url="http://127.0.0.1:9", aws_access_key_id="a",
        aws_secret_access_key="b",
    ) as mc:  # fmt: skip
        with anyio.fail_after(10):
            with pytest.raises(msgcluster.AwsConnectionError, match="check the endpoint"):
                await mc.get_queue_url("jobs")
    with anyio.fail_after(10):
        with pytest.raises(msgcluster.AwsConnectionError):
            await open_queue(
                "sqs://jobs", endpoint="http://127.0.0.1:9", region="us-east-1"
            ).__aenter__()


# --------------------------------------------------------------------------- queue URIs

BAD_URIS: list[tuple[str, object]] = [
    ("no scheme", "jobs"),
    ("not a string", 42),
    ("scheme only", "://jobs"),
    ("userinfo", f"sqs://{KEY_ID}:{SECRET}@jobs"),
    ("userinfo with slash", f"sqs://{KEY_ID}:se/cret@jobs"),
    ("userinfo in a queue URL", f"https://{KEY_ID}:se/cret@sqs.us-east-1.amazonaws.com/1/q"),
    ("user only", "sqs://someone@jobs"),
    ("secret parameter", f"sqs://jobs?aws_secret_access_key={SECRET}"),
    ("token parameter", f"sqs://jobs?session_token={TOKEN}"),
    ("password parameter", f"dynamodb://table1?queue=q&password={SECRET}"),
    ("endpoint with credentials", f"sqs://jobs?endpoint=https://u:{SECRET}@host"),
    ("fragment", f"sqs://jobs#{SECRET}"),
    ("repeated parameter", f"sqs://jobs?region=us-east-1&region={SECRET}"),
    ("malformed query", f"sqs://jobs?{SECRET}"),
    ("unknown scheme", "sqss://jobs"),
    ("bad sqs name", "sqs://bad name!"),
    ("bad integer", "memory://q?max_receives=lots"),
    ("out of range", "memory://q?visibility_timeout=99999999"),
    ("unknown parameter", f"memory://q?colour={SECRET}"),
    ("short table", "dynamodb://ab?queue=q"),
    ("endpoint not a URL", "sqs://jobs?endpoint=nowhere"),
]


@pytest.mark.parametrize("uri", [c[1] for c in BAD_URIS], ids=[c[0] for c in BAD_URIS])
async def test_bad_queue_uris(uri: Any) -> None:
    with pytest.raises(QueueURIError) as info:
        async with open_queue(uri):
            pass
    text = str(info.value)
    assert "\n" not in text
    assert_no_secret(text)


# --------------------------------------------------------------------------- worker options

BAD_WORKER: list[tuple[str, dict[str, Any]]] = [
    ("concurrency zero", {"concurrency": 0}),
    ("concurrency negative", {"concurrency": -1}),
    ("visibility negative", {"visibility_timeout": -1}),
    ("visibility over 12 h", {"visibility_timeout": 50_000}),
    ("wait over 20 s", {"wait_seconds": 30}),
    ("prefetch negative", {"prefetch": -1}),
    ("receivers zero", {"receivers": 0}),
    ("grace negative", {"grace_seconds": -5}),
    ("backoff not a number", {"backoff_base": "fast"}),
]


@pytest.mark.parametrize("options", [c[1] for c in BAD_WORKER], ids=[c[0] for c in BAD_WORKER])
def test_bad_worker_options(options: dict[str, Any]) -> None:
    app = App()

    @app.handler(Order)
    async def handle(order: Order) -> None: ...

    with pytest.raises(ConfigurationError):
        Worker(app, "memory://orders", **options)


def test_worker_refuses_an_app_without_handlers_and_uris_with_secrets() -> None:
    with pytest.raises(ConfigurationError, match="no handlers"):
        Worker(App(), "memory://orders")
    app = App()

    @app.handler(Order)
    async def handle(order: Order) -> None: ...

    with pytest.raises(QueueURIError) as info:
        Worker(app, f"sqs://{KEY_ID}:se/cret@orders")
    assert_no_secret(str(info.value))


# --------------------------------------------------------------------------- sends

BAD_SENDS: list[tuple[str, dict[str, Any], type[MsgclusterError]]] = [
    ("body not serializable", {"body": object()}, msgcluster.ValidationError),
    ("meta not serializable", {"body": "x", "meta": {"k": object()}}, msgcluster.ValidationError),
    ("meta too large", {"body": "x", "meta": "m" * 40_000}, msgcluster.MetaTooLargeError),
    ("empty attribute value", {"body": "x", "attributes": {"a": ""}}, msgcluster.ValidationError),
    ("reserved attribute", {"body": "x", "attributes": {"AWS.x": "1"}}, msgcluster.ValidationError),
    ("attribute bad name", {"body": "x", "attributes": {"a b": "1"}}, msgcluster.ValidationError),
    ("delay over 15 min", {"body": "x", "delay_seconds": 901}, msgcluster.ValidationError),
    ("group id on a standard queue", {"body": "x", "group_id": "g"}, msgcluster.ValidationError),
]


@pytest.mark.parametrize(
    ("call", "error"), [c[1:] for c in BAD_SENDS], ids=[c[0] for c in BAD_SENDS]
)
async def test_bad_sends_write_nothing(
    mc: msgcluster.Client, queue_url: str, call: dict[str, Any], error: type[MsgclusterError]
) -> None:
    body = call.pop("body")
    with pytest.raises(error):
        await mc.send_message(queue_url, body, **call)
    response = await mc.sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert response["Attributes"]["ApproximateNumberOfMessages"] == "0"


# --------------------------------------------------------------------------- records, events

GOOD = {"messageId": "good-1", "body": '{"order_id": 1, "item": "tea"}'}
BAD_RECORDS: list[tuple[str, object]] = [
    ("no body", {"messageId": "m"}),
    ("body not text", {"messageId": "m", "body": 17}),
    ("attributes not an object", {"messageId": "m", "body": "x", "attributes": 3}),
    ("lone surrogate, typed", {"messageId": "m", "body": '{"order_id": 1, "item": "\ud800"}'}),
    ("mis-keyed envelope", {"messageId": "m", "body": '{"type":"message","pk":"evil","rk":"x"}'}),
    ("wrong field type", {"messageId": "m", "body": '{"order_id": "one", "item": "tea"}'}),
    ("not JSON", {"messageId": "m", "body": "Test message."}),
]
# No message id: it cannot be named in batchItemFailures, so the whole event
# fails (and is redelivered whole): a typed error, nothing processed or lost.
UNNAMED_RECORDS: list[tuple[str, object]] = [
    ("not a mapping", "record"),
    ("no message id", {"body": "x"}),
    ("empty message id", {"messageId": "", "body": "x"}),
]


@pytest.mark.parametrize("record", [c[1] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
async def test_one_bad_record_fails_alone(mc: msgcluster.Client, record: dict[str, Any]) -> None:
    """Through safe_process_batch and the Lambda adapter: the good record is
    processed, the bad one reported by its id, nothing raised."""
    seen: list[Order] = []

    async def process(parsed: Any) -> None:
        seen.append(msgspec.json.decode(parsed["body"], type=Order))

    event = {"Records": [GOOD, record]}
    result = await mc.safe_process_batch(event, process)
    assert seen == [Order(1, "tea")]
    assert result["batchItemFailures"] == [{"itemIdentifier": "m"}]

    app = App()  # plain bodies: the adapter needs no client
    handled: list[Order] = []

    @app.handler(Order)
    async def handle(order: Order) -> None:
        handled.append(order)

    handler = lambda_handler(app)
    try:
        response = await anyio.to_thread.run_sync(handler, event, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert handled == [Order(1, "tea")]
    assert response["batchItemFailures"] == [{"itemIdentifier": "m"}]


@pytest.mark.parametrize(
    "record", [c[1] for c in UNNAMED_RECORDS], ids=[c[0] for c in UNNAMED_RECORDS]
)
async def test_a_record_without_an_id_fails_the_event(
    mc: msgcluster.Client, record: object
) -> None:
    seen: list[Any] = []

    async def process(parsed: Any) -> None:
        seen.append(parsed)

    with pytest.raises(msgcluster.MalformedEventError, match=r"Records\[1\]"):
        await mc.safe_process_batch({"Records": [GOOD, record]}, process)
    assert seen == []


async def test_events_that_are_not_sqs_events(mc: msgcluster.Client) -> None:
    for event in (None, [], {"Records": "x"}, {"Records": [1]}, {"records": []}):
        with pytest.raises(msgcluster.RecordError):
            await mc.safe_process_batch(event, _noop)


async def _noop(record: Any) -> None:
    return None


# --------------------------------------------------------------------------- handler bodies

POISON_BODIES: list[tuple[str, bytes]] = [
    ("not JSON", b"hello"),
    ("JSON array", b"[1, 2]"),
    ("missing field", b'{"order_id": 1}'),
    ("wrong type", b'{"order_id": "1", "item": "tea"}'),
    ("not UTF-8", b"\xff\xfe\x00"),
    ("mis-keyed envelope", b'{"type": "message", "pk": "evil", "rk": "x", "body": {}}'),
    ("truncated", b'{"order_id": 1, "item": "te'),
    ("null", b"null"),
]


async def test_poison_bodies_never_stop_the_worker() -> None:
    """Each poison body is dead-lettered alone; every good one is handled; the
    worker keeps running to the end of its burst."""
    app = App()
    handled: list[int] = []

    @app.handler(Order)
    async def handle(order: Order) -> None:
        handled.append(order.order_id)

    async with open_queue("memory://poison-run?max_receives=2") as queue:
        good = [OutgoingMessage(body=msgspec.json.encode(Order(i, "tea"))) for i in range(20)]
        bad = [OutgoingMessage(body=body) for _, body in POISON_BODIES]
        await queue.send([*good[:10], *bad, *good[10:]])
        stats = await Worker(app, queue, burst=True, wait_seconds=0.2, handle_signals=False).run()
        dead = []
        async with open_queue("memory://poison-run-dlq") as dlq:
            dead = await dlq.receive(max_messages=10, wait_seconds=0)
    assert sorted(handled) == list(range(20))
    assert len(dead) == len(POISON_BODIES)
    assert stats["dead_lettered"] == len(POISON_BODIES)


# --------------------------------------------------------------------------- CLI arguments

BAD_CLI: list[tuple[str, list[str]]] = [
    ("credentials in the queue URI", ["qstat", f"sqs://{KEY_ID}:se/cret@jobs"]),
    ("secret parameter", ["qstat", f"sqs://jobs?aws_secret_access_key={SECRET}"]),
    ("endpoint with credentials", ["--endpoint-url", f"http://u:{SECRET}@h", "qstat", "sqs://j"]),
    ("unknown status", ["cluster", "ls", "--status", "bogus"]),
    ("bad receive count", ["provision", "--max-receive-count", "0"]),
    ("unknown scheme", ["qstat", "sqss://jobs"]),
    ("bad region", ["--region", "us east", "qstat", "sqs://jobs"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in BAD_CLI], ids=[c[0] for c in BAD_CLI])
def test_bad_cli_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert_no_secret(out + err)


# --------------------------------------------------------------------------- the secret scenario


async def test_a_whole_scenario_never_shows_the_secret(
    local_aws: LocalAWS,
    names: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tracked messages, a cluster consumed by a worker, safe_process_batch,
    errors: with DEBUG logging everywhere, the secret key and session token
    are in no log record, no output and no error."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def collect(error: BaseException) -> None:
        texts.append(f"{error!s} {error!r}")

    async with msgcluster.Client(
        table=names["table"],
        bucket=names["bucket"],
        endpoint_url=local_aws.endpoint_url,
        region=local_aws.region,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        aws_session_token=TOKEN,
    ) as mc:
        texts.append(repr(mc.settings))
        urls = await mc.provision([names["queue"]], max_receive_count=2)
        url = urls[names["queue"]]
        await mc.send_message(url, {"order_id": 1, "item": "tea"}, meta={"k": "v"})
        await mc.send_message_batch(url, [{"order_id": i, "item": "x"} for i in range(5)])
        app = App(mc)
        handled: list[Any] = []

        @app.handler(dict)
        async def handle(body: Any) -> None:
            handled.append(body)

        cluster = await mc.create_message_cluster(url, [{"order_id": 9, "item": "y"}] * 4)
        await Worker(
            app, f"sqs://{names['queue']}", burst=True, wait_seconds=1, handle_signals=False,
            queue_options={"client": mc.sqs},
        ).run()  # fmt: skip
        assert len(handled) == 10
        assert (await mc.get_message_cluster(cluster)).completed == 4
        bad: list[Callable[[], Any]] = [
            lambda: mc.send_message(f"sqs://{KEY_ID}:se/cret@x", "b"),
            lambda: mc.send_message(url, "b", attributes={"x": ""}),
            lambda: mc.safe_process_batch({"Records": 3}, _noop),
        ]
        for call in bad:
            try:
                await call()
            except MsgclusterError as exc:
                collect(exc)
    for options in ({"endpoint_url": f"https://{KEY_ID}:se/cret@h"}, {"table": SECRET}):
        try:
            msgcluster.Client(**options)
        except MsgclusterError as exc:
            collect(exc)
    out, err = capsys.readouterr()
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert len(caplog.records) > 100  # DEBUG was really on (botocore logs every request)
    for text in [*texts, out, err, logged]:
        assert_no_secret(text)
