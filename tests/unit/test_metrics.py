"""The metrics module without a worker: recording off costs an empty call and imports
nothing; the stats gauges from a stats document; the liveness judge on a lease table."""

from __future__ import annotations

import inspect
import multiprocessing
import subprocess
import sys
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from pgq.observability import metrics
from pgq.worker.health import pulse
from pgq.worker.leasetable import HEARTBEAT, LOOP, LeaseTable


def test_the_worker_does_not_import_prometheus_client_until_metrics_are_enabled() -> None:
    """prometheus-client reads PROMETHEUS_MULTIPROC_DIR once, at import: the supervisor
    must be able to set it after the CLI and the worker are imported."""
    code = ("import sys, pgq, pgq.cli.commands, pgq.worker.supervisor, pgq.worker.telemetry; "
            "assert 'prometheus_client' not in sys.modules, 'imported too early'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_off_recorder_has_every_call_of_the_live_one() -> None:
    live = {name for name, _ in inspect.getmembers(metrics._Live, inspect.isfunction)
            if not name.startswith("_")}
    assert live <= set(dir(metrics.Recorder))
    assert not metrics.Recorder.on and metrics._Live.on


@dataclass
class _Queue:
    counts: dict[str, int] = field(default_factory=lambda: {"available": 3, "failed": 2})
    due: int = 3
    lag_seconds: float | None = 12.5
    dead_letters: int = 2
    live_workers: int = 1
    paused: bool = False


@dataclass
class _Stats:
    queues: dict[str, _Queue]
    age_seconds: float = 4.0


def _scrape(read: object) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = metrics.registry_of([metrics.StatsCollector(read)])  # type: ignore[arg-type]
    text = metrics.exposition(registry)[0].decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_stats_gauges_from_a_document() -> None:
    got = _scrape(lambda: _Stats({"mail": _Queue(), "idle": _Queue(
        counts={}, due=0, lag_seconds=None, dead_letters=0, live_workers=0, paused=True)}))
    assert got["pgq_queue_jobs"] == {(("queue", "mail"), ("state", "available")): 3,
                                     (("queue", "mail"), ("state", "failed")): 2}
    assert got["pgq_queue_oldest_due_age_seconds"] == {(("queue", "idle"),): 0,
                                                       (("queue", "mail"),): 12.5}
    assert got["pgq_queue_paused"] == {(("queue", "idle"),): 1, (("queue", "mail"),): 0}
    assert got["pgq_queue_due_jobs"][(("queue", "mail"),)] == 3
    assert got["pgq_queue_dead_letters"][(("queue", "mail"),)] == 2
    assert got["pgq_queue_live_workers"][(("queue", "mail"),)] == 1
    assert got["pgq_stats_age_seconds"] == {(): 4.0}


def test_no_document_or_a_failed_read_exports_no_gauges() -> None:
    def broken() -> None:
        raise RuntimeError("redis and postgres both gone")

    assert _scrape(lambda: None) == {}
    assert _scrape(broken) == {}


def test_liveness_judges_the_loop_and_the_heartbeat_apart() -> None:
    table = LeaseTable.create(multiprocessing.get_context("spawn"), 4)
    started = 100.0
    # Before the first beat the process start counts: a child importing its app is alive.
    assert pulse(table, started, limit=30, heartbeat_limit=30, now=120.0)["ok"]
    assert not pulse(table, started, limit=30, heartbeat_limit=30, now=140.0)["ok"]
    table.beat(LOOP)
    table.beat(HEARTBEAT)
    loop, beat = table.last_beat(LOOP), table.last_beat(HEARTBEAT)
    assert loop is not None and beat is not None
    fresh = pulse(table, 0.0, limit=30, heartbeat_limit=40, now=loop + 1)
    assert fresh["ok"] and fresh["loop_age_seconds"] < 2
    blocked = pulse(table, 0.0, limit=30, heartbeat_limit=40, now=loop + 35)
    assert not blocked["ok"], "the loop is 35 s late; the heartbeat still within 40"
    assert table.entries() == [], "the pulse words are not lease slots"


def test_values_go_to_the_directory_even_if_the_app_imported_the_client_first(
        tmp_path: object) -> None:
    """The supervisor loads the app (which may import prometheus-client for its own
    metrics) before it sets the directory: its own counts must still reach the files."""
    code = ("import os, sys, prometheus_client; "
            f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}; "
            "from pgq.observability import metrics; "
            "metrics.enable().reclaimed('q', 't', False); "
            "print(sorted(os.listdir(os.environ['PROMETHEUS_MULTIPROC_DIR'])))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert "counter_" in out, out


def test_tallied_observations_land_in_the_buckets_observe_would_choose() -> None:
    """The hot path tallies and ``flush`` writes: the same buckets and sum as the
    client's own ``observe``, bounds included (a value equal to a bound is in it)."""
    code = """
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pgq.observability import metrics
values = [0.0, 0.005, 0.0051, 0.3, 1.0, 2.5, 7.0, 3600.0, 9999.0]
rec = metrics.enable()
for v in values:
    rec.job_ended("q", "t", "completed", v)
    rec.job_started("q", "t")
rec.flush()
mine = {(s.name[len("pgq_job_run_seconds"):], s.labels.get("le")): s.value
        for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        if f.name == "pgq_job_run_seconds" for s in f.samples if not s.name.endswith("_created")}
ref_registry = CollectorRegistry()
ref = Histogram("ref", "", buckets=metrics.RUN_BUCKETS, registry=ref_registry)
for v in values:
    ref.observe(v)
theirs = {(s.name[len("ref"):], s.labels.get("le")): s.value
          for f in text_string_to_metric_families(generate_latest(ref_registry).decode())
          for s in f.samples if s.name != "ref_created"}
assert mine == theirs and len(mine) == len(metrics.RUN_BUCKETS) + 3, (mine, theirs)
started = [s.value for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
           if f.name == "pgq_jobs_started" for s in f.samples if s.name.endswith("_total")]
assert started == [len(values)], started
"""
    subprocess.run([sys.executable, "-c", code], check=True)
