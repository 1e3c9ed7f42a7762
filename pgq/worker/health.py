"""Health probes (issue 15): readiness from the database's side, liveness from the pulse
each worker process writes into the memory it shares with its supervisor.

* **Readiness** (``/readyz``, ``pgq health``): a fresh connection answers within the
  worker's dead-peer bound and the schema is at the revision this pgq needs. A worker
  that is not ready should get no traffic and no new deploys routed to it, but
  restarting it would not help: its connections come back with the database.
* **Liveness** (``/livez``): every child's event loop ticked (``Worker._tick``, once a
  second) and its heartbeat thread went round within ``WorkerConfig.liveness_seconds``
  (the heartbeat: at least three intervals). A loop blocked by a task that calls
  ``time.sleep`` in ``async def``, or a deadlocked heartbeat, is what a restart fixes.
  A database outage does not fail liveness: the heartbeat thread still goes round.
"""

from __future__ import annotations

import time
from typing import Any

from pgq.core.errors import MigrationError, PgqError
from pgq.core.settings import Settings
from pgq.store.database import connect, execute
from pgq.store.revision import SCHEMA_REVISION
from pgq.worker.leasetable import HEARTBEAT, LOOP, LeaseTable


def readiness(settings: Settings) -> dict[str, Any]:
    """``{"ok": bool, "database": "ok" or the reason, "schema": revision, "expected": ...}``."""
    report: dict[str, Any] = {"ok": False, "database": "ok", "schema": None,
                              "expected": SCHEMA_REVISION}
    try:
        with connect(settings, autocommit=True) as conn:
            try:
                rows = execute(conn, "schema_version", {})
            except MigrationError:  # no pgq tables: reachable, and no schema
                rows = []
    except PgqError as exc:
        report["database"] = str(exc)
        return report
    report["schema"] = rows[0][0] if rows else None
    report["ok"] = report["schema"] == SCHEMA_REVISION
    return report


def pulse(leases: LeaseTable, started: float, *, limit: float, heartbeat_limit: float,
          now: float | None = None) -> dict[str, Any]:
    """One child's liveness: the age of its loop's last tick and of its heartbeat's last
    round (counted from its start until the first one: a child importing its app is not
    dead yet)."""
    now = time.monotonic() if now is None else now
    loop_age = now - max(leases.last_beat(LOOP) or started, started)
    beat_age = now - max(leases.last_beat(HEARTBEAT) or started, started)
    return {"ok": loop_age <= limit and beat_age <= heartbeat_limit,
            "loop_age_seconds": round(loop_age, 3),
            "heartbeat_age_seconds": round(beat_age, 3)}
