from datetime import timedelta

import psycopg

import pgq

app = pgq.App.from_env(strict=False)  # producer only: the task lives in another service

with psycopg.connect(app.settings.database_url) as conn, conn.transaction():
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY)")
    conn.execute("INSERT INTO orders VALUES (7) ON CONFLICT DO NOTHING")
    receipt = app.enqueue("email.receipt", {"order_id": 7}, conn=conn, unique_key="receipt:7")
    report = app.enqueue("report.daily", {"day": "2026-11-24"}, conn=conn,
                         delay=timedelta(hours=1), queue="bulk", tags=["reports"])

again = app.enqueue("email.receipt", {"order_id": 7}, unique_key="receipt:7")
assert again.duplicate and again.id == receipt.id  # a duplicate is a value, not an error
print(f"receipt job {receipt.id}, report job {report.id} (scheduled), duplicate -> {again.id}")
app.close()
