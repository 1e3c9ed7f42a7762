"""``pgq queues list|pause|resume`` and ``pgq workers`` (the worker registry)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from pgq.cli.options import database_option, json_option, operator_app
from pgq.cli.output import ago, emit_json, table, when
from pgq.client.jobfilter import QueueInfo

EXIT_CODES = "Exit codes: 0 done, 1 error (bad queue name, database), 2 usage."


@click.group()
def queues() -> None:
    """List, pause and resume queues. A pause is honoured by every worker's next claim;
    running jobs finish. See docs/operations.md."""


@queues.command("list", epilog=EXIT_CODES)
@json_option
@database_option
def list_queues(as_json: bool, database_url: str | None) -> None:
    """Every queue that has jobs or settings, and whether it is paused."""
    with operator_app(database_url) as app:
        found = app.queues.list()
    if as_json:
        emit_json({"queues": found})
    elif not found:
        click.echo("no queues: no jobs and no queue settings yet")
    else:
        table(["QUEUE", "PAUSED", "SINCE", "BY", "REASON"],
              [[q.name, "paused" if q.paused else "-", when(q.paused_at) if q.paused else "-",
                (q.paused_by or "-") if q.paused else "-", (q.pause_reason or "") if q.paused else ""]
               for q in found])


@queues.command(epilog=EXIT_CODES)
@click.argument("name")
@click.option("--reason", metavar="TEXT", help="Why, shown with the queue.")
@click.option("--actor", metavar="WHO", help="Who pauses it. [default: the OS user]")
@json_option
@database_option
def pause(name: str, reason: str | None, actor: str | None, as_json: bool,
          database_url: str | None) -> None:
    """Pause queue NAME: workers stop claiming its jobs within one poll interval."""
    with operator_app(database_url) as app:
        _print(app.queues.pause(name, actor=actor, reason=reason), as_json)


@queues.command(epilog=EXIT_CODES)
@click.argument("name")
@click.option("--actor", metavar="WHO", help="Who resumes it. [default: the OS user]")
@json_option
@database_option
def resume(name: str, actor: str | None, as_json: bool, database_url: str | None) -> None:
    """Resume queue NAME: its workers are woken at once."""
    with operator_app(database_url) as app:
        _print(app.queues.resume(name, actor=actor), as_json)


def _print(queue: QueueInfo, as_json: bool) -> None:
    if as_json:
        emit_json(queue)
    elif queue.paused:
        click.echo(f"paused queue {queue.name} (by {queue.paused_by}"
                   + (f": {queue.pause_reason})" if queue.pause_reason else ")"))
    else:
        click.echo(f"resumed queue {queue.name}")


@click.command(epilog="Exit codes: 0 (also with no worker registered), 1 error, 2 usage.")
@json_option
@database_option
def workers(as_json: bool, database_url: str | None) -> None:
    """Worker processes as their heartbeats registered them (pgq_workers)."""
    with operator_app(database_url) as app:
        found = app.queues.workers()
    if as_json:
        emit_json({"workers": found})
        return
    if not found:
        click.echo("no workers registered: pgq_workers is empty (no worker has recorded its "
                   "heartbeat there; workers of a pgq without the registry never do)")
        return
    now = datetime.now(UTC)
    table(["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY", "RUNNING", "STARTED", "LAST SEEN"],
          [[w.id, w.host, w.pid, ",".join(f"{k}={v}" for k, v in w.queues.items()), w.concurrency,
            w.running, when(w.started_at), ago(w.last_seen, now)] for w in found])
