"""``pgq jobs``: list, show, and act on jobs (retry, cancel, delete, reschedule,
priority) through the operations API (docs/operations.md, "CLI")."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click

from pgq.cli.bulk import action_options, run_action
from pgq.cli.options import (
    FILTER_HELP,
    FILTER_KEYS,
    build_filter,
    database_option,
    filter_options,
    json_option,
    operator_app,
    parse_when,
)
from pgq.cli.output import (
    JobCancelledExit,
    JobFailedExit,
    NotFinished,
    NotFound,
    emit_json,
    one_line,
    plain,
    table,
    when,
)
from pgq.client.admin import Progress, Target
from pgq.client.app import App
from pgq.client.display import redacted
from pgq.client.jobfilter import JobFilter, JobRecord
from pgq.client.reads import ActionRecord
from pgq.core.errors import JobCancelled, JobFailed, JobNotFound, ResultTimeout

EXIT_CODES = ("Exit codes: 0 done, 1 error (bad value, database), 2 usage, 3 no such job, "
              "4 nothing to change (or --dry-run found none), 130 interrupted or not confirmed.")


@click.group()
def jobs() -> None:
    """Inspect jobs and act on them. Every command takes --json (one JSON document on
    stdout) and --database-url. See docs/operations.md, "CLI"."""


@jobs.command("list", epilog=FILTER_HELP + " Exit codes: 0 (also for no match), 1 error, 2 usage.")
@filter_options
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, help="Jobs per page.")
@click.option("--cursor", metavar="CURSOR", help="The next page: the cursor the last page printed.")
@json_option
@database_option
def list_jobs(limit: int, cursor: str | None, as_json: bool, database_url: str | None,
              **filters: Any) -> None:
    """Jobs, newest first, one page at a time (keyset pages: stable while jobs arrive)."""
    where = build_filter(**filters) or JobFilter()
    with operator_app(database_url) as app:
        page = app.jobs.list(where, limit=limit, after=cursor)
        page = replace(page, jobs=tuple(redacted(app, job) for job in page.jobs))
    if as_json:
        emit_json({"jobs": [_job_doc(job, attempts=False) for job in page.jobs],
                   "next_cursor": page.next_cursor})
        return
    if not page.jobs:
        click.echo("no jobs match")
        return
    table(["ID", "STATE", "QUEUE", "TASK", "ATTEMPT", "CREATED", "LAST ERROR"],
          [[j.id, j.state.value, j.queue, j.task, f"{j.attempt}/{j.max_attempts}",
            when(j.created_at), _last_error(j)] for j in page.jobs])
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@jobs.command("show", epilog="Exit codes: 0 shown, 1 error, 2 usage, 3 no such job "
              "(with --json, stdout is null).")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@database_option
def show(job_id: int, as_json: bool, database_url: str | None) -> None:
    """One job: args, timeline, every attempt's error and traceback, operator actions."""
    with operator_app(database_url) as app:
        job = app.jobs.get(job_id)
        job = job and redacted(app, job)
        actions = app.jobs.actions(job_id)
    if job is None:
        if as_json:
            emit_json(None)
        raise NotFound(f"error: no job {job_id}"
                   + (f" (it was {actions[-1].action}d by {actions[-1].actor})"
                      if actions and actions[-1].action == "delete" else ""))
    if as_json:
        emit_json({**_job_doc(job, attempts=True), "actions": plain(actions)})
        return
    _show_text(job, actions)


def _job_doc(job: JobRecord, *, attempts: bool) -> dict[str, Any]:
    doc: dict[str, Any] = plain(job)
    if attempts:
        for attempt in doc["attempts"]:
            attempt.pop("raw", None)
    else:
        doc.pop("attempts")
    return doc


def _last_error(job: JobRecord) -> str:
    if not job.attempts:
        return ""
    last = job.attempts[-1]
    return one_line(f"{last.type}: {last.message}", 60)


def _show_text(job: JobRecord, actions: list[ActionRecord]) -> None:
    def field(name: str, value: Any) -> None:
        click.echo(f"  {name:<11}{value}")

    click.echo(f"job {job.id}: {job.task} on queue {job.queue}")
    field("state", f"{job.state.value} (attempt {job.attempt} of {job.max_attempts}, "
          f"priority {job.priority})")
    field("args", json.dumps(job.args, ensure_ascii=False))
    for name, value in (("tags", ", ".join(job.tags)), ("meta", job.meta or ""),
                        ("unique key", job.unique_key or ""), ("progress", job.progress),
                        ("result", job.result)):
        if value not in ("", None):
            field(name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    click.echo("timeline")
    for name, at in (("created", job.created_at), ("run at", job.run_at),
                     ("started", job.started_at), ("finished", job.finished_at)):
        field(name, when(at))
    if job.lease_owner and job.state.value == "running":
        field("lease", f"{job.lease_owner} until {when(job.lease_expires_at)}")
    click.echo(f"attempts with an error ({len(job.attempts)})")
    for a in job.attempts:
        who = f"  [cancelled by {a.actor}]" if a.actor else f"  [worker {a.worker}]" if a.worker else ""
        uncharged = "  (not charged)" if not a.charged else ""
        click.echo(f"  #{a.attempt if a.attempt is not None else '?'}  {when(a.at)}  "
                   f"{a.type}: {a.message}{who}{uncharged}")
        for line in a.traceback.rstrip().splitlines():
            click.echo(f"      {line}")
    click.echo(f"operator actions ({len(actions)})")
    for r in actions:
        came = (r.detail or {}).get("from")
        click.echo(f"  {when(r.at)}  {r.actor}  {r.action}" + (f"  from {came}" if came else "")
                   + (f"  reason: {r.reason}" if r.reason else ""))


# --- actions -------------------------------------------------------------------------

Caller = Callable[[App, Target, Progress, dict[str, Any]], Any]


def _action_command(name: str, action: str, summary: str, call: Caller,
                    extra: list[Callable[..., Any]]) -> click.Command:
    def command(ids: tuple[int, ...], reason: str | None, actor: str | None, yes: bool,
                dry_run: bool, as_json: bool, database_url: str | None, **rest: Any) -> None:
        filters = {k: rest.pop(k) for k in FILTER_KEYS}
        where = build_filter(**filters)
        with operator_app(database_url) as app:
            run_action(app, action, ids, where, yes=yes, dry_run=dry_run, as_json=as_json,
                       call=lambda target, progress: call(
                           app, target, progress, {"actor": actor, "reason": reason, **rest}))

    decorators: list[Callable[[Any], Any]] = [
        click.argument("ids", metavar="[ID]...", nargs=-1, type=click.IntRange(min=1)),
        *extra, filter_options, action_options, json_option, database_option]
    for decorator in reversed(decorators):
        command = decorator(command)
    return jobs.command(name, help=summary + " Give job ids or filters (not both).",
                        epilog=FILTER_HELP + " " + EXIT_CODES)(command)


_action_command(
    "retry", "retry",
    "Run failed, cancelled, retryable or scheduled jobs again (now, or --at WHEN); the "
    "attempt history is kept.",
    lambda app, target, progress, kw: app.jobs.retry(
        target, progress=progress, actor=kw["actor"], reason=kw["reason"],
        run_at=parse_when(kw["at"], "--at", datetime.now(UTC), ago=False),
        extra_attempts=kw["extra_attempts"]),
    [click.option("--at", metavar="WHEN", help="Run then: ISO 8601 or a duration from now (2h)."),
     click.option("--extra-attempts", type=int, metavar="N",
                  help="Attempts granted beyond those used. [default: at least one more]")])
_action_command(
    "cancel", "cancel",
    "Cancel jobs that are waiting (available, scheduled, retryable); running ones are "
    "skipped and reported.",
    lambda app, target, progress, kw: app.jobs.cancel(target, progress=progress, **kw), [])
_action_command(
    "delete", "delete",
    "Delete finished jobs (completed, failed, cancelled); their action records stay.",
    lambda app, target, progress, kw: app.jobs.delete(target, progress=progress, **kw), [])
_action_command(
    "reschedule", "reschedule",
    "Run waiting jobs (available, scheduled, retryable) at another time.",
    lambda app, target, progress, kw: app.jobs.reschedule(
        target, _required(parse_when(kw.pop("at"), "--at", datetime.now(UTC), ago=False), "--at"),
        progress=progress, **kw),
    [click.option("--at", metavar="WHEN", required=True,
                  help="ISO 8601, now, or a duration from now (2h).")])
_action_command(
    "priority", "set_priority",
    "Set the priority (-100..100, lower first) of waiting jobs.",
    lambda app, target, progress, kw: app.jobs.set_priority(
        target, kw.pop("to"), progress=progress, **kw),
    [click.option("--to", type=int, required=True, metavar="N", help="The new priority.")])


def _required(value: datetime | None, option: str) -> datetime:
    assert value is not None, option  # click made the option required
    return value


@jobs.command("result", epilog="Exit codes: 0 completed (its result printed as JSON), 1 error, "
              "2 usage, 3 no such job, 5 failed, 6 cancelled (the last error on stderr; with "
              "--json, the job's state and that error on stdout), 7 not finished within --wait.")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--wait", "wait", type=click.FloatRange(0, 86_400), default=0.0, show_default=True,
              metavar="S", help="Seconds to wait for the job to finish (woken by its "
              "finish, no polling); 0 answers at once.")
@json_option
@database_option
def result(job_id: int, wait: float, as_json: bool, database_url: str | None) -> None:
    """A job's stored result, waiting up to --wait seconds for it to finish."""
    with operator_app(database_url) as app:
        try:
            value = app.jobs.result(job_id, timeout=wait)
        except JobNotFound:
            if as_json:
                emit_json(None)
            raise NotFound(f"error: no job {job_id}") from None
        except (JobFailed, JobCancelled) as exc:
            failed = isinstance(exc, JobFailed)
            if as_json:
                emit_json({"id": job_id, "state": "failed" if failed else "cancelled",
                           "error": exc.error})
            raise (JobFailedExit if failed else JobCancelledExit)(f"error: {exc}") from None
        except ResultTimeout as exc:
            if as_json:
                emit_json({"id": job_id, "state": None, "error": None})
            raise NotFinished(f"error: {exc}") from None
    emit_json({"id": job_id, "state": "completed", "result": value} if as_json else value)
