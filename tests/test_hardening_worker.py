"""Bad input to the runtimes (Worker, App, safe_process_batch, the Lambda
adapter) is refused when they are built, or at the call: a typed
MsgclusterError with a one-line message that never repeats a credential.
A message that breaks the reader fails alone, and SystemExit /
KeyboardInterrupt raised by a handler propagate as themselves.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import msgspec
import pytest

import msgcluster
from msgcluster import App, ConfigurationError, MsgclusterError, ValidationError, Worker
from msgcluster.integrations.aws_lambda import lambda_handler
from msgcluster.queues import OutgoingMessage, open_queue
from msgcluster.runtime._safe_batch import safe_process_batch

PASSWORD = "hunter2pw"


class Order(msgspec.Struct):
    order_id: int


class NotDecodable:
    """A class msgspec has no decoder for."""


class NoHooks:
    def message_done(self, *args: Any) -> None: ...


def order_app() -> App:
    app = App()

    @app.handler(Order)
    async def handle(order: Order) -> None: ...

    return app


def assert_one_line(error: BaseException) -> None:
    text = str(error)
    assert text, type(error)
    assert "\n" not in text, text
    assert PASSWORD not in text, text


# --------------------------------------------------------------------------- Worker

BAD_WORKER_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("concurrency a str", {"concurrency": "5"}),
    ("concurrency a float", {"concurrency": 5.0}),
    ("concurrency a bool", {"concurrency": True}),
    ("concurrency over the limit", {"concurrency": 10_001}),
    ("prefetch a str", {"prefetch": "1"}),
    ("receivers a float", {"receivers": 2.5}),
    ("wait_seconds a str", {"wait_seconds": "1"}),
    ("wait_seconds NaN", {"wait_seconds": math.nan}),
    ("visibility_timeout a str", {"visibility_timeout": "30"}),
    ("visibility_timeout a bool", {"visibility_timeout": True}),
    ("grace_seconds infinite", {"grace_seconds": math.inf}),
    ("backoff_base infinite", {"backoff_base": math.inf}),
    ("backoff_max negative", {"backoff_max": -1}),
    ("max_extension NaN", {"max_extension": math.nan}),
    ("progress_seconds a str", {"progress_seconds": "60"}),
    ("burst a str", {"burst": "no"}),
    ("burst an int", {"burst": 0}),
    ("handle_signals an int", {"handle_signals": 3}),
    ("metrics an int", {"metrics": 5}),
    ("metrics without every hook", {"metrics": NoHooks()}),
    ("queue_options a list", {"queue_options": [("dlq", "x")]}),
    ("queue_options unknown key", {"queue_options": {"colour": "red"}}),
    ("queue_options bad value", {"queue_options": {"max_receives": "lots"}}),
    ("queue_options non-str key", {"queue_options": {1: "x"}}),
]


@pytest.mark.parametrize(
    "options", [c[1] for c in BAD_WORKER_OPTIONS], ids=[c[0] for c in BAD_WORKER_OPTIONS]
)
def test_bad_worker_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Worker(order_app(), "memory://w", **options)
    assert_one_line(info.value)


def test_queue_options_endpoint_with_credentials_is_refused_unechoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        Worker(order_app(), "sqs://jobs", queue_options={"endpoint": f"http://u:{PASSWORD}@h"})
    assert_one_line(info.value)


async def test_queue_options_with_an_open_queue_are_refused() -> None:
    async with open_queue("memory://w-open") as queue:
        with pytest.raises(ConfigurationError) as info:
            Worker(order_app(), queue, queue_options={"dlq": "x"})
        assert_one_line(info.value)


BAD_WORKER_TARGETS: list[tuple[str, object, object]] = [
    ("app None", None, "memory://w"),
    ("app a str", "app", "memory://w"),
    ("queue an int", "APP", 42),
    ("queue None", "APP", None),
    ("queue a dict", "APP", {"uri": "memory://w"}),
]


@pytest.mark.parametrize(
    ("app", "queue"), [c[1:] for c in BAD_WORKER_TARGETS], ids=[c[0] for c in BAD_WORKER_TARGETS]
)
def test_worker_app_and_queue_types(app: object, queue: object) -> None:
    real = order_app() if app == "APP" else app
    with pytest.raises(ValidationError) as info:
        Worker(real, queue)  # type: ignore[arg-type]
    assert_one_line(info.value)
    assert ("App" in str(info.value)) if app != "APP" else ("queue" in str(info.value))


BAD_WORKER_URIS: list[tuple[str, str]] = [
    ("bad integer", "memory://w?max_receives=lots"),
    ("unknown parameter", "memory://w?colour=red"),
    ("bad sqs name", "sqs://bad name"),
    ("short table", "dynamodb://ab?queue=q"),
    ("unknown scheme", "sqss://jobs"),
    ("not a URI", "jobs"),
    ("credentials", f"sqs://u:{PASSWORD}@jobs"),
    ("percent-encoded credentials", f"sqs://u%3A{PASSWORD}%40jobs"),
    ("credentials in an endpoint parameter", f"sqs://jobs?endpoint=http://u:{PASSWORD}@h"),
]


@pytest.mark.parametrize(
    "uri", [c[1] for c in BAD_WORKER_URIS], ids=[c[0] for c in BAD_WORKER_URIS]
)
def test_worker_uris_are_validated_at_construction(uri: str) -> None:
    with pytest.raises(msgcluster.QueueURIError) as info:
        Worker(order_app(), uri)
    assert_one_line(info.value)


def test_worker_repr_never_shows_credentials() -> None:
    worker = Worker(order_app(), "memory://w?max_receives=3")
    assert "memory://w" in repr(worker)

    class Opened:  # an open queue whose URI carries a (percent-encoded) secret
        uri = f"sqs://u%3A{PASSWORD}%40jobs?token=x"

    worker._queue_arg = Opened()  # type: ignore[assignment]
    assert PASSWORD not in repr(worker)


# --------------------------------------------------------------------------- App

BAD_APPS: list[tuple[str, dict[str, Any], type[MsgclusterError]]] = [
    ("credentials in the queue", {"queue": f"sqs://u:{PASSWORD}@jobs"}, ConfigurationError),
    ("encoded credentials", {"queue": f"sqs://u%3A{PASSWORD}%40jobs"}, ConfigurationError),
    ("unknown queue parameter", {"queue": "memory://q?colour=red"}, ConfigurationError),
    ("queue not a URI", {"queue": "jobs"}, ValidationError),
    ("client an int", {"client": 5}, ValidationError),
    ("name an int", {"name": 3}, ValidationError),
]


@pytest.mark.parametrize(
    ("kwargs", "error"), [c[1:] for c in BAD_APPS], ids=[c[0] for c in BAD_APPS]
)
def test_bad_apps(kwargs: dict[str, Any], error: type[MsgclusterError]) -> None:
    with pytest.raises(error) as info:
        App(**kwargs)
    assert_one_line(info.value)


BAD_HANDLERS: list[tuple[str, object, dict[str, Any]]] = [
    ("body type an int", 5, {}),
    ("body type a str", "Order", {}),
    ("body type object", object, {}),
    ("body type a plain class", NotDecodable, {}),
    ("nested plain class", list[NotDecodable], {}),
    ("retries a str", Order, {"retries": "3"}),
    ("retries a bool", Order, {"retries": True}),
    ("backoff infinite", Order, {"backoff": math.inf}),
    ("timeout NaN", Order, {"timeout": math.nan}),
    ("visibility a str", Order, {"visibility": "30"}),
]


@pytest.mark.parametrize(
    ("body_type", "options"), [c[1:] for c in BAD_HANDLERS], ids=[c[0] for c in BAD_HANDLERS]
)
def test_bad_handlers_fail_at_the_call(body_type: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        App().handler(body_type, **options)
    assert_one_line(info.value)


# --------------------------------------------------------------------------- batches

EVENT = {"Records": [{"messageId": "a", "body": "x"}, {"messageId": "b", "body": "y"}]}


async def _noop(record: Any) -> None:
    return None


BAD_BATCHES: list[tuple[str, dict[str, Any]]] = [
    ("concurrency zero", {"concurrency": 0}),
    ("concurrency negative", {"concurrency": -1}),
    ("concurrency NaN", {"concurrency": math.nan}),
    ("concurrency a str", {"concurrency": "4"}),
    ("concurrency a bool", {"concurrency": True}),
    ("process_record None", {"process_record": None}),
    ("process_record an int", {"process_record": 3}),
    ("body_type an int", {"body_type": 5}),
    ("body_type a plain class", {"body_type": NotDecodable}),
    ("fifo a str", {"fifo": "yes"}),
    ("fifo_failure unknown", {"fifo_failure": "nope"}),
]


@pytest.mark.parametrize("options", [c[1] for c in BAD_BATCHES], ids=[c[0] for c in BAD_BATCHES])
async def test_bad_batch_arguments_fail_up_front(options: dict[str, Any]) -> None:
    process = options.pop("process_record", _noop)
    with pytest.raises(ValidationError) as info:
        await safe_process_batch(None, EVENT, process, **options)
    assert_one_line(info.value)


BAD_LAMBDA: list[tuple[str, object, dict[str, Any]]] = [
    ("app None", None, {}),
    ("app a str", "app", {}),
    ("fifo_failure unknown", "APP", {"fifo_failure": "nope"}),
    ("concurrency zero", "APP", {"concurrency": 0}),
    ("concurrency a str", "APP", {"concurrency": "4"}),
]


@pytest.mark.parametrize(
    ("app", "options"), [c[1:] for c in BAD_LAMBDA], ids=[c[0] for c in BAD_LAMBDA]
)
def test_bad_lambda_handlers_fail_at_construction(app: object, options: dict[str, Any]) -> None:
    real = order_app() if app == "APP" else app
    with pytest.raises(ValidationError) as info:
        lambda_handler(real, **options)  # type: ignore[arg-type]
    assert_one_line(info.value)


FATAL: list[tuple[str, BaseException]] = [
    ("SystemExit", SystemExit(3)),
    ("KeyboardInterrupt", KeyboardInterrupt()),
]
ORDERING: list[dict[str, Any]] = [
    {},
    {"fifo": True},
    {"fifo": True, "fifo_failure": "rest_of_batch"},
]


@pytest.mark.parametrize("ordering", ORDERING, ids=["standard", "fifo groups", "fifo batch"])
@pytest.mark.parametrize("fatal", [c[1] for c in FATAL], ids=[c[0] for c in FATAL])
async def test_fatal_exceptions_from_process_record_propagate_as_themselves(
    fatal: BaseException, ordering: dict[str, Any]
) -> None:
    async def process(record: Any) -> None:
        raise fatal

    with pytest.raises(type(fatal)) as info:
        await safe_process_batch(None, EVENT, process, **ordering)
    assert info.value is fatal


# --------------------------------------------------------------------------- worker runs


@pytest.mark.parametrize("fatal", [c[1] for c in FATAL], ids=[c[0] for c in FATAL])
async def test_fatal_exceptions_from_a_handler_stop_the_worker(fatal: BaseException) -> None:
    """The worker stops, run() raises the exception itself, and no message is lost:
    whatever was not acked is visible again."""
    app = App()

    @app.handler(Order)
    async def handle(order: Order) -> None:
        if order.order_id == 99:
            raise fatal

    async with open_queue(f"memory://fatal-{type(fatal).__name__}") as queue:
        await queue.send([OutgoingMessage(body=msgspec.json.encode(Order(i))) for i in (1, 99, 2)])
        worker = Worker(app, queue, burst=True, wait_seconds=0.1, handle_signals=False)
        with anyio.fail_after(10):
            with pytest.raises(type(fatal)) as info:
                await worker.run()
        assert info.value is fatal
        left = await queue.receive(10, wait_seconds=0)
        assert any(m.body == msgspec.json.encode(Order(99)) for m in left)


async def test_a_body_that_breaks_the_reader_fails_alone() -> None:
    """A deeply nested, envelope-looking body makes reading raise (RecursionError):
    it is dead-lettered alone; the 9 good messages of its receive batch are handled."""
    app = App()
    handled: list[int] = []

    @app.handler(Order)
    async def handle(order: Order) -> None:
        handled.append(order.order_id)

    deep = b'{"type": "message", "pk": "SQSMessage$x", "rk": "y", "body": ' + b"[" * 100_000
    async with open_queue("memory://deep-body?max_receives=3") as queue:
        good = [OutgoingMessage(body=msgspec.json.encode(Order(i))) for i in range(9)]
        await queue.send([*good[:4], OutgoingMessage(body=deep), *good[4:]])
        worker = Worker(app, queue, burst=True, wait_seconds=0.1, handle_signals=False)
        with anyio.fail_after(20):
            stats = await worker.run()
        async with open_queue("memory://deep-body-dlq") as dlq:
            dead = await dlq.receive(10, wait_seconds=0)
    assert sorted(handled) == list(range(9))
    assert [m.body for m in dead] == [deep]
    assert stats["dead_lettered"] == 1
    assert stats["succeeded"] == 9


async def test_a_plain_deep_body_fails_alone() -> None:
    """The same with 100,000 '[' as a plain body for a Struct handler."""
    app = App()
    handled: list[int] = []

    @app.handler(Order)
    async def handle(order: Order) -> None:
        handled.append(order.order_id)

    async with open_queue("memory://deep-plain?max_receives=3") as queue:
        good = [OutgoingMessage(body=msgspec.json.encode(Order(i))) for i in range(9)]
        await queue.send([OutgoingMessage(body=b"[" * 100_000), *good])
        with anyio.fail_after(20):
            stats = await Worker(
                app, queue, burst=True, wait_seconds=0.1, handle_signals=False
            ).run()
    assert sorted(handled) == list(range(9))
    assert stats["dead_lettered"] == 1


BAD_LIFESPANS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[MsgclusterError]]] = [
    ("client an int", (5,), {}, ValidationError),
    ("workers not callable", (), {"workers": 3, "table": "t1x"}, ConfigurationError),
    ("lifespan not callable", (), {"lifespan": "x", "table": "t1x"}, ConfigurationError),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"), [c[1:] for c in BAD_LIFESPANS], ids=[c[0] for c in BAD_LIFESPANS]
)
def test_bad_fastapi_lifespans(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[MsgclusterError]
) -> None:
    fastapi = pytest.importorskip("msgcluster.integrations.fastapi")
    with pytest.raises(error) as info:
        fastapi.msgcluster_lifespan(*args, **kwargs)
    assert_one_line(info.value)
