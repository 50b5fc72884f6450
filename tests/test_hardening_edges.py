"""More malformed input at the edges (an independent audit's findings): values
JSON cannot carry, bodies nested past the decoder, secrets in odd places of
URIs and endpoints, arguments of the wrong type. Each gets a typed one-line
MsgclusterError (or the caller's own exception, unwrapped), one bad message
fails alone, and no secret is echoed, in the message or its exception chain.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
from conftest import client_for

import msgcluster
from msgcluster import ConfigurationError, QueueURIError, ValidationError
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.local import LocalAWS
from msgcluster.queues import open_queue

SECRET = "hunter2pwXYZsecret"


def assert_clean(exc: BaseException) -> None:
    """One line, no secret, in the error and in everything a traceback prints."""
    assert isinstance(exc, msgcluster.MsgclusterError), type(exc)
    assert "\n" not in str(exc), str(exc)
    printed = "".join(traceback.format_exception(exc))
    assert SECRET not in printed, printed
    str(exc).encode()  # printable: no lone surrogate


class Order(msgspec.Struct):
    order_id: int


DEEP = '{"pk": "SQSMessage$x", "rk": "message", "body": ' + "[" * 100_000 + "]" * 100_000 + "}"


def lambda_record(message_id: str, body: str) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": "r-" + message_id,
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs",
    }


def good_and_bad(bad: dict[str, Any]) -> dict[str, Any]:
    good = [lambda_record(f"good-{i}", f'{{"order_id": {i}}}') for i in range(9)]
    return {"Records": [*good[:4], bad, *good[4:]]}


# --------------------------------------------------------------------------- bodies


async def test_a_body_nested_past_the_decoder_fails_alone(mc: msgcluster.Client) -> None:
    seen: list[int] = []

    def handle(record: Any) -> None:
        seen.append(record.body.order_id)

    event = good_and_bad(lambda_record("deep", DEEP))
    result = await mc.safe_process_batch(event, handle, body_type=Order)
    assert result == {"batchItemFailures": [{"itemIdentifier": "deep"}]}
    assert sorted(seen) == list(range(9))
    record = lambda_record("deep", DEEP)
    assert await mc.is_complete(record) is False  # not ours: a plain message
    with pytest.raises(msgcluster.BodyDecodeError) as info:
        mc.read_sqs_record(record, body_type=Order)
    assert_clean(info.value)


async def test_the_lambda_adapter_fails_a_deep_body_alone(
    local_aws: LocalAWS, names: dict[str, str]
) -> None:
    app = msgcluster.App(client=client_for(local_aws, names))
    seen: list[int] = []

    @app.handler(Order)
    async def handle(order: Order) -> None:
        seen.append(order.order_id)

    event = good_and_bad(lambda_record("deep", DEEP))
    result = await anyio.to_thread.run_sync(lambda_handler(app), event, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "deep"}]}
    assert sorted(seen) == list(range(9))


@pytest.mark.parametrize(
    "body",
    ['{"order_id": "\udcff"}', "\ud800"],
    ids=["surrogate in JSON", "lone surrogate"],
)
@pytest.mark.parametrize("body_type", [Order, msgspec.Raw], ids=["typed", "raw"])
async def test_a_body_with_a_lone_surrogate_is_poison(
    mc: msgcluster.Client, body: str, body_type: Any
) -> None:
    result = await mc.safe_process_batch(
        good_and_bad(lambda_record("bad", body)), lambda record: record.body, body_type=body_type
    )
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    with pytest.raises(msgcluster.BodyDecodeError):
        mc.read_sqs_record(lambda_record("bad", body), body_type=body_type)


async def test_an_odd_record_among_sqs_records_fails_alone(mc: msgcluster.Client) -> None:
    odd = lambda_record("odd", '{"order_id": 1}') | {"eventSource": 5}
    seen: list[str] = []
    result = await mc.safe_process_batch(good_and_bad(odd), lambda r: seen.append(r["messageId"]))
    assert result == {"batchItemFailures": [{"itemIdentifier": "odd"}]}
    assert len(seen) == 9


async def test_a_pointer_to_an_impossible_bucket_fails_alone(mc: msgcluster.Client) -> None:
    pointer = (
        '["software.amazon.payloadoffloading.PayloadS3Pointer", '
        '{"s3BucketName": "Not A Bucket!", "s3Key": "k"}]'
    )
    bad = lambda_record("ptr", pointer) | {
        "messageAttributes": {
            "ExtendedPayloadSize": {"dataType": "Number", "stringValue": "300000"}
        }
    }
    result = await mc.safe_process_batch(good_and_bad(bad), lambda record: None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "ptr"}]}


POINTER_SHAPED = (
    '["software.amazon.payloadoffloading.PayloadS3Pointer", '
    '{"s3BucketName": "uploads", "s3Key": "img/cat.png"}]'
)


async def test_a_pointer_shaped_body_without_the_size_attribute_is_a_body(
    local_aws: LocalAWS, names: dict[str, str], mc: msgcluster.Client, queue_url: str
) -> None:
    """The pointer's exact shape on a message that has attributes known and no
    size attribute (a Lambda record always lists its attributes; a queue
    message too) is another service's body, given to the handler as it is."""
    record = lambda_record("shaped", POINTER_SHAPED)
    assert mc.read_sqs_record(record, body_type=str).offloaded is False
    seen: list[str] = []
    result = await mc.safe_process_batch(
        {"Records": [record]}, lambda r: seen.append(r.body), body_type=str
    )
    assert result == {"batchItemFailures": []}

    def app_on(client: msgcluster.Client) -> msgcluster.App:
        app = msgcluster.App(client=client)

        @app.handler(str)
        async def handle(body: str) -> None:
            seen.append(body)

        return app

    handler = lambda_handler(app_on(client_for(local_aws, names)))
    try:
        answer = await anyio.to_thread.run_sync(handler, {"Records": [record]}, None)
    finally:
        await anyio.to_thread.run_sync(handler.close)
    assert answer == {"batchItemFailures": []}
    await mc.sqs.send_message(QueueUrl=queue_url, MessageBody=POINTER_SHAPED)
    await msgcluster.Worker(app_on(mc), queue_url, burst=True, wait_seconds=1).run()
    assert seen == [POINTER_SHAPED] * 3
    # A ReceiveMessage that did not ask for attributes cannot tell: the shape decides.
    receive_shaped = {"MessageId": "m", "ReceiptHandle": "r", "Body": POINTER_SHAPED}
    assert mc.read_sqs_record(receive_shaped).offloaded is True


def test_an_error_naming_a_surrogate_id_prints() -> None:
    error = msgcluster.BodyDecodeError("message \ud800: body is not JSON", message_id="\ud800")
    assert "\\ud800" in str(error)
    str(error).encode()


# --------------------------------------------------------------------------- sends


def _deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


def _cyclic() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


UNENCODABLE: list[tuple[str, Any]] = [
    ("NaN", float("nan")),
    ("infinity inside", {"x": [1, {"y": float("-inf")}]}),
    ("NaN in a Struct", msgspec.defstruct("S", [("x", float)])(float("nan"))),
    ("refers to itself", _cyclic()),
    ("an object", object()),
    ("lone surrogate", "\ud800"),
    ("10,000 levels deep", _deep(10_000)),
]


@pytest.mark.parametrize("value", [v for _, v in UNENCODABLE], ids=[n for n, _ in UNENCODABLE])
async def test_bodies_and_meta_json_cannot_carry_are_refused(
    mc: msgcluster.Client, queue_url: str, value: Any
) -> None:
    for call in (
        lambda: mc.send_message(queue_url, value),
        lambda: mc.send_message(queue_url, {"ok": 1}, meta=value),
        lambda: mc.create_message_cluster(queue_url, [1], meta=value),
    ):
        with pytest.raises(ValidationError) as info:
            await call()
        assert_clean(info.value)


async def test_meta_update_with_an_unencodable_value(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.send_message(queue_url, {"ok": 1})
    with pytest.raises(ValidationError) as info:
        await mc.update_message_record(key, meta=object())
    assert_clean(info.value)
    cluster = await mc.create_message_cluster(queue_url, [1])
    with pytest.raises(ValidationError):
        await mc.update_message_cluster(cluster, meta=_cyclic())


@pytest.mark.parametrize("bodies", [None, 5, "abc", b"abc", {"a": 1}])
async def test_batch_bodies_must_be_an_iterable(
    mc: msgcluster.Client, queue_url: str, bodies: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        await mc.send_message_batch(queue_url, bodies)
    assert_clean(info.value)


async def test_a_failing_generator_raises_its_own_error(
    mc: msgcluster.Client, queue_url: str
) -> None:
    def bodies() -> Iterator[int]:
        yield 1
        raise LookupError("the caller's own")

    with pytest.raises(LookupError, match="the caller's own"):
        await mc.send_message_batch(queue_url, bodies())


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("records", [None, 5, "abc", {"pk": "x"}])
async def test_batch_record_calls_want_an_iterable(mc: msgcluster.Client, records: Any) -> None:
    for call in (
        mc.is_complete_batch,
        mc.mark_complete_batch,
        mc.claim_batch,
        mc.get_message_records,
    ):
        with pytest.raises(ValidationError) as info:
            await call(records)
        assert_clean(info.value)


@pytest.mark.parametrize("pk", ["SQSMessage$\ud800", "SQSMessage$a\nb", "SQSMessage$\x00"])
async def test_keys_with_unprintable_characters(mc: msgcluster.Client, pk: str) -> None:
    with pytest.raises(msgcluster.InvalidKeyError) as info:
        await mc.get_message_record((pk, "message"))
    assert_clean(info.value)


# --------------------------------------------------------------------------- URIs


SECRET_URIS = [
    f"sqs://AKIAX:{SECRET}#x@jobs",
    f"sqs://AKIAX:{SECRET}?x@jobs",
    f"sqs://AKIAX%3A{SECRET}%40jobs",
    f"dynamodb://u%3A{SECRET}%40tbl?queue=q",
    f"dynamodb://u:{SECRET}#x@tbl?queue=q",
    f"https://AKIAX:{SECRET}#x@sqs.us-east-1.amazonaws.com/1/q",
    f"https://AKIAX:{SECRET}?a@sqs.us-east-1.amazonaws.com/1/q",
    f"memory://q?visibility_timeout={SECRET}",
    f"memory://q?{SECRET}",
    f"memory://q?{SECRET}=1",
    f"sqs://jobs?endpoint=http://u%3A{SECRET}%40h",
    f"sqs://{SECRET}/x/y",
    f"sqs://jobs#{SECRET}",
]


@pytest.mark.parametrize("uri", SECRET_URIS)
async def test_uris_never_echo_secrets(mc: msgcluster.Client, uri: str) -> None:
    with pytest.raises(QueueURIError) as info:
        await open_queue(uri)
    assert_clean(info.value)
    with pytest.raises(msgcluster.MsgclusterError) as sent:
        await mc.send_message(uri, {"x": 1})
    assert_clean(sent.value)


@pytest.mark.parametrize(
    "uri",
    [
        "http://[::1/1/q",
        "http://[zz]:5123/1/q",
        "memory://q?visibility_timeout=1_0",
        "memory://q?visibility_timeout=%205%20",
        "memory://q?visibility_timeout=\u0665",
        "memory://q?delay=1e3",
    ],
)
async def test_malformed_uris(uri: str) -> None:
    with pytest.raises(QueueURIError) as info:
        await open_queue(uri)
    assert_clean(info.value)


@pytest.mark.parametrize(("option", "value"), [("client", 42), ("session", "x")])
async def test_queue_client_and_session_options_are_checked(option: str, value: Any) -> None:
    with pytest.raises(QueueURIError) as info:
        await open_queue("sqs://jobs", **{option: value})
    assert_clean(info.value)


# --------------------------------------------------------------------------- Client


BAD_CLIENT: list[tuple[str, dict[str, Any]]] = [
    ("percent-encoded credentials", {"endpoint_url": f"http://u%3A{SECRET}%40host:4566"}),
    ("space in host", {"endpoint_url": "http://ho st:4566"}),
    ("NUL in host", {"endpoint_url": "http://a\x00b:4566"}),
    ("unicode host", {"endpoint_url": "http://ünï.example:4566"}),
    ("300-character host", {"endpoint_url": "http://" + "a" * 300}),
    ("endpoints a string", {"endpoints": "http://localhost:4566"}),
    ("endpoints a list", {"endpoints": ["http://localhost:4566"]}),
    ("session a string", {"session": "x"}),
    ("bucket an IP address", {"bucket": "192.168.1.1"}),
    ("bucket with '..'", {"bucket": "a..b"}),
    ("session token alone", {"aws_session_token": SECRET}),
    ("secret of the wrong type", {"aws_access_key_id": "AKIAX", "aws_secret_access_key": 5}),
]


@pytest.mark.parametrize("options", [o for _, o in BAD_CLIENT], ids=[n for n, _ in BAD_CLIENT])
def test_client_refuses_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        msgcluster.Client(**options)
    assert_clean(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"tabel": "x"},
        {"endpoint_url": f"http://u:{SECRET}@h"},
        {"region": "us east 1"},
        {"aws_access_key_id": "AKIAX"},
        {"endpoints": {"sns": "http://localhost:4566"}},
    ],
)
def test_with_options_checks_like_the_constructor(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        msgcluster.Client().with_options(**changes)
    assert_clean(info.value)


def test_settings_never_show_or_encode_secrets() -> None:
    client = msgcluster.Client(
        aws_access_key_id="AKIAX", aws_secret_access_key=SECRET, aws_session_token=SECRET + "t"
    )
    assert SECRET not in repr(client.settings)
    assert SECRET not in str(client.settings)
    with pytest.raises(TypeError) as info:
        msgspec.json.encode(client.settings)
    assert SECRET not in str(info.value)
    again = client.with_options(claim=True)
    assert again.settings.credentials()["aws_secret_access_key"] == SECRET


async def test_tracked_messages_on_a_memory_queue(mc: msgcluster.Client) -> None:
    """memory:// is not an AWS backend: the Client does not hand it its SQS client."""
    import uuid

    uri = f"memory://edges-{uuid.uuid4().hex[:8]}"
    key = await mc.send_message(uri, {"x": 1})
    async with await open_queue(uri) as queue:
        (message,) = await queue.receive(max_messages=1, wait_seconds=0)
    assert await mc.is_complete(message) is False
    assert await mc.mark_complete(message) is True
    with pytest.raises(msgcluster.RecordNotFoundError):
        await mc.get_message_record(key, consistent_read=True)


# --------------------------------------------------------------------------- second audit


async def test_reconcile_refuses_a_source_queue(mc: msgcluster.Client, queue_url: str) -> None:
    """A queue with a redrive policy is not a DLQ: reconciling it would record
    every live message as failed."""
    key = await mc.send_message(queue_url, {"x": 1})
    with pytest.raises(ValidationError, match="dead-letter queue") as info:
        await mc.reconcile_dead_letters(queue_url)
    assert_clean(info.value)
    record = await mc.get_message_record(key, consistent_read=True)
    assert record.status is msgcluster.Status.PRE_FLIGHT
    assert not record.error


async def test_a_resume_must_match_what_it_resumes(mc: msgcluster.Client, queue_url: str) -> None:
    import uuid

    cid = f"resume-{uuid.uuid4().hex[:8]}"
    await mc.create_message_cluster(queue_url, [1, 2], meta={"a": 1}, cluster_id=cid)
    for tasks, meta in (([7, 8, 9], {"a": 1}), ([1, 2], {"a": 2})):
        with pytest.raises(ValidationError, match="a resume passes the same") as info:
            await mc.create_message_cluster(queue_url, tasks, meta=meta, cluster_id=cid)
        assert_clean(info.value)
    # The same call again is a resume, and fine.
    await mc.create_message_cluster(queue_url, [1, 2], meta={"a": 1}, cluster_id=cid)


async def test_a_tasks_iterable_that_raises_names_the_cluster(
    mc: msgcluster.Client, queue_url: str
) -> None:
    def tasks() -> Iterator[int]:
        yield from range(3)
        raise RuntimeError("late\nboom")

    with pytest.raises(msgcluster.ClusterCreateError) as info:
        await mc.create_message_cluster(queue_url, tasks())
    assert info.value.cluster_id
    assert "RuntimeError: late boom" in str(info.value)
    assert_clean(info.value)


async def test_completion_callbacks_are_checked(mc: msgcluster.Client, queue_url: str) -> None:
    app = msgcluster.App()
    for bad in (lambda: app.on_cluster_complete(5), lambda: app.on_cluster_complete(name=5)):
        with pytest.raises(ValidationError):
            bad()
    with pytest.raises(ValidationError, match="two arguments"):
        app.on_cluster_complete(lambda: None)
    with pytest.raises(ValidationError):
        mc.register_cluster_callback(5)  # type: ignore[arg-type]
    key = await mc.create_message_cluster(queue_url, [1])
    for kw in ({"callback": 5}, {"callback": None}):
        with pytest.raises(ValidationError):
            await mc.on_cluster_complete(key, **kw)
    for kw in ({"lease_seconds": -1}, {"max_attempts": 0}):
        with pytest.raises(ValidationError):
            await mc.on_cluster_complete(key, lambda record, get: None, **kw)


async def test_queue_calls_check_their_arguments() -> None:
    import uuid

    async with await open_queue(f"memory://args-{uuid.uuid4().hex[:8]}") as queue:
        await queue.send([b"x"])
        for max_messages in ("3", None, True, 2.5):
            with pytest.raises(msgcluster.MsgclusterError) as info:
                await queue.receive(max_messages=max_messages)  # type: ignore[arg-type]
            assert_clean(info.value)
        (message,) = await queue.receive(max_messages=1)
        for changes in ([message], [(message,)], [(message, "5")], [(message, True)]):
            with pytest.raises(ValidationError):
                await queue.change_visibility(changes)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await queue.dead_letter(None)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await queue.dead_letter(message, reason=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["1" + "0" * 400, "1" * 39, "1e130", "1e-140"])
async def test_numbers_sqs_cannot_carry_are_refused(value: str) -> None:
    import uuid

    async with await open_queue(f"memory://num-{uuid.uuid4().hex[:8]}") as queue:
        message = msgcluster.OutgoingMessage(
            body=b"x", attributes={"n": {"DataType": "Number", "StringValue": value}}
        )
        (result,) = await queue.send([message])
    assert isinstance(result.error, ValidationError)


async def test_globals_type_and_attempts_are_checked(mc: msgcluster.Client, queue_url: str) -> None:
    key = await mc.create_message_cluster(queue_url, [1], globals={"n": 1})
    with pytest.raises(ValidationError):
        await mc.get_message_cluster_globals(key, type="notatype")
    with pytest.raises(ValidationError):
        await mc.update_message_cluster_globals(key, {"n": 2}, max_attempts=0)


async def test_provision_and_send_batch_want_iterables(mc: msgcluster.Client) -> None:
    with pytest.raises(ValidationError):
        await mc.provision(None)  # type: ignore[arg-type]
    app = msgcluster.App(mc, queue="memory://nowhere")
    with pytest.raises(ValidationError):
        await app.send_batch(None)  # type: ignore[arg-type]


async def open_dead_sqs_queue() -> None:
    """Open (and close) an sqs:// queue whose endpoint nothing listens on: what
    fails before any request is the configuration."""
    async with await open_queue("sqs://jobs?endpoint=http://127.0.0.1:9"):
        pass


def test_a_bad_botocore_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "lots")

    with pytest.raises(ConfigurationError, match="AWS_MAX_ATTEMPTS") as info:
        anyio.run(open_dead_sqs_queue)
    assert_clean(info.value)


async def test_list_clusters_wants_an_iso_time(mc: msgcluster.Client) -> None:
    for bad in ("garbage", "30/11/2026", "2026-11-30 01:00"):
        with pytest.raises(ValidationError, match="ISO 8601"):
            [c async for c in mc.list_clusters(started_after=bad)]
    [c async for c in mc.list_clusters(started_after="2026-11")]  # a prefix is a bound


def test_lifespan_options_are_checked_at_import() -> None:
    from msgcluster.integrations.fastapi import msgcluster_lifespan

    with pytest.raises(ConfigurationError, match="invalid Client options"):
        msgcluster_lifespan(tabel="t")
    with pytest.raises(ConfigurationError) as info:
        msgcluster_lifespan(endpoint_url=f"http://u:{SECRET}@h")
    assert_clean(info.value)


def test_enqueue_test_count_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    from msgcluster.cli import main

    assert main(["enqueue-test", "memory://bounded", "-n", "1000001"]) == 2
    err = capsys.readouterr().err
    assert "at most 100,000" in err
    assert "Traceback" not in err


def test_credentials_that_are_not_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sécret\udcff")

    with pytest.raises(ConfigurationError, match="AWS_SECRET_ACCESS_KEY") as info:
        anyio.run(open_dead_sqs_queue)
    assert_clean(info.value)
