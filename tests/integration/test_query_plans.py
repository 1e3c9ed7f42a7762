"""The hot path's statements touch only the rows they work on, whatever the planner
believes about the table: no statement of the claim/heartbeat/complete cycle may scan
pgq_jobs sequentially once the table is large and has statistics.

A claim once joined its picked ids to pgq_jobs and, with statistics, hashed a sequential
scan of the whole table on every claim (27 ms at 50,000 rows, growing with the table).
Plans, not timings, are asserted: they are deterministic for a given table and server.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgq.queries import QUERIES

ROWS = 30_000


@pytest.fixture
def analyzed(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(
        "INSERT INTO pgq_jobs (queue, task, state, finished_at) "
        "SELECT 'default', 'plan.noop', CASE WHEN i %% 3 = 0 THEN 'available' ELSE 'completed' END, "
        "CASE WHEN i %% 3 = 0 THEN NULL ELSE now() END FROM generate_series(1, %s) AS i", [ROWS])
    conn.execute("VACUUM ANALYZE pgq_jobs")
    return conn


def plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> str:
    """EXPLAIN ANALYZE inside a rolled-back transaction: the real plan, no lasting effect."""
    with conn.transaction(force_rollback=True):
        rows = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {QUERIES[name]}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_claim_heartbeat_and_finish_use_indexes(analyzed: psycopg.Connection[Any]) -> None:
    conn = analyzed
    claim = {"queues": ["default"], "limits": [64], "tasks": ["plan.noop"], "worker": "w",
             "lease_seconds": 30.0, "now": None}
    claim_plan = plan(conn, "job_claim", claim)
    assert "Seq Scan on pgq_jobs" not in claim_plan, claim_plan
    # Claim for real (committed) so the heartbeat and finish plans see running jobs.
    rows = conn.execute(QUERIES["job_claim"], claim).fetchall()
    assert len(rows) == 64
    ids, n = [r[0] for r in rows], len(rows)
    beat = plan(conn, "job_heartbeat_many", {
        "ids": ids, "attempts": [1] * n, "progress": [None] * n, "worker": "w",
        "lease_seconds": 30.0, "now": None})
    assert "Seq Scan on pgq_jobs" not in beat, beat
    finish = plan(conn, "job_finish_many", {
        "ids": ids, "attempts": [1] * n, "owners": ["w"] * n, "states": ["completed"] * n,
        "delays": [0.0] * n, "refunds": [0] * n, "results": ["null"] * n, "errors": [None] * n,
        "now": None})
    assert "Seq Scan on pgq_jobs" not in finish, finish
