"""How ``pgq jobs retry|cancel|delete|reschedule|priority`` act: on job ids or on a
filter, never both; through the API's batches (each one statement and one commit, so
claims keep flowing); with a progress bar on a terminal; asking first above
``CONFIRM_ABOVE`` jobs unless ``--yes``; ``--dry-run`` prints the count and a sample.

An interrupted run (Ctrl-C) leaves each batch done or not done, and running the same
command again takes only the jobs still in one of the action's source states: nothing
is done twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import click

from pgq.cli.output import NotFound, NothingChanged, emit_json
from pgq.client.admin import SOURCES, Progress, Target
from pgq.client.app import App
from pgq.client.jobfilter import ActionResult, JobFilter
from pgq.core.errors import InvalidOptionError

CONFIRM_ABOVE = 100
"""Jobs an action may change without asking (``--yes`` skips the question)."""

SAMPLE = 10
"""Ids ``--dry-run`` shows."""

PAST = {"retry": "retried", "cancel": "cancelled", "delete": "deleted",
        "reschedule": "rescheduled", "set_priority": "reprioritised"}

Call = Callable[[Target, Progress], ActionResult]


def run_action(app: App, action: str, ids: tuple[int, ...], where: JobFilter | None, *,
               yes: bool, dry_run: bool, as_json: bool, call: Call) -> None:
    if ids and where is not None:
        raise InvalidOptionError("give job ids or filters, not both")
    if not ids and where is None:
        raise InvalidOptionError(f"{action} needs job ids or at least one filter "
                                 "(--state, --queue, --task, ...)")
    target: Target = list(ids) if ids else where  # type: ignore[assignment]  # one is set
    count = len(ids)
    if dry_run or where is not None or len(ids) > CONFIRM_ABOVE:
        preview = app.jobs.preview(action, target, sample=SAMPLE)
        count = preview.count
        if dry_run:
            _dry_run(action, preview.count, preview.sample, as_json)
            return
    if count > CONFIRM_ABOVE and not yes:
        _confirm(action, count)
    done = [0]
    bar = (click.progressbar(length=count, label=PAST[action], file=sys.stderr)
           if count and sys.stderr.isatty() else None)

    def progress(n: int) -> None:
        done[0] += n
        if bar is not None:
            bar.update(n)

    try:
        with bar if bar is not None else nullcontext():
            result = call(target, progress)
    except KeyboardInterrupt:
        # A Ctrl-C that reaches psycopg while a batch's statement runs cancels it, but the
        # server may have committed it already; its count is then lost with its reply.
        click.echo(f"\ninterrupted: {done[0]} jobs {PAST[action]} so far in committed "
                   f"batches, plus the batch in flight if the server committed it first. "
                   f"Run the same command again to finish: it takes only jobs still "
                   f"{' / '.join(SOURCES[action])}, so none twice.", err=True)
        raise click.Abort() from None
    _report(result, bool(ids), as_json)


def _confirm(action: str, count: int) -> None:
    question = f"{action} {count} jobs?"
    if not sys.stdin.isatty():
        raise InvalidOptionError(f"{question} (more than {CONFIRM_ABOVE}): pass --yes to "
                                 "confirm; there is no terminal to ask on")
    click.confirm(question, abort=True, err=True)


def _dry_run(action: str, count: int, sample: tuple[int, ...], as_json: bool) -> None:
    if as_json:
        emit_json({"action": action, "dry_run": True, "count": count, "sample": list(sample)})
    elif count:
        more = ", ..." if count > len(sample) else ""
        click.echo(f"would {action.replace('_', ' ')} {count} jobs: "
                   f"{', '.join(map(str, sample))}{more}")
    if not count:
        raise NothingChanged(f"nothing to {action.replace('_', ' ')}: "
                   f"no job matches in {' / '.join(SOURCES[action])}")


def _report(result: ActionResult, by_ids: bool, as_json: bool) -> None:
    if as_json:
        emit_json({"action": result.action, "dry_run": False, "changed": result.changed,
                   "skipped": {str(k): v for k, v in result.skipped.items()}})
    else:
        click.echo(f"{PAST[result.action]} {result.changed} jobs")
        for job_id, why in result.skipped.items():
            click.echo(f"  skipped job {job_id}: {why}")
    if result.changed:
        return
    if by_ids and result.skipped and all(w == "not found" for w in result.skipped.values()):
        raise NotFound(f"error: no such job: {', '.join(map(str, result.skipped))}")
    raise NothingChanged(f"nothing to {result.action.replace('_', ' ')}: "
               f"no job in {' / '.join(SOURCES[result.action])}")


def action_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--reason", metavar="TEXT", help="Why, recorded with the action."),
        click.option("--actor", metavar="WHO", default=None,
                     help="Who acts, as recorded in pgq_job_actions. [default: the OS user]"),
        click.option("--yes", "-y", is_flag=True,
                     help=f"Do not ask, even above {CONFIRM_ABOVE} jobs."),
        click.option("--dry-run", is_flag=True,
                     help=f"Print how many jobs it would change and {SAMPLE} of their ids; "
                     "change nothing."),
    ]):
        fn = option(fn)
    return fn
