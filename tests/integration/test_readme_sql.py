"""The SQL shown in the README runs against the real schema (the cookbook's queries are
tested in test_audit_cookbook.py)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

import pgq

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_queries_run(settings: pgq.Settings, conn: psycopg.Connection) -> None:
    with pgq.App(settings, strict=False) as app:
        job = app.enqueue("a.task", {"x": 1})
    conn.execute("UPDATE pgq_jobs SET id = 42 WHERE id = %s", [job.id])
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 4
    results = [conn.execute(statement).fetchall() for statement in statements]
    assert results[0][0][:4] == (42, "a.task", "default", "available")
    assert any(row[0] == "default" and row[1] == 1 for r in results for row in r if len(row) == 3)
