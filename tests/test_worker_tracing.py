"""OpenTelemetry: one CONSUMER span per handler run, with the outcome."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import msgcluster
from msgcluster.queues import open_queue
from msgcluster.worker import App, MessageContext, Reject, Retry, Worker


class Job(msgspec.Struct):
    n: int


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The global provider can be set once per process; the worker's tracer
    # is a proxy that follows it.
    trace.set_tracer_provider(provider)
    return exporter


async def test_a_span_per_handled_message(spans: InMemorySpanExporter) -> None:
    spans.clear()
    app = App()
    tries: dict[int, int] = {}

    @app.handler(Job)
    async def job(body: Job) -> None:
        tries[body.n] = tries.get(body.n, 0) + 1
        if body.n == 1 and tries[1] == 1:
            raise Retry(0)
        if body.n == 2:
            raise Reject("no")
        if body.n == 3:
            raise ValueError("boom")

    name = f"traced-{uuid.uuid4().hex[:6]}"
    async with open_queue(f"memory://{name}?max_receives=2") as queue:
        await queue.send([msgspec.json.encode(Job(n)) for n in range(4)])
        worker = Worker(
            app, queue, burst=True, wait_seconds=0.05, backoff_base=0.01, handle_signals=False
        )
        await worker.run()

    finished = spans.get_finished_spans()
    for span in finished:
        assert span.name == f"process {name}"
        assert span.kind is trace.SpanKind.CONSUMER
        attributes = span.attributes or {}
        assert attributes["messaging.system"] == "msgcluster.memory"
        assert attributes["messaging.destination.name"] == name
        assert attributes["msgcluster.body_type"] == "Job"
        assert isinstance(attributes["messaging.message.id"], str)
        assert int(attributes["msgcluster.receive_count"]) in (1, 2)
    outcomes = sorted(
        (str((s.attributes or {})["msgcluster.outcome"]), s.status.status_code.name)
        for s in finished
    )
    # 0 succeeds; 1 retries once (flow control, not an error) then succeeds;
    # 2 is rejected (error); 3 fails twice, the second time on its last receive.
    assert outcomes == sorted(
        [
            ("succeeded", "UNSET"),
            ("retried", "UNSET"),
            ("succeeded", "UNSET"),
            ("dead_lettered", "ERROR"),
            ("retried", "ERROR"),
            ("retried", "ERROR"),
        ]
    )


async def test_the_consumer_span_links_to_the_senders(
    spans: InMemorySpanExporter, mc: msgcluster.Client, queue_url: str
) -> None:
    """W3C trace context travels in the message's attributes (tracked messages
    and cluster tasks); the CONSUMER span is linked to the span that sent it."""
    spans.clear()
    app = App(mc, queue=queue_url)
    seen: list[dict[str, str]] = []

    @app.handler(Job)
    async def job(body: Job, ctx: MessageContext) -> None:
        seen.append(ctx.attributes)

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("produce") as producer:
        await app.send(Job(1))
        await app.create_cluster([Job(2), Job(3)])
    await app.send(Job(4))  # no active span: no trace context
    await Worker(app, queue_url, burst=True, wait_seconds=1, handle_signals=False).run()
    trace_id = producer.get_span_context().trace_id
    consumers = [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("msgcluster.body_type") == "Job"
    ]
    assert len(consumers) == 4  # (the cluster's completion event has a span of its own)
    linked = [s for s in consumers if s.links]
    assert len(linked) == 3
    assert {link.context.trace_id for s in linked for link in s.links} == {trace_id}
    assert sum("traceparent" in attributes for attributes in seen) == 3
