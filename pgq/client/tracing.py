"""OpenTelemetry traces of jobs: a producer span per enqueue call, a consumer span per
attempt, joined by the trace context the enqueue stores in the job's ``meta``.

Optional twice over. Without ``opentelemetry-api`` installed (the ``otel`` extra), or
with it but no SDK tracer provider configured (the API's no-op default), every function
here answers ``None``/a no-op after a module-global check (and, with the API, its
``get_tracer_provider()`` and an identity check): no span, no context, no meta
written, so a bulk enqueue keeps its fastest COPY. This is
the only module that imports ``opentelemetry`` (an import-linter contract), and only
on first use, so ``import pgq`` does not pay for it.

The carrier is the object under the meta key ``_pgq_trace`` (``TRACE_META_KEY``):
whatever the configured propagator writes, by default W3C ``traceparent`` and
``tracestate`` (and ``baggage`` if any is set). A caller's own ``_pgq_trace`` key is
kept, never overwritten. The claim returns only that key (``meta->'_pgq_trace'``), and
the worker's consumer span is a child of the enqueue's producer span, in the trace of
whatever request was current at the enqueue. One producer span covers a whole
``enqueue_many`` call, and every job of the call carries its context: one inject per
call, not per job. Spans carry identifiers (queue, task, job id, attempt), never args.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace
from typing import Any

from pgq.client.enqueue import Enqueued, JobRow, JobSpec
from pgq.core.outcomes import Snooze
from pgq.core.redaction import redact_text
from pgq.core.tasks import Task

TRACE_META_KEY = "_pgq_trace"
"""The ``meta`` key holding an enqueue's trace context (a JSON object of strings)."""

SYSTEM = "pgq"
"""``messaging.system`` of every span."""

MESSAGE_CHARS, STACKTRACE_CHARS = 2_000, 8_000
"""How much of an exception's message and traceback a span's event keeps, as the
stored ``errors`` entry does."""

ERROR_OUTCOMES = frozenset({"retryable", "failed", "lease-lost"})
"""Attempt outcomes whose span ends with status ERROR: the attempt did not do its work.
A snooze, a lock wait, a hand-back at shutdown and a cancellation are not errors."""

_QUOTED_KEY = json.dumps(TRACE_META_KEY)
_otel: Any = None
"""The API's modules once looked for: ``None`` not yet, ``False`` not installed."""
_tracer_of: tuple[Any, Any] = (None, None)
"""(provider, pgq's tracer from it, None if it is the API's no-op default): decided
once per provider, since the global one is set once."""


def _load() -> Any:
    global _otel  # noqa: PLW0603  # one import attempt per process, cached
    try:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind
        from opentelemetry.trace.status import Status, StatusCode
    except ImportError:
        _otel = False
    else:
        _otel = SimpleNamespace(
            context=context, propagate=propagate, trace=trace, Status=Status,
            ERROR=StatusCode.ERROR, PRODUCER=SpanKind.PRODUCER, CONSUMER=SpanKind.CONSUMER,
            # The global provider until an SDK's is set (Proxy), or set to do nothing.
            idle=(ProxyTracerProvider, NoOpTracerProvider))
    return _otel


def _tracer() -> Any:
    """pgq's tracer, or None when no span could record: no API, or no SDK provider."""
    global _tracer_of  # noqa: PLW0603  # a cache, rebuilt if the provider changes
    otel = _otel if _otel is not None else _load()
    if otel is False:
        return None
    provider = otel.trace.get_tracer_provider()
    cached, tracer = _tracer_of
    if cached is not provider:
        tracer = None if isinstance(provider, otel.idle) else provider.get_tracer("pgq", _version())
        _tracer_of = (provider, tracer)
    return tracer


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None (no valid span, or no
    OpenTelemetry). For log records: a line logged inside a traced task carries it."""
    otel = _otel if _otel is not None else _load()
    if otel is False:
        return None
    span_context = otel.trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


# --- the producer side: App.enqueue and enqueue_many ----------------------------------


class Publish:
    """The producer span of one enqueue call: current while the call runs, ended (with
    the exception, if one escapes) when it leaves; ``inject`` adds its context to rows."""

    __slots__ = ("_prefix", "_redact", "_token", "span")

    def __init__(self, span: Any, carrier: Mapping[str, str], redact: object) -> None:
        self.span = span
        self._redact = redact
        self._prefix = '{' + _QUOTED_KEY + ':' + json.dumps(carrier, separators=(",", ":"))
        self._token: Any = None

    def __enter__(self) -> Publish:
        self._token = _otel.context.attach(_otel.trace.set_span_in_context(self.span))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        _otel.context.detach(self._token)
        if exc is not None:
            _record(self.span, exc, self._redact)
            self.span.set_status(_otel.Status(_otel.ERROR, type(exc).__name__))
            self.span.set_attribute("error.type", _type_name(exc))
        self.span.end()

    def inject(self, row: JobRow) -> JobRow:
        """``row`` with the trace context in its meta, the caller's keys untouched."""
        meta = row.meta
        if meta == "{}":
            return row._replace(meta=self._prefix + "}")
        if _QUOTED_KEY in meta:
            return row  # the caller's own value (jsonb would keep the last one anyway)
        return row._replace(meta=self._prefix + "," + meta[1:])

    def prepare(self, prepare: Callable[[JobSpec], JobRow]) -> Callable[[JobSpec], JobRow]:
        """``prepare``, then ``inject``: every job of an ``enqueue_many`` carries the
        context of its call's one span."""
        return lambda spec: self.inject(prepare(spec))

    def sent(self, result: Enqueued) -> Enqueued:
        """Note the job's id (the holder's, for a duplicate); returns ``result``."""
        self.span.set_attribute("messaging.message.id", str(result.id))
        if result.duplicate:
            self.span.set_attribute("pgq.duplicate", True)
        return result

    def sent_many(self, results: list[Enqueued], queues: Collection[str] | None
                  ) -> list[Enqueued]:
        """Note the batch's size, and its queue if it has one; returns ``results``."""
        self.span.set_attribute("messaging.batch.message_count", len(results))
        if queues is not None and len(set(queues)) == 1:
            (queue,) = set(queues)
            self.span.set_attribute("messaging.destination.name", queue)
            self.span.update_name(f"send {queue}")
        return results


class _NotTraced:
    """What ``publish`` returns when nothing records: every method a no-op."""

    __slots__ = ()

    def __enter__(self) -> _NotTraced:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def inject(self, row: JobRow) -> JobRow:
        return row

    def prepare(self, prepare: Callable[[JobSpec], JobRow]) -> Callable[[JobSpec], JobRow]:
        return prepare

    def sent(self, result: Enqueued) -> Enqueued:
        return result

    def sent_many(self, results: list[Enqueued], queues: Collection[str] | None
                  ) -> list[Enqueued]:
        return results


NOT_TRACED = _NotTraced()
Publishing = Publish | _NotTraced
"""What ``publish`` returns; the enqueue calls the same methods on either."""


def publish(redact: object, queue: str | None = None, task: str | None = None) -> Publishing:
    """A producer span for one enqueue call (``queue`` and ``task`` known for one job,
    not for a batch), or ``NOT_TRACED``. ``redact``: whose redactor masks an exception's
    text (the App; ``pgq.core.redaction.redactor_of``). Its context is injected even when the span is
    sampled out (valid, not recording): the consumer must then be sampled out too."""
    tracer = _tracer()
    if tracer is None:
        return NOT_TRACED
    attributes = {"messaging.system": SYSTEM, "messaging.operation.name": "send",
                  "messaging.operation.type": "send"}
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if task is not None:
        attributes["pgq.task"] = task
    span = tracer.start_span(f"send {queue}" if queue is not None else "send",
                             kind=_otel.PRODUCER, attributes=attributes)
    if not span.get_span_context().is_valid:
        return NOT_TRACED  # an SDK that is disabled hands out invalid spans
    carrier: dict[str, str] = {}
    _otel.propagate.inject(carrier, context=_otel.trace.set_span_in_context(span))
    return Publish(span, carrier, redact)


# --- the consumer side: one span per attempt, in the worker ----------------------------


class Attempt:
    """The consumer span of one attempt. Started when the job is claimed, current while
    the task (and the app's middleware) runs, ended when the worker forgets the job,
    i.e. once its outcome is stored, with that outcome."""

    __slots__ = ("_error_type", "_task", "span", "trace_id")

    def __init__(self, span: Any, task: Task) -> None:
        self.span = span
        self._task = task
        self.trace_id = format(span.get_span_context().trace_id, "032x")
        """For the job's log records (``pgq_trace_id``)."""
        self._error_type: str | None = None

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Around the task's call, in its thread or asyncio task: spans the task makes
        are children of this one, and an exception it raises is recorded here."""
        token = _otel.context.attach(_otel.trace.set_span_in_context(self.span))
        try:
            yield
        except BaseException as exc:
            # A snooze is a decision, and a cancellation the worker's (timeout, lost
            # lease, shutdown): the outcome says which. Once the span has ended (an
            # abandoned thread returning late), there is nothing left to record on.
            # A sync task returning after its timeout decided the outcome keeps that one.
            if not isinstance(exc, Snooze | asyncio.CancelledError) and self.span.is_recording() \
                    and self._error_type is None:
                self._error_type = _type_name(exc)
                _record(self.span, exc, self._task)
            raise
        finally:
            _otel.context.detach(token)

    def timed_out(self, seconds: float) -> None:
        """The attempt overran its timeout: nothing was raised that ``activate`` could
        record (a sync task's thread is abandoned, an async task only cancelled).
        Idempotent: the executor says it before telling a sync task, then again with
        the outcome."""
        if self._error_type == "pgq.Timeout":
            return
        self._error_type = "pgq.Timeout"
        if self.span.is_recording():
            self.span.add_event("pgq.timeout", {"pgq.timeout_seconds": seconds})

    def end(self, outcome: str) -> None:
        if not self.span.is_recording():
            return  # sampled out (a no-op span), or already ended
        self.span.set_attribute("pgq.outcome", outcome)
        if outcome in ERROR_OUTCOMES:
            self.span.set_attribute("error.type", self._error_type or "_OTHER")
            self.span.set_status(_otel.Status(_otel.ERROR, self._error_type or outcome))
        self.span.end()


def attempt_span(carrier: Mapping[str, Any] | None, job_id: int, queue: str, task: Task,
                 number: int) -> Attempt | None:
    """A consumer span for a claimed job's attempt ``number``, the child of the
    context in ``carrier`` (the job's ``meta->'_pgq_trace'``), or None when nothing
    records."""
    tracer = _tracer()
    if tracer is None:
        return None
    parent = _otel.context.Context()  # never the worker's own current context
    if carrier:
        parent = _otel.propagate.extract(carrier, context=parent)
    span = tracer.start_span(f"process {queue}", context=parent, kind=_otel.CONSUMER, attributes={
        "messaging.system": SYSTEM, "messaging.operation.name": "process",
        "messaging.operation.type": "process", "messaging.destination.name": queue,
        "messaging.message.id": str(job_id), "pgq.task": task.name, "pgq.attempt": number})
    return Attempt(span, task) if span.get_span_context().is_valid else None


def _record(span: Any, exc: BaseException, redact: object) -> None:
    """``span.record_exception``, its text cut and redacted like an ``errors`` entry's
    (``redact``: a Task or an App, whose redactor applies)."""
    try:
        message = str(exc)[:MESSAGE_CHARS]
    except Exception:  # a broken __str__ must not cost the outcome
        message = ""
    stacktrace = "".join(traceback.format_exception(exc))[-STACKTRACE_CHARS:]
    span.record_exception(exc, attributes={
        "exception.message": redact_text(redact, message),
        "exception.stacktrace": redact_text(redact, stacktrace)})


def _version() -> str | None:
    """pgq's version for the instrumentation scope (``pgq.__version__``, which this
    layer cannot import)."""
    try:
        return version("pgq-jobs")
    except PackageNotFoundError:
        return None


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
