"""What a user of the dashboard waits for on a 10,000,000-row ``pgq_jobs`` (issue 16): the
HTTP answers of the web app, not only the reads under it (``bench/web_reads.py``). Same
kept database (``PGQ_BENCH_WEB_DB``), same seed, same filters.

Server: ``python -m pgq web`` (``pgq.web.create_app`` with a ``WebConfig`` token from
``PGQ_WEB_TOKEN``, under uvicorn) in a subprocess on a free port, as an operator runs it;
the client is ``httpx`` over a kept-alive connection, as a browser holds one. A separate
process, not the in-process TestClient: the server's event loop, its pools and its
rendering then do not share a GIL with the client's timing loop, and the time measured
includes the socket, uvicorn's HTTP parsing, every middleware (session, body limit,
security headers), the auth guard, the template or the JSON encoding. The pages and the
API read through the web app's reads App (``pgq.web.factory.reads_app``): its connections
carry the 5 s statement timeout, so a filter that walks the table answers an error then.

Timed: ``WARMUP`` rounds then ``READS``, each round every request once, wall time from
sending to the last byte of the body; an answer other than 200 is reported. A stats leader thread
refreshes the cached overview every 5 s (as a worker's does). Baseline in the same rounds:
``GET /api/jobs/{id}`` (a primary-key read through the whole HTTP path).

``error_type`` (``coalesce(errors->-1->>'type', '')``, the dead-letter groups' key) is
measured through the API with ``state=failed``, for a common type (a fifth of the failed
jobs) and a rare one: ``RARE_ERRORS`` failed jobs of type ``RareError``, 29 days old (the
newest-first walk meets them last), added to the kept database when absent.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import psycopg

import pgq
from bench.web_reads import READS, WARMUP, WebReadsResult, _lead, plan_of
from pgq.scheduling.stats import StatsService

TOKEN = secrets.token_urlsafe(24)  # per run: the server is reachable by anyone on the host
RARE_ERRORS = 20
BASELINE = "baseline: GET /api/jobs/{id}"


def ensure_rare_errors(url: str) -> None:
    """The rare error type's jobs, once per database (the seed has five common types)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pgq_jobs WHERE task = 'rare.fail'").fetchone():
            return
        conn.execute(
            "INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, started_at, "
            "finished_at, errors) SELECT 'q1', 'rare.fail', 'failed', 1, t, t, t, t, "
            "jsonb_build_array(jsonb_build_object('attempt', 1, 'at', t, 'type', 'RareError', "
            "'message', 'rare', 'traceback', '')) FROM generate_series(1, %s) AS i, "
            "LATERAL (SELECT now() - interval '29 days' + i * interval '1 minute' AS t) AS r",
            [RARE_ERRORS])


def requests(probe: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """name -> (path, query, the JobFilter fields for its plan or None)."""
    since = probe["now"].isoformat()
    pages: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {
        "page: GET / (overview)": ("/", {}, None),
        "page: /jobs": ("/jobs", {}, None),
        "page: /jobs state=failed": ("/jobs", {"state": "failed"}, None),
        "page: /jobs state=available": ("/jobs", {"state": "available"}, None),
        "page: /jobs queue=q7": ("/jobs", {"queue": "q7"}, None),
        "page: /jobs task=t20": ("/jobs", {"task": "t20"}, None),
        "page: /jobs tag=tag7": ("/jobs", {"tag": "tag7"}, None),
        "page: /jobs meta tenant-42": ("/jobs", {"meta": "tenant=tenant-42"}, None),
        "page: /jobs unique_key": ("/jobs", {"unique_key": probe["unique_key"]}, None),
        "page: /jobs state=failed+queue=q3": ("/jobs", {"state": "failed", "queue": "q3"}, None),
        "page: /jobs since=1h": ("/jobs", {"since": "1h"}, None),
        "page: /jobs task=rare.task (old)": ("/jobs", {"task": "rare.task"}, None),
        "page: /jobs queue=quiet (old)": ("/jobs", {"queue": "quiet"}, None),
        "api: /api/jobs state=failed": ("/api/jobs", {"state": "failed"}, None),
        "api: /api/jobs since (1h)": ("/api/jobs", {"since": since}, None),
        "api: failed+error_type=KeyError": (
            "/api/jobs", {"state": "failed", "error_type": "KeyError"},
            {"state": "failed", "error_type": "KeyError"}),
        "api: failed+error_type=RareError": (
            "/api/jobs", {"state": "failed", "error_type": "RareError"},
            {"state": "failed", "error_type": "RareError"}),
    }
    return pages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``pgq web`` on a free port, once it answers its health check."""
    port = free_port()
    env = {**os.environ, "PGQ_DATABASE_URL": url, "PGQ_REDIS_URL": redis_url,
           "PGQ_WEB_TOKEN": TOKEN}
    server = subprocess.Popen([sys.executable, "-m", "pgq", "web", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a subprocess: no event to await, so ask it
        if server.poll() is not None:
            raise RuntimeError(f"pgq web exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("pgq web did not answer within 60 s")


def run_http(url: str, *, runs: int = READS) -> WebReadsResult:
    ensure_rare_errors(url)
    redis_url = os.environ.get("PGQ_REDIS_URL", "redis://127.0.0.1:6379/0")
    result = WebReadsResult("web_http", 0, 0.0, baseline=BASELINE)
    settings = pgq.Settings(database_url=url, redis_url=redis_url)
    server, base = serve(url, redis_url)
    try:
        with pgq.App(settings, strict=False) as app, \
                psycopg.connect(url, autocommit=True) as conn, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            service = StatsService(app, holder="bench")
            service.refresh(conn)
            stop = threading.Event()
            leader = threading.Thread(target=_lead, args=(service, url, stop), daemon=True)
            leader.start()
            row = conn.execute(
                "SELECT max(id), now(), count(*), (SELECT unique_key FROM pgq_jobs WHERE "
                "unique_key IS NOT NULL AND state = 'completed' ORDER BY id LIMIT 1 OFFSET 100) "
                "FROM pgq_jobs").fetchone()
            assert row is not None
            result.rows = row[2]
            probe = {"id": row[0] - 5000, "now": row[1] - timedelta(hours=1), "unique_key": row[3]}
            calls = {BASELINE: (f"/api/jobs/{probe['id']}", {}, None), **requests(probe)}
            result.times = {name: [] for name in calls}
            for round_ in range(WARMUP + runs):
                for name, (path, query, _) in calls.items():
                    began = time.perf_counter()
                    answer = client.get(path, params=query)
                    took = time.perf_counter() - began
                    if answer.status_code != 200:  # timed all the same, and reported
                        result.notes.append(f"{name}: {answer.status_code} "
                                            f"{answer.text[:120]}")
                    if round_ >= WARMUP:
                        result.times[name].append(took)
            stop.set()
            leader.join()
            result.plans = {name: plan_of(conn, fields)
                            for name, (_, _, fields) in calls.items() if fields is not None}
    finally:
        server.terminate()
        server.wait(30)
    return result


WEB_HTTP = {"web_http": run_http}
