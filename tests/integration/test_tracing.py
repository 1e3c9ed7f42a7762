"""OpenTelemetry (issue 15, item 5): an enqueue inside a web request's span leaves a
producer span and the trace context in the job's meta; the worker's attempt joins that
trace as a consumer span, child of the producer span, with the messaging attributes,
and a failed attempt says so (status ERROR, the exception recorded, redacted). Without
a configured SDK, or without OpenTelemetry at all, nothing is written to meta.

The SDK's global tracer provider can be set once per process; the ``spans`` fixture
installs one for a test and takes it away again, the way OpenTelemetry's own test
utilities do, so a test without it sees the API's default (no provider)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import pgq
from pgq.client import tracing
from pgq.core.backoff import Backoff
from pgq.core.logs import JsonFormatter
from pgq.worker import WorkerConfig
from pgq.worker.queues import parse_queues

pytestmark = pytest.mark.timeout(120)

FAST = WorkerConfig(queues=tuple(parse_queues("default,other")), concurrency=4,
                    poll_seconds=0.05)


def run(app: pgq.App) -> None:
    """A worker in-process until nothing is due (as tests/integration/test_worker.py)."""
    asyncio.run(asyncio.wait_for(pgq.Worker(app, FAST).run_async(stop_when="due"), 30))


def _no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider exporting to memory, for this test only."""
    _no_provider(monkeypatch)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


def meta(conn: psycopg.Connection, job_id: int) -> Any:
    row = conn.execute("SELECT meta FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row[0]


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hex_id(span: ReadableSpan, part: str = "span") -> str:
    context = span.get_span_context()
    assert context is not None
    return format(context.span_id, "016x") if part == "span" else format(context.trace_id, "032x")


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent naming ``span`` as the parent."""
    context = span.get_span_context()
    assert context is not None and context.trace_flags.sampled
    return f"00-{hex_id(span, 'trace')}-{hex_id(span)}-{context.trace_flags:02x}"


def test_the_attempt_joins_the_trace_of_the_request_that_enqueued_it(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        spans: InMemorySpanExporter) -> None:
    app = make_app()
    seen: dict[str, str | None] = {}

    @app.task(name="t.sync")
    def sync_task(n: int) -> int:
        seen["sync"] = tracing.current_trace_id()
        return n

    @app.task(name="t.async", queue="other")
    async def async_task() -> None:
        with trace.get_tracer("app").start_as_current_span("inside the task"):
            seen["async"] = tracing.current_trace_id()

    with trace.get_tracer("web").start_as_current_span("web request") as request:
        first = app.enqueue("t.sync", {"n": 1}, meta={"tenant": "acme"})
        second = app.enqueue("t.async")
    trace_id = format(request.get_span_context().trace_id, "032x")

    (send_sync,) = named(spans, "send default")
    (send_async,) = named(spans, "send other")
    for send, job in ((send_sync, first), (send_async, second)):
        assert send.kind == SpanKind.PRODUCER
        assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
        assert hex_id(send, "trace") == trace_id
        assert send.attributes is not None
        assert send.attributes["messaging.system"] == "pgq"
        assert send.attributes["messaging.operation.type"] == "send"
        assert send.attributes["messaging.message.id"] == str(job.id)
    assert send_sync.attributes is not None and send_sync.attributes["pgq.task"] == "t.sync"
    # The context rides in meta, beside the caller's own keys.
    assert meta(conn, first.id) == {
        "tenant": "acme", "_pgq_trace": {"traceparent": traceparent(send_sync)}}
    assert meta(conn, second.id) == {
        "_pgq_trace": {"traceparent": traceparent(send_async)}}

    run(app)
    for queue, send, job, task in (("default", send_sync, first, "t.sync"),
                                   ("other", send_async, second, "t.async")):
        (process,) = named(spans, f"process {queue}")
        assert process.kind == SpanKind.CONSUMER
        assert hex_id(process, "trace") == trace_id
        assert process.parent is not None and process.parent.span_id == send.get_span_context().span_id
        assert process.attributes == {
            "messaging.system": "pgq", "messaging.operation.name": "process",
            "messaging.operation.type": "process", "messaging.destination.name": queue,
            "messaging.message.id": str(job.id), "pgq.task": task, "pgq.attempt": 1,
            "pgq.outcome": "completed"}
        assert process.status.status_code == StatusCode.UNSET
        assert process.start_time is not None and send.end_time is not None
    # The span is current while the task runs: the task's own spans and logs join it.
    assert seen == {"sync": trace_id, "async": trace_id}
    (inside,) = named(spans, "inside the task")
    (process_other,) = named(spans, "process other")
    assert inside.parent is not None and inside.parent.span_id == process_other.get_span_context().span_id


def test_a_failed_attempt_records_its_exception_redacted(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgq.worker")
    app = make_app()

    @app.task(name="t.fails", max_attempts=2, backoff=Backoff(steps=[0], jitter=0))
    def fails(card: str) -> None:
        raise ValueError(f"payment refused, password=hunter2 card {card}")

    with trace.get_tracer("web").start_as_current_span("web request"):
        job = app.enqueue("t.fails", {"card": "4111111111111111"})
    run(app)
    (send,) = named(spans, "send default")
    attempts = sorted(named(spans, "process default"),
                      key=lambda s: s.attributes["pgq.attempt"] if s.attributes else 0)
    assert [(s.attributes or {}).get("pgq.outcome") for s in attempts] == ["retryable", "failed"]
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == send.get_span_context().span_id
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "ValueError"
        assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
        assert span.attributes["messaging.message.id"] == str(job.id)
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
        message = str(event.attributes["exception.message"])
        assert message.startswith("payment refused")
        # Redacted as the stored errors entry is (pgq.core.redaction).
        assert "hunter2" not in message and "4111111111111111" not in message
        assert "hunter2" not in str(event.attributes["exception.stacktrace"])
    # Spans carry no args.
    assert all("4111111111111111" not in str(s.attributes) for s in (send, *attempts))
    # The job's log lines name its trace; --log-format json writes it as trace_id.
    lines = [r for r in caplog.records if getattr(r, "job_id", None) == job.id
             and getattr(r, "outcome", None) in ("retryable", "failed")]
    assert [r.outcome for r in lines] == ["retryable", "failed"]  # type: ignore[attr-defined]
    trace_id = hex_id(send, "trace")
    assert {r.pgq_trace_id for r in lines} == {trace_id}  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(lines[-1]))["trace_id"] == trace_id


def test_enqueue_many_injects_the_context_of_one_span_into_every_job(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="t.many")
    def many(i: int) -> int:
        return i

    with trace.get_tracer("web").start_as_current_span("web request"):
        streamed = app.enqueue_many([pgq.JobSpec("t.many", {"i": i}) for i in range(5)])
    with psycopg.connect(conn.info.dsn) as caller:  # the caller's transaction: rows first
        in_tx = app.enqueue_many([pgq.JobSpec("t.many", {"i": 9}, meta={"k": 1}),
                                  pgq.JobSpec("t.many", {"i": 10}, unique_key="u")], conn=caller)
    sends = named(spans, "send default")
    assert len(sends) == 2
    for send, jobs in zip(sends, (streamed, in_tx), strict=True):
        assert send.kind == SpanKind.PRODUCER
        assert send.attributes is not None
        assert send.attributes["messaging.batch.message_count"] == len(jobs)
        assert send.attributes["messaging.destination.name"] == "default"
        for job in jobs:
            assert meta(conn, job.id)["_pgq_trace"] == {"traceparent": traceparent(send)}
    assert meta(conn, in_tx[0].id)["k"] == 1
    run(app)
    processed = named(spans, "process default")
    assert len(processed) == 7
    by_job = {(s.attributes or {})["messaging.message.id"]: s for s in processed}
    for send, jobs in zip(sends, (streamed, in_tx), strict=True):
        for job in jobs:
            span = by_job[str(job.id)]
            assert span.parent is not None and span.parent.span_id == send.get_span_context().span_id


def test_a_callers_own_trace_key_is_kept(make_app: Callable[..., pgq.App],
                                         conn: psycopg.Connection,
                                         spans: InMemorySpanExporter) -> None:
    app = make_app(strict=False)
    theirs = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    job = app.enqueue("t.any", meta={"_pgq_trace": theirs, "x": 1})
    assert meta(conn, job.id) == {"_pgq_trace": theirs, "x": 1}


def _untraced_enqueues(app: pgq.App, conn: psycopg.Connection) -> list[int]:
    ids = [app.enqueue("t.plain").id, app.enqueue("t.plain", unique_key="k").id]
    ids += [e.id for e in app.enqueue_many([pgq.JobSpec("t.plain") for _ in range(3)])]
    with psycopg.connect(conn.info.dsn) as caller:
        ids += [e.id for e in app.enqueue_many([pgq.JobSpec("t.plain", unique_key="m")],
                                               conn=caller)]
    return ids


def test_without_a_tracer_provider_nothing_is_written(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The API installed, no SDK configured (its default: a proxy to no-op tracers)."""
    _no_provider(monkeypatch)
    app = make_app()
    ran: list[str | None] = []

    @app.task(name="t.plain")
    def plain() -> None:
        ran.append(tracing.current_trace_id())

    with trace.get_tracer("web").start_as_current_span("web request"):
        ids = _untraced_enqueues(app, conn)
    assert [meta(conn, i) for i in ids] == [{}] * len(ids)
    run(app)
    assert ran == [None] * len(ids)


def test_without_opentelemetry_installed_nothing_is_written(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> None:
    """Even with an SDK configured by someone, pgq cannot see it without the API: its
    import fails (a None entry in sys.modules), and everything runs untraced."""
    monkeypatch.setattr(tracing, "_otel", None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    app = make_app()
    ran: list[str | None] = []

    @app.task(name="t.plain")
    def plain() -> None:
        ran.append(tracing.current_trace_id())

    ids = _untraced_enqueues(app, conn)
    assert tracing._otel is False
    assert [meta(conn, i) for i in ids] == [{}] * len(ids)
    run(app)
    assert ran == [None] * len(ids)
    assert spans.get_finished_spans() == ()


def test_a_sampled_out_enqueue_passes_the_decision_on(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dropped trace is still propagated (flags 00 in meta), so the worker's attempt is
    dropped too (ParentBased sampling) instead of starting a trace of its own."""
    _no_provider(monkeypatch)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    app = make_app()
    ran: list[str | None] = []

    @app.task(name="t.quiet")
    def quiet() -> None:
        ran.append(tracing.current_trace_id())

    job = app.enqueue("t.quiet")
    stored = meta(conn, job.id)["_pgq_trace"]["traceparent"]
    assert int(stored.rsplit("-", 1)[1], 16) & 1 == 0  # not sampled
    run(app)
    assert ran == [stored.split("-")[1]]  # the task still runs inside the (unsampled) trace
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_the_async_enqueues_trace_as_the_sync_ones(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        spans: InMemorySpanExporter) -> None:
    app = make_app(strict=False)

    async def request() -> tuple[int, list[pgq.Enqueued], int]:
        try:
            with trace.get_tracer("web").start_as_current_span("web request") as span:
                one = await app.enqueue_async("t.a", meta={"m": 1})
                many = await app.enqueue_many_async([pgq.JobSpec("t.a"), pgq.JobSpec("t.a")])
            return one.id, many, span.get_span_context().span_id
        finally:
            await app.aclose()  # its async pool belongs to this loop

    one, many, request_id = asyncio.run(request())
    sends = named(spans, "send default")
    assert [(s.attributes or {}).get("messaging.message.id") for s in sends] == [str(one), None]
    assert all(s.parent is not None and s.parent.span_id == request_id for s in sends)
    assert sends[1].attributes is not None
    assert sends[1].attributes["messaging.batch.message_count"] == 2
    assert meta(conn, one) == {"m": 1, "_pgq_trace": {"traceparent": traceparent(sends[0])}}
    assert [meta(conn, e.id) for e in many] == [
        {"_pgq_trace": {"traceparent": traceparent(sends[1])}}] * 2


def test_an_enqueue_that_raises_ends_its_span_in_error(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        spans: InMemorySpanExporter) -> None:
    app = make_app(strict=False)
    with psycopg.connect(conn.info.dsn) as closed:
        pass
    with pytest.raises(pgq.DatabaseUnavailable):
        app.enqueue("t.lost", conn=closed)
    (send,) = named(spans, "send default")
    assert send.status.status_code == StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["error.type"] == "pgq.core.errors.DatabaseUnavailable"
    assert [e.name for e in send.events] == ["exception"]
    assert trace.get_current_span() is trace.INVALID_SPAN  # its context was detached


def test_a_timed_out_attempt_says_so(make_app: Callable[..., pgq.App],
                                     conn: psycopg.Connection,
                                     spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="t.slow_sync", timeout=0.2, max_attempts=1)
    def slow_sync(ctx: pgq.Context) -> None:
        ctx.cancelled.wait(20)
        raise RuntimeError("noticed the timeout")  # after the outcome was decided

    @app.task(name="t.slow_async", timeout=0.2, max_attempts=1, queue="other")
    async def slow_async() -> None:
        await asyncio.sleep(20)

    app.enqueue("t.slow_sync")
    app.enqueue("t.slow_async")
    run(app)
    processed = named(spans, "process default") + named(spans, "process other")
    assert len(processed) == 2
    for span in processed:
        assert span.attributes is not None
        assert (span.attributes["pgq.outcome"], span.attributes["error.type"]) == (
            "failed", "pgq.Timeout")
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "pgq.Timeout"
        assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
            ("pgq.timeout", {"pgq.timeout_seconds": 0.2})]
