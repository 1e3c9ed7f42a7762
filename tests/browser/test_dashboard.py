"""The dashboard in a real browser (Debian's Chromium, Playwright): an operator's and a
read-only user's sessions, each against a real server, database and worker. Pages are
waited on for what they show (their live block refreshes every few seconds), never
slept on."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, Response, expect

import pgq
from tests.browser.conftest import DESKTOP, PHONE, RunningWorker, csrf_of, sign_in
from tests.web.conftest import READER, READER_PASSWORD

pytestmark = pytest.mark.timeout(60)

Worker = Callable[..., RunningWorker]


def post_to_ledger(amount: int) -> None:
    """A failure with a traceback worth reading: two frames deep."""
    raise ConnectionError(f"ledger unreachable while posting {amount}")


def fail_for_good(worker_app: pgq.App, start_worker: Worker, pgq_app: pgq.App,
                  *queues: str) -> int:
    """A dead letter: a job of a task that fails on its only attempt while the app's
    ``state_ok`` is false, run by a worker started here (serving ``queues`` too)."""
    @worker_app.task(name="ledger.post")
    def post(amount: int) -> int:
        if not worker_app.state_ok:  # type: ignore[attr-defined]
            post_to_ledger(amount)
        return amount

    worker_app.state_ok = False  # type: ignore[attr-defined]
    # The web app's App does not know the task: the options are the enqueuer's.
    job_id = pgq_app.enqueue("ledger.post", {"amount": 42}, max_attempts=1).id
    start_worker("default", *queues)
    with pytest.raises(pgq.JobFailed):
        pgq_app.jobs.result(job_id, timeout=15)
    return job_id


def flash(page: Page) -> str:
    return page.get_by_role("status").first.inner_text()


# --- an operator's session -------------------------------------------------------------


def test_an_operator_signs_in_through_the_form_and_sees_the_overview(
        page: Page, pgq_app: pgq.App) -> None:
    pgq_app.enqueue("mail.send", {"to": "a@example.com"}, queue="mail")
    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fjobs$"))
    page.get_by_label("User").fill("olivia")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    sign_in(page)
    expect(page.locator("header .who")).to_contain_text("olivia")
    expect(page.locator('tr[data-queue="mail"] td[data-state="available"]')).to_have_text("1")


def test_a_queue_drains_on_the_overview_without_a_reload(
        page: Page, pgq_app: pgq.App, worker_app: pgq.App, start_worker: Worker) -> None:
    @worker_app.task(name="browser.quick", queue="drain")
    def quick(n: int) -> int:
        return n

    count = 12
    for n in range(count):
        pgq_app.enqueue("browser.quick", {"n": n}, queue="drain")
    sign_in(page)
    row = page.locator('tr[data-queue="drain"]')
    expect(row.locator('td[data-state="available"]')).to_have_text(str(count))
    page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
    start_worker("drain")
    expect(row.locator('td[data-state="available"]')).to_have_text("0")
    expect(row.locator('td[data-state="running"]')).to_have_text("0")
    expect(page.locator('[data-total="waiting"] b')).to_have_text("0")
    assert page.evaluate("window.sameDocument") is True, "the counts changed without a reload"
    # The overview's completed column is the planner's estimate (none yet on a fresh
    # table); the queue's jobs list shows each of them.
    row.get_by_role("link", name="drain").click()
    expect(page.locator("tr[data-job] .state")).to_have_text(["completed"] * count)


def test_an_operator_reads_a_dead_letters_traceback_retries_it_and_watches_it_complete(
        page: Page, pgq_app: pgq.App, worker_app: pgq.App, start_worker: Worker) -> None:
    job_id = fail_for_good(worker_app, start_worker, pgq_app)
    sign_in(page)
    expect(page.locator('tr[data-queue="default"] td[data-dead-letters]')).to_have_text("1")
    page.get_by_role("navigation").get_by_role("link", name="Dead letters").click()
    group = page.locator('tr[data-task="ledger.post"]')
    expect(group).to_contain_text("ConnectionError")
    expect(group).to_contain_text("ledger unreachable while posting 42")
    group.get_by_role("link", name=str(job_id)).click()

    expect(page.locator("h1 .state")).to_have_text("failed")
    traceback = page.locator("pre.traceback")
    expect(traceback).to_contain_text("in post_to_ledger")
    expect(traceback).to_contain_text("ConnectionError: ledger unreachable while posting 42")

    worker_app.state_ok = True  # type: ignore[attr-defined]  # the ledger is back
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text(f"job {job_id} retried")
    expect(page.locator("h1 .state")).to_have_text("completed")  # the page refreshes itself
    expect(page.locator("pre.result")).to_have_text("42")
    expect(page.locator("ol.timeline")).to_contain_text("retry by olivia")


def test_an_operator_cancels_a_running_job(
        page: Page, pgq_app: pgq.App, worker_app: pgq.App, start_worker: Worker,
        release: threading.Event) -> None:
    running, told = threading.Event(), threading.Event()

    @worker_app.task(name="report.build")
    def build(ctx: pgq.Context) -> None:
        running.set()
        if ctx.cancelled.wait(30) and not release.is_set():
            told.set()

    job_id = pgq_app.enqueue("report.build").id
    start_worker()
    assert running.wait(10), "the job started"
    sign_in(page)
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("h1 .state")).to_have_text("running")
    questions: list[str] = []

    def answer(dialog: object) -> None:
        questions.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.once("dialog", answer)
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("status")).to_have_text(f"job {job_id} cancelled")
    expect(page.locator("h1 .state")).to_have_text("cancelled")
    assert questions and "It is running" in questions[0], questions
    assert told.wait(10), "the task was told to stop"
    expect(page.locator("ol.timeline")).to_contain_text("olivia")


def test_an_operator_pauses_and_resumes_a_queue(page: Page, pgq_app: pgq.App) -> None:
    pgq_app.enqueue("mail.send", {"to": "a@example.com"}, queue="mail")
    sign_in(page)
    page.get_by_role("navigation").get_by_role("link", name="Queues").click()
    row = page.locator('tr[data-queue="mail"]')
    row.get_by_label("Reason for pausing mail").fill("SMTP relay down")
    row.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("Queue mail paused")
    expect(row.locator(".state.paused")).to_have_text("paused")
    expect(row).to_contain_text("olivia")
    expect(row).to_contain_text("SMTP relay down")
    (mail,) = [q for q in pgq_app.queues.list() if q.name == "mail"]
    assert mail.paused and mail.paused_by == "olivia"

    row.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("status")).to_have_text("Queue mail resumed.")
    expect(row.get_by_text("active", exact=True)).to_be_visible()
    expect(row.locator(".state.paused")).to_have_count(0)
    expect(row.get_by_role("button", name="Pause")).to_be_visible()
    (mail,) = [q for q in pgq_app.queues.list() if q.name == "mail"]
    assert not mail.paused


# --- a read-only user ------------------------------------------------------------------


def action_controls(page: Page) -> int:
    """Buttons and button-links in the page's content (the header's Sign out aside)."""
    return page.locator("main button, main a.button, main form[method=post]").count()


def test_a_read_only_user_sees_no_actions_and_the_server_refuses_them(
        new_page: Callable[..., Page], pgq_app: pgq.App, worker_app: pgq.App,
        start_worker: Worker) -> None:
    job_id = fail_for_good(worker_app, start_worker, pgq_app)
    pages = [f"/jobs/{job_id}", "/queues", "/dead-letters"]
    operator = new_page()
    sign_in(operator)
    for path in pages:  # the same pages have actions for an operator
        operator.goto(path)
        expect(operator.locator("main")).to_be_visible()
        assert action_controls(operator) > 0, f"an operator has actions on {path}"

    reader = new_page()
    sign_in(reader, READER, READER_PASSWORD)
    expect(reader.locator("header .who")).to_contain_text("(read-only)")
    for path in pages:
        reader.goto(path)
        expect(reader.locator("main h1")).to_be_visible()
        assert action_controls(reader) == 0, f"a read-only user has actions on {path}"

    token = csrf_of(reader)  # a valid session and CSRF token: only the role is missing
    for path, form in [(f"/jobs/{job_id}/retry", {}), ("/queues/default/pause", {"reason": "x"}),
                       ("/dead-letters/retry", {"task": "ledger.post",
                                                "error_type": "ConnectionError"})]:
        answer = reader.request.post(path, form={"csrf_token": token, **form}, max_redirects=0)
        assert answer.status == 403, (path, answer.status, answer.text()[:200])
    job = pgq_app.jobs.get(job_id)
    assert job is not None and job.state == "failed"
    assert not any(q.paused for q in pgq_app.queues.list())


# --- screenshots -----------------------------------------------------------------------


def test_screenshots_of_the_main_pages(
        new_page: Callable[..., Page], pgq_app: pgq.App, worker_app: pgq.App,
        start_worker: Worker, release: threading.Event, screenshots: Path) -> None:
    """Every main page with something on it, at a laptop's size and the overview at a
    phone's, written outside the repository. Each page loads without an error response
    or a console error (a CSP violation is one), and the phone's page does not scroll
    sideways (wide tables scroll inside their own box)."""
    running = threading.Event()

    @worker_app.task(name="report.build", queue="reports")
    def build(ctx: pgq.Context, month: str) -> None:
        running.set()
        release.wait(30)

    @worker_app.task(name="mail.send", queue="mail")
    def send(to: str) -> str:
        return f"sent to {to}"

    pgq_app.cron("0 2 * * *", "report.build", {"month": "current"}, queue="reports",
                 timezone="Europe/Paris")
    mails = [pgq_app.enqueue("mail.send", {"to": f"user{n}@example.com"}, queue="mail").id
             for n in range(3)]
    job_id = fail_for_good(worker_app, start_worker, pgq_app, "mail", "reports")
    pgq_app.enqueue("report.build", {"month": "2024-05"}, queue="reports")
    assert running.wait(10)
    pgq_app.enqueue("mail.send", {"to": "later@example.com"}, queue="mail", delay=3600)
    pgq_app.queues.pause("archive", actor="olivia", reason="disk full")

    page = new_page()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico on its own; the dashboard serves none.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            problems.append(f"{message.text} ({message.location['url']})")

    page.on("console", console)

    def bad(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status} {response.url}")

    page.on("response", bad)
    sign_in(page)
    for mail in mails:
        pgq_app.jobs.result(mail, timeout=10)
    expect(page.locator('tr[data-queue="default"] td[data-dead-letters]')).to_have_text("1")
    expect(page.locator('tr[data-queue="reports"] td[data-state="running"]')).to_have_text("1")
    shots = [("overview", "/"), ("jobs", "/jobs"), ("job", f"/jobs/{job_id}"),
             ("dead-letters", "/dead-letters"), ("queues", "/queues"), ("cron", "/cron"),
             ("workers", "/workers")]
    for name, path in shots:
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        page.screenshot(path=screenshots / f"{name}-desktop.png", full_page=True)
    assert page.viewport_size == DESKTOP

    phone = new_page(viewport=PHONE)
    sign_in(phone)
    phone.screenshot(path=screenshots / "overview-phone.png", full_page=True)
    wide = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wide <= 0, f"the overview scrolls sideways on a phone by {wide}px"
    assert problems == []
