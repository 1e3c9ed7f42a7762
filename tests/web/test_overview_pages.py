"""The overview, queues, cron and workers pages: what they show from the stats cache, the
queue registry, the cron fires and the worker registry; pause/resume by an operator only;
job data (a pause reason) rendered as text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

import pgq
from pgq.client.stats import ThroughputPoint
from pgq.scheduling.scheduler import Scheduler
from pgq.scheduling.stats import StatsService
from pgq.web import create_app
from pgq.web.chart import HEIGHT, PAD, WIDTH, throughput_chart
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD, sign_in, web_config

SCRIPT = "<script>alert(1)</script>"


def row(html: str, queue: str) -> str:
    found = re.search(rf'<tr data-queue="{re.escape(queue)}">(.*?)</tr>', html, re.S)
    assert found, f"no row for queue {queue}"
    return found.group(1)


def cell(html: str, queue: str, state: str) -> str:
    found = re.search(rf'data-state="{state}">(\d+)', row(html, queue))
    assert found
    return found.group(1)


@pytest.fixture
def signed_in(make_app: Callable[..., pgq.App]) -> Iterator[Callable[[pgq.App], TestClient]]:
    """A TestClient signed in as the operator over a given App (one with a clock or cron
    entries of its own)."""
    clients: list[TestClient] = []

    def make(app: pgq.App) -> TestClient:
        c = TestClient(create_app(app, web_config()), follow_redirects=False)
        clients.append(c.__enter__())
        sign_in(c, OPERATOR, OPERATOR_PASSWORD)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_overview_shows_a_queues_counts_from_the_stats_leader(
        pgq_app: pgq.App, conn: psycopg.Connection,
        reader: tuple[TestClient, str]) -> None:
    client, _ = reader
    for _ in range(3):
        pgq_app.enqueue("mail.send", {"to": "x"}, queue="mail")
    pgq_app.enqueue("mail.send", queue="mail", delay=timedelta(hours=1))
    dead = pgq_app.enqueue("mail.send", queue="mail").id
    conn.execute("UPDATE pgq_jobs SET state = 'failed', finished_at = now(), "
                 "attempt = max_attempts WHERE id = %s", (dead,))
    StatsService(pgq_app, holder="test").refresh(conn)
    page = client.get("/").text
    assert (cell(page, "mail", "available"), cell(page, "mail", "scheduled")) == ("3", "1")
    assert '<a href="/jobs?queue=mail">mail</a>' in row(page, "mail")
    assert re.search(r'data-total="waiting"><b>4</b>', page)
    assert '<a href="/jobs?queue=mail&amp;state=failed">1</a>' in row(page, "mail")
    assert re.search(r'data-total="failed"><b><a href="/dead-letters">1</a>', page)
    assert "Stats from redis" in page and "Stale" not in page
    assert "No history yet: the stats leader records one point a minute." in page
    assert "<svg" not in page
    partial = client.get("/", headers={"X-PGQ-Partial": "1"}).text
    # The live block, after the refresh interval the script reads from it.
    assert partial.startswith('<span hidden data-refresh="3"></span><h1>Overview</h1>')
    assert "<html" not in partial


def test_overview_draws_the_last_hours_throughput(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        signed_in: Callable[[pgq.App], TestClient]) -> None:
    clock = pgq.ManualClock(datetime.now(UTC))
    app = make_app(strict=False, clock=clock)
    app.enqueue("mail.send", queue="mail")
    service = StatsService(app, holder="test")
    service.refresh(conn)
    clock.advance(timedelta(minutes=1))
    service.refresh(conn)  # the first refresh of a new minute records a point
    page = signed_in(app).get("/").text
    assert re.search(r'<svg class="chart"[^>]*role="img"', page)
    assert re.search(r'<polyline class="completed" points="[\d.]+,[\d.]+"/>', page)
    assert '<circle class="completed dot"' in page, "a single point gets a marker"
    assert "No history yet" not in page


def test_overview_says_stale_when_the_leader_has_missed_refreshes(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        signed_in: Callable[[pgq.App], TestClient]) -> None:
    app = make_app(strict=False, clock=pgq.ManualClock(datetime.now(UTC) - timedelta(seconds=11)))
    StatsService(app, holder="test", every=5).refresh(conn)  # 11 s old: two refreshes missed
    page = signed_in(app).get("/").text
    assert "Stale: these stats were computed" in page and "refreshes every 5s." in page


def test_the_chart_scales_points_to_the_hour_and_the_busiest_minute() -> None:
    assert throughput_chart([]) is None
    end = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    points = [ThroughputPoint(end - timedelta(minutes=60), 2, 0, {"a": {"completed": 2}}),
              ThroughputPoint(end - timedelta(minutes=30), 10, 5,
                              {"a": {"completed": 4, "failed": 5}, "b": {"completed": 6}}),
              ThroughputPoint(end, 0, 1, {"a": {"failed": 1}})]
    chart = throughput_chart(points)
    assert chart is not None and chart.peak == 10
    completed, failed = chart.series
    bottom, top = HEIGHT - PAD, PAD
    left, right = PAD, WIDTH - PAD  # inset, so a marker at either edge is whole
    assert completed.points == f"{left},{bottom - 2 / 10 * (bottom - top):.1f} " \
        f"{WIDTH / 2},{top} {right},{bottom}"
    assert (completed.total, failed.total, completed.dots) == (12, 6, ())
    assert chart.per_queue == {"a": {"completed": 6, "failed": 6},
                               "b": {"completed": 6, "failed": 0}}
    older = ThroughputPoint(end - timedelta(minutes=61), 99, 0, {})
    assert throughput_chart([older, *points]) == chart, "over an hour old: left out"


def test_an_operator_pauses_and_resumes_a_queue_with_a_reason_shown_as_text(
        pgq_app: pgq.App, operator: tuple[TestClient, str]) -> None:
    client, csrf = operator
    pgq_app.enqueue("mail.send", queue="mail-2.eu")
    page = client.get("/queues").text
    assert 'action="/queues/mail-2.eu/pause"' in page
    answer = client.post("/queues/mail-2.eu/pause", data={"reason": SCRIPT, "csrf_token": csrf})
    assert (answer.status_code, answer.headers["location"]) == (303, "/queues")
    (info,) = pgq_app.queues.list()
    assert (info.paused, info.paused_by, info.pause_reason) == (True, OPERATOR, SCRIPT)
    page = client.get("/queues").text
    assert "Queue mail-2.eu paused" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in row(page, "mail-2.eu")
    assert SCRIPT not in page
    assert 'action="/queues/mail-2.eu/resume"' in page
    answer = client.post("/queues/mail-2.eu/resume", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert not pgq_app.queues.list()[0].paused
    assert "Queue mail-2.eu resumed." in client.get("/queues").text


def test_bad_pause_input_is_a_422_on_the_page(pgq_app: pgq.App,
                                              operator: tuple[TestClient, str]) -> None:
    client, csrf = operator
    answer = client.post("/queues/bad%20name/pause", data={"csrf_token": csrf})
    assert answer.status_code == 422 and "invalid queue name &#39;bad name&#39;" in answer.text
    answer = client.post("/queues/mail/pause", data={"reason": "x" * 501, "csrf_token": csrf})
    assert answer.status_code == 422 and "a pause reason is at most 500 characters" in answer.text
    answer = client.post("/queues/bad%20name/resume", data={"csrf_token": csrf})
    assert answer.status_code == 422
    assert pgq_app.queues.list() == []


def test_a_reader_sees_no_buttons_and_may_not_pause(pgq_app: pgq.App,
                                                    reader: tuple[TestClient, str]) -> None:
    client, csrf = reader
    pgq_app.enqueue("mail.send", queue="mail")
    page = client.get("/queues").text
    assert 'data-queue="mail"' in page and "/pause" not in page and "<button" not in page.split(
        "<main")[1].split("</main>")[0]
    answer = client.post("/queues/mail/pause", data={"csrf_token": csrf})
    assert answer.status_code == 403 and "may not operate" in answer.text
    assert not pgq_app.queues.list()[0].paused


def test_cron_lists_next_fires_and_a_last_fire_linked_to_its_job(
        make_app: Callable[..., pgq.App], db_url: str,
        signed_in: Callable[[pgq.App], TestClient]) -> None:
    t0 = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)
    app = make_app(strict=False, clock=pgq.ManualClock(t0))
    app.cron("0 * * * *", "cron.report", name="hourly", timezone="Europe/Paris")
    with psycopg.connect(db_url, autocommit=True) as c:
        ((fire,), _) = Scheduler(app, holder="s1").run_once(c)
    page = signed_in(app).get("/cron").text
    assert 'data-entry="hourly"' in page and "0 * * * *" in page and "Europe/Paris" in page
    assert "2030-01-07T10:00:00+00:00" in page and "2030-01-07 11:00:00 CET" in page
    assert f'<a href="/jobs/{fire.job_id}">job {fire.job_id}</a>' in page
    assert '<span class="state s-available">available</span>' in page


def test_cron_without_entries_says_how_to_pass_the_app(reader: tuple[TestClient, str]) -> None:
    client, _ = reader
    page = client.get("/cron").text
    assert "No cron entries" in page and "pgq web --app" in page


def test_workers_lists_live_workers_first(conn: psycopg.Connection,
                                         reader: tuple[TestClient, str]) -> None:
    client, _ = reader
    assert "No workers registered" in client.get("/workers").text
    conn.execute("INSERT INTO pgq_workers (id, host, pid, queues, concurrency, version, running, "
                 "last_seen) VALUES ('a:1:gone', 'h0', 1, '{\"mail\": 1}', 4, '0.1.0', 0, "
                 "now() - interval '1 hour'), "
                 "('h1:42:x', 'h1', 42, '{\"mail\": 3}', 10, '0.1.0', 2, now())")
    page = client.get("/workers").text
    assert page.index('data-worker="h1:42:x" class="alive"') < page.index(
        'data-worker="a:1:gone" class="dead"')
    live = re.search(r'data-worker="h1:42:x".*?</tr>', page, re.S)
    assert live and ">h1<" in live.group(0) and ">42<" in live.group(0)
    assert '<a href="/jobs?queue=mail">mail</a> (3)' in live.group(0)
    assert "1 live of 2 registered." in page
