"""Issue 15 items 1 and 2, as operators run them: ``pgq worker --metrics-port`` scraped
and parsed with prometheus-client's own parser after 100 jobs of known outcomes (one
process, then two, whose counts the supervisor sums), its probes (a blocked event loop
fails ``/livez``; a stopped PostgreSQL fails ``/readyz``, which recovers with it), the
``pgq metrics`` exporter's stats gauges and ``pgq health``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgq
from pgq.store import migrate
from tests.support.metrics_app import DDL
from tests.support.pgcluster import PgCluster, free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)

PLAN = {"m.ok": 35, "m.flaky": 20, "m.fail": 15, "m.cancel": 10, "m.snooze": 15, "m.spawn": 5}
"""Jobs per task: 100, and 5 more ``m.ok`` the ``m.spawn`` jobs enqueue."""
EXPECTED = {
    "pgq_jobs_started_total": {"m.ok": 40, "m.flaky": 40, "m.fail": 30, "m.cancel": 10,
                               "m.snooze": 30, "m.spawn": 5},
    "pgq_jobs_completed_total": {"m.ok": 40, "m.flaky": 20, "m.snooze": 15, "m.spawn": 5},
    "pgq_jobs_retried_total": {"m.flaky": 20, "m.fail": 15},
    "pgq_jobs_failed_total": {"m.fail": 15},
    "pgq_jobs_cancelled_total": {"m.cancel": 10},
    "pgq_jobs_snoozed_total": {"m.snooze": 15},
    "pgq_jobs_lease_lost_total": {},
    "pgq_jobs_reclaimed_total": {},
    "pgq_jobs_enqueued_total": {"m.ok": 5},  # by m.spawn; the test's own are not the worker's
}


def _env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PGQ_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PGQ_DATABASE_URL"] = db_url
    return env


@contextmanager
def worker(db_url: str, tmp_path: Path, *args: str, clean: bool = True
           ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    log = tmp_path / f"worker-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "tests.support.metrics_app:app",
             "--poll-interval", "0.05", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port), *args],
            cwd=ROOT, env=_env(db_url), stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
    try:
        wait_until(lambda: _get(port, "/readyz")[0] or process.poll() is not None, 60,
                   "the metrics port to answer")
        assert process.poll() is None, log.read_text()
        yield process, port
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    if clean:
        assert "Traceback" not in log.read_text(), log.read_text()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of ``/metrics``, parsed by prometheus-client: name -> labels -> value."""
    status, text = _get(port, "/metrics")
    assert status == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by_task(samples: dict[str, Any], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        task = dict(labels)["task"]
        assert dict(labels)["queue"] == "default"
        if value:
            out[task] = out.get(task, 0) + value
    return out


def _enqueue_plan(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(DDL)
    with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app:
        # max_attempts given: this app does not know the tasks' own defaults.
        app.enqueue_many([pgq.JobSpec(task, {}, max_attempts=2 if task == "m.fail" else 25)
                          for task, n in PLAN.items() for _ in range(n)])


def _finished(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pgq_jobs WHERE state IN "
                        "('completed', 'failed', 'cancelled')").fetchone()[0]


@pytest.mark.parametrize("processes", [1, 2])
def test_every_counter_after_100_jobs(db_url: str, conn: psycopg.Connection, tmp_path: Path,
                                      processes: int) -> None:
    _enqueue_plan(db_url)
    with worker(db_url, tmp_path, "--processes", str(processes), "--concurrency", "4") \
            as (_process, port):
        wait_until(lambda: _finished(conn) == 105, 120, "the 105 jobs to finish")
        wait_until(lambda: sum(by_task(scrape(port), "pgq_jobs_completed_total").values())
                   == 80, 30, "the last outcomes to be counted")
        samples = scrape(port)
        for name, expected in EXPECTED.items():
            assert by_task(samples, name) == expected, name
        # Each attempt that ran has its run time; each claim its pickup delay; each
        # stored outcome sits in one flush.
        assert by_task(samples, "pgq_job_run_seconds_count") == EXPECTED["pgq_jobs_started_total"]
        assert samples["pgq_job_pickup_delay_seconds_count"] == {(("queue", "default"),): 155}
        assert samples["pgq_outcome_batch_size_sum"][()] == 155
        assert samples["pgq_outcome_flush_seconds_count"][()] == \
            samples["pgq_outcome_batch_size_count"][()]
        assert samples["pgq_worker_up"][()] == processes
        # No Redis configured here: every role is on PostgreSQL by design, not in a
        # fallback, so the gauge PgqRedisFallback watches is not exported at all.
        assert "pgq_coordination_redis" not in samples
        # The stats gauges come from the stats cache, read by the supervisor alone.
        failed = (("queue", "default"), ("state", "failed"))
        wait_until(lambda: scrape(port).get("pgq_queue_jobs", {}).get(failed) == 15, 30,
                   "the stats leader's document after the run")
        samples = scrape(port)
        assert samples["pgq_queue_dead_letters"] == {(("queue", "default"),): 15}
        assert samples["pgq_queue_live_workers"] == {(("queue", "default"),): processes}
        assert samples["pgq_queue_due_jobs"] == {(("queue", "default"),): 0}
        assert samples["pgq_queue_paused"] == {(("queue", "default"),): 0}
        assert 0 <= samples["pgq_stats_age_seconds"][()] < 15
    owners = conn.execute("SELECT count(DISTINCT lease_owner) FROM pgq_jobs").fetchone()[0]
    assert owners == processes, "every process ran some of the jobs, and the sum is theirs"


def test_liveness_fails_while_a_task_blocks_the_event_loop(
        db_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    with worker(db_url, tmp_path, "--liveness-threshold", "2") as (_process, port):
        wait_until(lambda: _get(port, "/livez")[0] == 200, 30, "a live worker")
        with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app:
            app.enqueue("m.block", {"seconds": 6})
        _status, body = wait_until(lambda: (r := _get(port, "/livez"))[0] == 503 and r, 30,
                                  "/livez to fail while the loop is blocked")
        (proc,) = json.loads(body)["processes"]
        assert not proc["ok"] and proc["loop_age_seconds"] > 2
        # Its heartbeat thread still goes round (every 4 s; its limit is 3 intervals).
        assert proc["heartbeat_age_seconds"] < 12, "the loop alone failed the probe"
        wait_until(lambda: _get(port, "/livez")[0] == 200, 30, "/livez once the task returned")


def test_readiness_follows_the_database(tmp_path: Path) -> None:
    cluster = PgCluster().start()
    try:
        url = cluster.url
        migrate.upgrade(pgq.Settings(database_url=url))
        # Not clean: a child whose connection fails at the wrong moment dies and is
        # restarted (with a traceback in the log); the probes are what is tested here.
        with worker(url, tmp_path, "--lease", "4", clean=False) as (_process, port):
            status, body = _get(port, "/readyz")
            assert status == 200 and json.loads(body)["schema"] == json.loads(body)["expected"]
            cluster.stop()
            status, body = wait_until(lambda: (r := _get(port, "/readyz"))[0] == 503 and r, 30,
                                      "/readyz to fail without the database")
            assert "cannot connect" in json.loads(body)["database"]
            assert _get(port, "/livez")[0] == 200, "a database outage is not a restart's job"
            health = _health(url, port)
            assert health.returncode == 1 and not json.loads(health.stdout)["ready"]["ok"]
            cluster.start()
            wait_until(lambda: _get(port, "/readyz")[0] == 200, 60, "/readyz to recover")
            health = _health(url, port)
            assert health.returncode == 0, health.stdout + health.stderr
            report = json.loads(health.stdout)
            assert report["ok"] and report["ready"]["ok"] and report["live"]["ok"]
    finally:
        cluster.destroy()


def _health(url: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgq", "health", "--json", "--metrics-port",
                           str(port), "--timeout", "2"], cwd=ROOT, env=_env(url),
                          capture_output=True, text=True, timeout=60, check=False)


def test_health_without_a_schema_fails(empty_db_url: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pgq", "health"], cwd=ROOT,
                          env=_env(empty_db_url), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    assert done.stdout.startswith("ready: FAIL (database: ok; schema none, expected ")


def test_the_standalone_exporter_serves_the_stats_gauges(db_url: str, tmp_path: Path) -> None:
    with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app, \
            worker(db_url, tmp_path, "--no-maintenance"):
        wait_until(app.cached_stats, 30, "the stats leader's first document")
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "pgq", "metrics", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=_env(db_url),
                                stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _get(port, "/metrics")[0] == 200, 30, "the exporter")
        samples = scrape(port)
        assert (("queue", "default"),) in samples["pgq_queue_live_workers"]
        assert samples["pgq_stats_age_seconds"][()] >= 0
        assert not any(name.startswith("pgq_jobs_") for name in samples)
        assert _get(port, "/readyz")[0] == 200 and _get(port, "/livez")[0] == 200
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=30)


def test_metrics_port_without_the_extra_is_one_line(db_url: str, tmp_path: Path) -> None:
    """prometheus-client made unimportable (a module of that name that raises)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    env = _env(db_url) | {"PYTHONPATH": f"{shadow}:{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "pgq", "worker", "--app",
                           "tests.support.metrics_app:app", "--metrics-port", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["error: --metrics-port: metrics need prometheus-client, which is not "
                      "installed: pip install 'pgq-jobs[metrics]'"], done.stderr


def test_a_killed_childs_job_is_counted_reclaimed_and_its_gauge_dies_with_it(
        db_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    """The supervisor's own recording (its rescue of a dead child's job) reaches the
    sums, and the dead child's pgq_worker_up stops counting (mark_process_dead)."""
    with worker(db_url, tmp_path, "--crash-budget", "1") as (_process, port):
        with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app:
            job_id = app.enqueue("m.block", {"seconds": 60}).id
        wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s",
                                         [job_id]).fetchone()[0] == "running", 30, "the job")
        (child,) = json.loads(_get(port, "/livez")[1])["processes"]
        os.kill(child["pid"], signal.SIGKILL)
        labels = (("queue", "default"), ("task", "m.block"))
        wait_until(lambda: scrape(port).get("pgq_jobs_reclaimed_total", {}).get(labels) == 1,
                   60, "the rescue to be counted")
        # The replacement registers (pgq_workers) after it enabled its metrics.
        wait_until(lambda: conn.execute("SELECT count(*) FROM pgq_workers WHERE pid <> %s",
                                        [child["pid"]]).fetchone()[0], 60,
                   "the replacement child")
        samples = scrape(port)
        assert samples["pgq_jobs_failed_total"][labels] == 1, "its crash budget was 1"
        assert samples["pgq_worker_up"][()] == 1, "the dead child no longer counts"
