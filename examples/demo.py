"""The pgq demo: enqueue jobs inside application transactions, run a worker, and audit
what happened with SQL.

    python examples/demo.py

Uses PGQ_DATABASE_URL if set, else a PostgreSQL on localhost:5432 (database pgq_demo),
else an embedded PostgreSQL, so it runs on a machine that has only Python.
"""

from __future__ import annotations

import asyncio
import logging
import warnings

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import pgq
from pgq.core.settings import redact_url
from pgq.store import migrate
from pgq.store.embedded import demo_database_url

warnings.filterwarnings("ignore", module="platformdirs")  # pgserver's harmless XDG notice
logging.getLogger("pgserver").setLevel(logging.ERROR)

url, where = demo_database_url()
print(f"database: {where}")
settings = pgq.Settings(database_url=url)
before, after = migrate.upgrade(settings)
print(f"schema:   pgq {after} ({'migrated just now' if before != after else 'already current'})")

app = pgq.App(settings)


QUICK = pgq.Backoff(base=0.5, jitter=0)  # the demo's retries come fast; the default is 30 s, 5 min, ...


@app.task(name="email.receipt", queue="critical", max_attempts=5)
def send_receipt(order_id: int) -> dict[str, object]:
    return {"sent_to": f"customer-of-order-{order_id}"}


@app.task(name="api.sync", max_attempts=5, backoff=QUICK)
def flaky_sync(ctx: pgq.Context) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("upstream API timed out (first attempt fails on purpose)")
    return "synced on a retry"


@app.task(name="report.broken", max_attempts=2, backoff=QUICK)
def broken_report() -> None:
    raise ValueError("report template missing: this job will end in the dead letter")


with psycopg.connect(url, autocommit=True) as admin:
    admin.execute("CREATE TABLE IF NOT EXISTS demo_orders (id serial PRIMARY KEY, item text)")

# 1. SQLAlchemy: the order and its receipt job commit together.
engine = create_engine(settings.sqlalchemy_url, poolclass=NullPool)
with Session(engine) as session, session.begin():
    order_id = session.execute(
        text("INSERT INTO demo_orders (item) VALUES ('book') RETURNING id")).scalar_one()
    committed = app.enqueue(send_receipt, {"order_id": order_id}, conn=session,
                            unique_key=f"receipt:{order_id}", meta={"tenant": "acme"})
engine.dispose()
print(f"\n1. SQLAlchemy session committed: order {order_id} and job {committed.id}")

# 2. psycopg: the transaction rolls back, and the job vanishes with the order.
with psycopg.connect(url) as conn:
    rolled_back_order = conn.execute(
        "INSERT INTO demo_orders (item) VALUES ('lamp') RETURNING id").fetchone()[0]
    rolled_back = app.enqueue("email.receipt", {"order_id": rolled_back_order}, conn=conn)
    conn.rollback()
print(f"2. psycopg transaction rolled back: job {rolled_back.id} was never visible")

# 3. The same unique key again: a duplicate is a result, not an error.
again = app.enqueue(send_receipt, {"order_id": order_id}, unique_key=f"receipt:{order_id}")
print(f"3. enqueue with the same unique key: duplicate={again.duplicate}, id={again.id}")

# 4. Bulk: a thousand jobs in one statement.
many = app.enqueue_many(pgq.JobSpec("email.receipt", {"order_id": i}, queue="bulk", priority=10)
                        for i in range(1000))
print(f"4. enqueue_many: {len(many)} jobs, ids {many[0].id}..{many[-1].id}")

# 5. Bad input is refused before any SQL runs.
try:
    app.enqueue("email.reciept", {"order_id": 1})
except pgq.UnknownTaskError as exc:
    print(f"5. a typo is refused: {exc}")

flaky = app.enqueue(flaky_sync)
broken = app.enqueue(broken_report)

# 6. A worker runs everything until no job is left (demo mode; `pgq worker` runs forever).
print("\n6. running a worker until every job has finished...")
logging.basicConfig(level=logging.WARNING, format="   %(levelname)s %(message)s")
worker = pgq.Worker(app, pgq.WorkerConfig(
    queues=tuple(pgq.parse_queues("critical=3,default=2,bulk=1")), concurrency=8,
    poll_seconds=0.1))
asyncio.run(worker.run_async(stop_when="done"))
print(f"   worker finished: {worker.stats.finished}")
app.close()

AUDIT = """
SELECT id, task, state, attempt, max_attempts, result,
       errors->-1->>'type' AS last_error, left(errors->-1->>'message', 50) AS message
FROM pgq_jobs
WHERE id IN (%(committed)s, %(rolled_back)s, %(flaky)s, %(broken)s)
ORDER BY id
"""
print("\nThe audit query an operator would run:" + AUDIT)
with psycopg.connect(url) as conn:
    cur = conn.execute(AUDIT, {"committed": committed.id, "rolled_back": rolled_back.id,
                               "flaky": flaky.id, "broken": broken.id})
    names = [d.name for d in cur.description or []]
    rows = [[str(v) for v in row] for row in cur.fetchall()]
widths = [max(len(n), *(len(r[i]) for r in rows)) for i, n in enumerate(names)]
print(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
print("-+-".join("-" * w for w in widths))
for row in rows:
    print(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
print(f"({len(rows)} rows: the receipt completed, api.sync completed on its 2nd attempt, "
      f"report.broken is in the dead letter; the rolled-back job {rolled_back.id} never existed)")
print(f"\nEverything above is in {redact_url(url)}; see docs/audit.md for more queries.")

if not where.startswith("embedded"):  # the embedded server stops with this script
    print("\n7. The same jobs in the dashboard (needs the web extra: "
          ".venv/bin/pip install -q -e '.[web]'):")
    print(f"   PGQ_DATABASE_URL='{redact_url(url)}' PGQ_WEB_TOKEN=any-16-or-more-characters "
          ".venv/bin/pgq web")
    print("   then open http://127.0.0.1:8000/ and sign in with that token (docs/web.md).")
