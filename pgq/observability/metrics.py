"""Prometheus metrics: the only module that imports ``prometheus_client`` (an optional
extra, ``pip install 'pgq-jobs[metrics]'``).

Recording goes through ``recorder``, which is off (``Recorder``: every call returns at
once) until ``enable`` swaps in a live one, so a worker without the extra, or without
``--metrics-port``, pays one attribute lookup and an empty call per event. The live
recorder tallies the per-job events (started, outcomes, run time, pickup, flushes) in
plain dicts and writes them to prometheus-client in ``flush``, once a second from the
worker's loop: a locked mmap write per value cost 13 µs per job, the tally 2 µs.

Under ``pgq worker --metrics-port`` every process records into files of a per-run
directory (prometheus-client's multiprocess mode; ``PROMETHEUS_MULTIPROC_DIR`` is set
by the supervisor before anything imports the client, which reads it at import), and
the supervisor serves their sum (``multiprocess_registry``). Gauges that describe the
whole system (``pgq_queue_*``) are not recorded by anyone: ``StatsCollector`` reads the
stats cache when scraped, in the serving process only, so N processes do not export N
copies. Metric names and labels are a contract (docs/observability.md; the shipped
alert rules use them): labels are queue, task, state, role, what, never ids or args.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pgq.core import outage
from pgq.core.errors import ConfigError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NEEDS_EXTRA = ("metrics need prometheus-client, which is not installed: "
               "pip install 'pgq-jobs[metrics]'")

OUTCOME_COUNTERS = {"completed": "completed", "retryable": "retried", "failed": "failed",
                    "cancelled": "cancelled", "scheduled": "snoozed",
                    "lease-lost": "lease_lost"}
"""A job's outcome (``HeldJobs.forget``) -> the counter it increments; a job handed back
at shutdown (``available``) is none of them."""
TIMED = frozenset(("completed", "retryable", "failed", "cancelled", "scheduled"))
"""Outcomes of an attempt whose task ran to an end: their run time is observed."""
ROLES = ("wakeups", "leader", "cache")
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               120.0, 300.0, 900.0, 3600.0)
PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  300.0, 900.0, 3600.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BOUNDS: dict[str, tuple[float, ...]] = {"run": RUN_BUCKETS, "pickup": PICKUP_BUCKETS,
                                        "batch": BATCH_BUCKETS, "flush": FLUSH_BUCKETS}


def available() -> bool:
    """Is prometheus-client installed?"""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Recorder:
    """Metrics off: every call does nothing (what the hot path pays without metrics)."""

    on = False

    def job_started(self, queue: str, task: str) -> None: ...
    def job_ended(self, queue: str, task: str, outcome: str, seconds: float) -> None: ...
    def pickup(self, queue: str, seconds: float) -> None: ...
    def flushed(self, size: int, seconds: float) -> None: ...
    def enqueued(self, queue: str, task: str, n: int = 1) -> None: ...
    def reclaimed(self, queue: str, task: str, failed: bool) -> None: ...
    def outage(self, what: str, active: bool) -> None: ...
    def coordination(self, redis: bool) -> None: ...
    def worker_up(self) -> None: ...
    def flush(self) -> None: ...


recorder: Recorder = Recorder()
"""The process's recorder; ``enable`` replaces it."""


class _Live(Recorder):
    on = True

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("queue", "task")) -> Any:
            return Counter(name, doc, labels, registry=registry)

        self._counters = {kind: counter(f"pgq_jobs_{kind}", f"Jobs {kind.replace('_', ' ')}")
                          for kind in ("enqueued", "started", "completed", "retried",
                                       "failed", "cancelled", "snoozed", "reclaimed",
                                       "lease_lost")}
        self._run = Histogram("pgq_job_run_seconds", "Run time of one attempt",
                              ("queue", "task"), buckets=RUN_BUCKETS, registry=registry)
        self._pickup = Histogram(
            "pgq_job_pickup_delay_seconds", "From when a job was due to when a worker "
            "claimed it", ("queue",), buckets=PICKUP_BUCKETS, registry=registry)
        self._batch = Histogram("pgq_outcome_batch_size", "Outcomes per flush statement",
                                buckets=BATCH_BUCKETS, registry=registry)
        self._flush = Histogram("pgq_outcome_flush_seconds", "Latency of one outcome flush",
                                buckets=FLUSH_BUCKETS, registry=registry)
        # Gauges: per process, combined over the live ones by the multiprocess mode (a
        # single process ignores it).
        self._redis = Gauge("pgq_coordination_redis", "1 = the role runs on Redis, 0 = on "
                            "the PostgreSQL fallback (the lowest of the live processes)",
                            ("role",), registry=registry, multiprocess_mode="livemin")
        self._outage_active = Gauge("pgq_outage_active", "1 while an outage of the "
                                    "connection is ongoing (in any live process)", ("what",),
                                    registry=registry, multiprocess_mode="livemax")
        self._outages = Counter("pgq_outages", "Outages begun", ("what",), registry=registry)
        self._up = Gauge("pgq_worker_up", "Live worker processes", registry=registry,
                         multiprocess_mode="livesum")
        self._histograms = {"run": self._run, "pickup": self._pickup, "batch": self._batch,
                            "flush": self._flush}
        self._tally: dict[tuple[str, str, str], int] = {}
        """Counts since the last ``flush``: (counter, queue, task) -> n."""
        self._observed: dict[tuple[str, str, str], list[float]] = {}
        """Observations since the last ``flush``: (histogram, label, label) -> a count per
        bucket (the last one +Inf), then their sum."""

    # The hot path (the worker's event loop): plain dict arithmetic, written to
    # prometheus-client by ``flush`` once a second. Each of the client's own calls
    # takes a lock and writes its mmap'd file, ~2 µs each in multiprocess mode: 13 µs
    # per job for the six values a job touches, where a worker spends ~200 µs per job.

    def _count(self, kind: str, queue: str, task: str) -> None:
        key = (kind, queue, task)
        tally = self._tally
        tally[key] = tally.get(key, 0) + 1

    def _observe(self, kind: str, a: str, b: str, value: float) -> None:
        key = (kind, a, b)
        seen = self._observed.get(key)
        if seen is None:
            seen = self._observed[key] = [0.0] * (len(BOUNDS[kind]) + 2)
        seen[bisect_left(BOUNDS[kind], value)] += 1  # the first bucket with value <= bound
        seen[-1] += value

    def job_started(self, queue: str, task: str) -> None:
        self._count("started", queue, task)

    def job_ended(self, queue: str, task: str, outcome: str, seconds: float) -> None:
        kind = OUTCOME_COUNTERS.get(outcome)
        if kind is not None:
            self._count(kind, queue, task)
        if outcome in TIMED:
            self._observe("run", queue, task, seconds)

    def pickup(self, queue: str, seconds: float) -> None:
        self._observe("pickup", queue, "", max(0.0, seconds))

    def flushed(self, size: int, seconds: float) -> None:
        self._observe("batch", "", "", size)
        self._observe("flush", "", "", seconds)

    def flush(self) -> None:
        """Write what the hot path tallied to prometheus-client (once a second from the
        worker's loop tick, and when it stops); call it on the thread that records."""
        tally, self._tally = self._tally, {}
        observed, self._observed = self._observed, {}
        for (kind, queue, task), n in tally.items():
            self._counters[kind].labels(queue, task).inc(n)
        for (kind, a, b), seen in observed.items():
            metric = self._histograms[kind]
            labels = (a, b) if kind == "run" else (a,) if kind == "pickup" else ()
            child = metric.labels(*labels) if labels else metric
            # What Histogram.observe does per value, once per bucket: the client has no
            # public call for adding a batch of observations.
            for i, hits in enumerate(seen[:-1]):
                if hits:
                    child._buckets[i].inc(hits)
            child._sum.inc(seen[-1])
    # Elsewhere (rare, or on threads of their own): straight to prometheus-client.

    def enqueued(self, queue: str, task: str, n: int = 1) -> None:
        self._counters["enqueued"].labels(queue, task).inc(n)

    def reclaimed(self, queue: str, task: str, failed: bool) -> None:
        self._counters["reclaimed"].labels(queue, task).inc()
        if failed:
            self._counters["failed"].labels(queue, task).inc()

    def outage(self, what: str, active: bool) -> None:
        if active:
            self._outages.labels(what).inc()
        self._outage_active.labels(what).set(1 if active else 0)

    def coordination(self, redis: bool) -> None:
        for role in ROLES:
            self._redis.labels(role).set(1 if redis else 0)

    def worker_up(self) -> None:
        self._up.set(1)


def enable() -> Recorder:
    """Turn recording on in this process (idempotent); raises ``ConfigError`` without
    the extra. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the first
    import of prometheus-client) the values go to that directory's files."""
    global recorder  # noqa: PLW0603 - the one swap that turns recording on
    if recorder.on:
        return recorder
    if not available():
        raise ConfigError(NEEDS_EXTRA)
    multiprocess = bool(os.environ.get(MULTIPROC_ENV))
    registry = None
    if multiprocess:
        from prometheus_client import values

        if values.ValueClass.__name__ != "MmapedValue":
            # The app imported prometheus-client before the directory was set (the
            # supervisor loads it first): values made from now on go to the files.
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY
        registry = REGISTRY
    live = _Live(registry)
    recorder = live
    outage.observer = live.outage
    return live


def mark_dead(pid: int) -> None:
    """A child exited: its live gauges stop counting (multiprocess mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# --- exposition ----------------------------------------------------------------------


def multiprocess_registry(extra: Iterable[Any] = ()) -> Any:
    """A registry summing every process's files in ``PROMETHEUS_MULTIPROC_DIR``, plus
    ``extra`` collectors (objects with ``collect()``)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in extra:
        registry.register(collector)
    return registry


def registry_of(collectors: Iterable[Any]) -> Any:
    """A registry of these collectors only (``pgq metrics``: the stats gauges)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: Any) -> tuple[bytes, str]:
    """The registry's metrics in the text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


class StatsCollector:
    """The ``pgq_queue_*`` gauges from the stats cache, read when scraped.

    ``read`` returns the cached stats document (``pgq.client.stats.Stats``, duck-typed:
    this layer sits below the client) or None when no leader has stored one; it must
    never compute the stats itself (a scrape every few seconds would then be a heavy
    query every few seconds). A stale document is still served: its age is
    ``pgq_stats_age_seconds``, which is what an alert on a dead stats leader reads."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            stats = self.read()
        except Exception:
            stats = None
        if stats is None:
            return
        jobs = GaugeMetricFamily("pgq_queue_jobs", "Jobs by queue and state (stats cache)",
                                 labels=("queue", "state"))
        per_queue = {
            "due": GaugeMetricFamily("pgq_queue_due_jobs", "Jobs due now", labels=("queue",)),
            "lag": GaugeMetricFamily("pgq_queue_oldest_due_age_seconds",
                                     "Age of the oldest due job (0: none due)",
                                     labels=("queue",)),
            "dead": GaugeMetricFamily("pgq_queue_dead_letters", "Failed jobs kept",
                                      labels=("queue",)),
            "workers": GaugeMetricFamily("pgq_queue_live_workers",
                                         "Live workers serving the queue", labels=("queue",)),
            "paused": GaugeMetricFamily("pgq_queue_paused", "1 paused, 0 not",
                                        labels=("queue",)),
        }
        for name, q in sorted(stats.queues.items()):
            for state, count in sorted(q.counts.items()):
                jobs.add_metric((name, state), count)
            per_queue["due"].add_metric((name,), q.due)
            per_queue["lag"].add_metric((name,), q.lag_seconds or 0.0)
            per_queue["dead"].add_metric((name,), q.dead_letters)
            per_queue["workers"].add_metric((name,), q.live_workers)
            per_queue["paused"].add_metric((name,), 1 if q.paused else 0)
        yield jobs
        yield from per_queue.values()
        age = GaugeMetricFamily("pgq_stats_age_seconds", "Age of the stats document served")
        age.add_metric((), stats.age_seconds)
        yield age
