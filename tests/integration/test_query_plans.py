"""The hot path's statements touch only the rows they work on, whatever the planner
believes about the table: no statement of the claim/heartbeat/complete cycle may scan
pgq_jobs sequentially once the table is large and has statistics, and every fenced write
reaches its rows by primary key, even on a table whose indexes are full of entries an
open snapshot keeps alive.

A claim once joined its picked ids to pgq_jobs and, with statistics, hashed a sequential
scan of the whole table on every claim (27 ms at 50,000 rows, growing with the table).
The outcome statement once found its rows through the running-jobs index (by lease
owner, or a scan of the whole partial index): while another session held a snapshot
open, every job a worker had ever finished left a dead entry there that each flush
walked again (issue 12, defect 2). Plans, not timings, are asserted: they are
deterministic for a given table and server. Both the plan for the first executions
(custom, the parameters' values known) and the generic plan a prepared statement may
switch to are checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgq.store.queries import QUERIES
from pgq.worker.claim_cursor import FULL_SCAN

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
             "lease_seconds": 30.0, "now": None, **FULL_SCAN}
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


# --- fenced writes on a table an open snapshot keeps full of dead entries ---------------

FINISHED = 20_000
RUNNING = 64
AVAILABLE = 200
OWNER = "w"


@pytest.fixture
def snapshot_bloated(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], list[int]]]:
    """pgq_jobs as a worker leaves it after draining FINISHED jobs while another session
    holds a REPEATABLE READ snapshot: every job went available -> running -> completed
    under owner OWNER, and none of the old versions can be removed, so the claim index
    and the running-jobs index keep an entry for each; RUNNING jobs of OWNER are running
    now, and AVAILABLE jobs wait behind them. Analyzed, with the snapshot still open.
    Yields the connection and the running jobs' ids."""
    conn = psycopg.connect(db_url, autocommit=True)
    hold = psycopg.connect(db_url, autocommit=True)
    try:
        hold.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        hold.execute("SELECT 1").fetchall()
        conn.execute("INSERT INTO pgq_jobs (queue, task) "
                     "SELECT 'default', 'plan.noop' FROM generate_series(1, %s)",
                     [FINISHED + RUNNING])
        conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = %s, "
                     "started_at = now(), lease_expires_at = now() + interval '1 minute'",
                     [OWNER])
        conn.execute("UPDATE pgq_jobs SET state = 'completed', finished_at = now() "
                     "WHERE id <= (SELECT min(id) + %s - 1 FROM pgq_jobs)", [FINISHED])
        conn.execute("INSERT INTO pgq_jobs (queue, task) "
                     "SELECT 'default', 'plan.noop' FROM generate_series(1, %s)", [AVAILABLE])
        conn.execute("ANALYZE pgq_jobs")
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM pgq_jobs WHERE state = 'running' ORDER BY id").fetchall()]
        assert len(ids) == RUNNING
        yield conn, ids
    finally:
        hold.close()
        conn.close()


def fenced_writes(ids: list[int]) -> dict[str, dict[str, Any]]:
    """Every statement that writes rows of pgq_jobs a worker named, with parameters."""
    n = len(ids)
    return {
        "job_finish_many": {
            "ids": ids, "attempts": [1] * n, "owners": [OWNER] * n, "states": ["completed"] * n,
            "delays": [0.0] * n, "refunds": [0] * n, "results": ["null"] * n,
            "errors": [None] * n, "now": None},
        "job_heartbeat_many": {
            "ids": ids, "attempts": [1] * n, "progress": [None] * n, "worker": OWNER,
            "lease_seconds": 30.0, "now": None},
        "job_lease_extend_many": {
            "ids": ids, "attempts": [1] * n, "owners": [OWNER] * n, "lease_seconds": 30.0,
            "now": None},
        "job_isolate_many": {"ids": ids},
    }


def generic_plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> str:
    """EXPLAIN ANALYZE of the generic plan (the one a prepared statement uses after its
    first executions if it looks no costlier), inside a rolled-back transaction."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", number, QUERIES[name])
    args = ", ".join(f"%({key})s" for key in order)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE fenced AS {sql}")
    try:
        with conn.transaction(force_rollback=True):
            rows = psycopg.ClientCursor(conn).execute(
                f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE fenced({args})", params).fetchall()
    finally:
        conn.execute("DEALLOCATE fenced")
        conn.execute("RESET plan_cache_mode")
    return "\n".join(r[0] for r in rows)


def scans_of_jobs(text: str) -> list[str]:
    """How each node of a plan reads pgq_jobs: "Index Scan using pgq_jobs_pkey", ..."""
    return re.findall(r"(\w[\w ]*Scan(?: using \w+)?) on pgq_jobs\b", text)


def test_every_fenced_write_is_listed() -> None:
    """A new statement that updates jobs fenced on their lease owner must be added to
    fenced_writes, so its plans are checked too."""
    fenced = {name for name, sql in QUERIES.items()
              if sql.lstrip().upper().startswith("UPDATE PGQ_JOBS") and "lease_owner =" in sql}
    assert fenced <= set(fenced_writes([])), fenced - set(fenced_writes([]))


@pytest.mark.parametrize("name", sorted(fenced_writes([])))
def test_fenced_writes_reach_rows_by_primary_key(
        snapshot_bloated: tuple[psycopg.Connection[Any], list[int]], name: str) -> None:
    conn, ids = snapshot_bloated
    params = fenced_writes(ids)[name]
    for kind, text in (("custom", plan(conn, name, params)),
                       ("generic", generic_plan(conn, name, params))):
        scans = scans_of_jobs(text)
        assert scans and all(s.endswith("using pgq_jobs_pkey") for s in scans), \
            f"{name}, {kind} plan:\n{text}"
    # And the write still fences: a stale attempt or another owner changes nothing.
    if "attempts" in params:
        stale = {**params, "attempts": [2] * len(ids)}
        with conn.transaction(force_rollback=True):
            assert conn.execute(QUERIES[name], stale).fetchall() == []


def claim_index_blocks(conn: psycopg.Connection[Any], params: dict[str, Any]) -> tuple[int, list[int]]:
    """Buffers job_claim's walk of pgq_jobs_claim_idx touched, and the ids it claimed
    (in a rolled-back transaction)."""
    def blocks(node: dict[str, Any]) -> int:
        own = (node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
               if node.get("Index Name") == "pgq_jobs_claim_idx" else 0)
        return own + sum(blocks(child) for child in node.get("Plans", []))

    with conn.transaction(force_rollback=True):
        row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES['job_claim']}",
                           params).fetchone()
    assert row is not None
    (doc,) = row
    with conn.transaction(force_rollback=True):
        ids = sorted(r[0] for r in conn.execute(QUERIES["job_claim"], params).fetchall())
    return blocks(doc[0]["Plan"]), ids


def test_claim_from_a_start_skips_the_dead_head(
        snapshot_bloated: tuple[psycopg.Connection[Any], list[int]]) -> None:
    """The claim index still holds an entry for each of the FINISHED + RUNNING jobs
    claimed under the snapshot; a claim from the beginning walks them all, a claim from
    where the live jobs start (what pgq.worker.claim_cursor remembers) does not, and both take
    the same jobs."""
    conn, _ = snapshot_bloated
    first = conn.execute("SELECT priority, run_at, id FROM pgq_jobs WHERE state = 'available' "
                         "ORDER BY priority, run_at, id LIMIT 1").fetchone()
    assert first is not None
    claim = {"queues": ["default"], "limits": [64], "tasks": ["plan.noop"], "worker": "w2",
             "lease_seconds": 30.0, "now": None}
    full, full_ids = claim_index_blocks(conn, {**claim, **FULL_SCAN})
    bounded, bounded_ids = claim_index_blocks(conn, {
        **claim, "start_priorities": [first[0]], "start_run_ats": [first[1]],
        "start_ids": [first[2]]})
    assert len(full_ids) == 64 and bounded_ids == full_ids
    assert full > 50, full  # the dead head: FINISHED + RUNNING entries
    assert bounded * 10 < full, (bounded, full)


# --- the dashboard's job lists (issue 16): a rare filter's first page uses an index ------

LISTED = 20_000


@pytest.fixture
def listed(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """LISTED completed jobs of one busy queue and task, without tags, meta or unique key,
    then five jobs of each rare kind the list filters on; analyzed. (At 10,000,000 rows
    each rare filter below read the whole table: bench/README.md, web_reads.)"""
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("INSERT INTO pgq_jobs (queue, task, state, finished_at) "
                 "SELECT 'busy', 'plan.busy', 'completed', now() FROM generate_series(1, %s)",
                 [LISTED])
    conn.execute(
        "INSERT INTO pgq_jobs (queue, task, state, finished_at, tags, meta, unique_key) "
        "SELECT 'quiet', 'plan.rare', 'failed', now(), ARRAY['rare-tag'], "
        "'{\"tenant\": \"t1\"}', 'key-' || i FROM generate_series(1, 5) AS i")
    # Failed jobs of a common error type, after the rare ones (newest first, a walk meets
    # them first), and the rare ones' type: error_type has its own index (0012).
    conn.execute("UPDATE pgq_jobs SET errors = '[{\"type\": \"RareError\"}]' "
                 "WHERE task = 'plan.rare'")
    conn.execute("INSERT INTO pgq_jobs (queue, task, state, finished_at, errors) "
                 "SELECT 'busy', 'plan.busy', 'failed', now(), "
                 "'[{\"type\": \"Old\"}, {\"type\": \"CommonError\"}]' "
                 "FROM generate_series(1, %s)", [LISTED // 10])
    conn.execute("VACUUM ANALYZE pgq_jobs")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize(("fields", "index"), [
    ({"queue": "quiet"}, "pgq_jobs_queue_done_idx"),
    ({"unique_key": "key-3"}, "pgq_jobs_unique_key_idx"),
    ({"tag": "rare-tag"}, "pgq_jobs_tags_idx"),
    ({"meta": {"tenant": "t1"}}, "pgq_jobs_meta_idx"),
    ({"state": "failed", "task": "plan.rare"}, "pgq_jobs_dead_task_idx"),
    ({"state": "failed", "error_type": "RareError"}, "pgq_jobs_failed_type_idx"),
], ids=["queue", "unique_key", "tag", "meta", "failed+task", "failed+error_type"])
def test_rare_list_filters_use_their_index(listed: psycopg.Connection[Any],
                                           fields: dict[str, Any], index: str) -> None:
    from pgq.client.jobfilter import JobFilter
    params = {**JobFilter(**fields).params(), "ids": None, "limit": 51, "before": None}
    text = plan(listed, "job_list", params)
    assert index in text and "Seq Scan" not in text, text
    rows = listed.execute(QUERIES["job_list"], params).fetchall()
    assert {r[2] for r in rows} == {"plan.rare"} and len(rows) == (1 if "unique_key" in fields else 5)
