"""``pgq stats [--json] [--watch SECONDS]``: the queue stats the stats leader cached
(Redis, else ``pgq_stats``), or computed here if neither copy is fresh; the first line
says which and how old they are (``pgq.client.stats``).

``--watch`` prints them again every SECONDS until stopped: Ctrl-C exits 130 at once, as
every command does; SIGTERM (``kill``, ``timeout``, a container stop) ends the watch after
the frame being printed, with exit code 0, so a script never reads half a frame.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from pgq.cli.options import database_option, json_option, operator_app
from pgq.cli.output import emit_json, table
from pgq.client.stats import Stats


def _count(stats_counts: dict[str, int], state: str, estimated: tuple[str, ...]) -> str:
    n = stats_counts.get(state, 0)
    return f"~{n}" if state in estimated else str(n)


def show(stats: Stats) -> None:
    click.echo(f"stats from {stats.source}, {stats.age_seconds:.1f}s old "
               f"(computed in {stats.refresh_seconds * 1000:.0f} ms; ~ = planner estimate)")
    if not stats.queues:
        click.echo("no queues: no jobs, queue settings or workers yet")
        return
    for q in stats.queues.values():  # first, before any table: these need someone now
        if q.unserved:
            due = f">={q.due}" if "available" in q.estimated else str(q.due)
            lag = "" if q.lag_seconds is None else f", oldest due {q.lag_seconds:.0f}s ago"
            click.echo(click.style(f"UNSERVED: queue {q.name} has {due} due job(s){lag} and "
                                   "no live worker serves it", fg="red", bold=True))
    table(["QUEUE", "PAUSED", "AVAIL", "SCHED", "RETRY", "RUNNING", "FAILED", "LAG",
           "DONE/1m", "FAIL/1m", "DONE/15m", "FAIL/15m", "WORKERS", "ORPHANED"],
          [[q.name, "paused" if q.paused else "-",
            *(_count(q.counts, s, q.estimated)
              for s in ("available", "scheduled", "retryable", "running", "failed")),
            "-" if q.lag_seconds is None else f"{q.lag_seconds:.1f}s",
            q.finished["1m"]["completed"], q.finished["1m"]["failed"],
            q.finished["15m"]["completed"] if "15m" not in q.finished_capped
            else f">={q.finished['15m']['completed']}",
            q.finished["15m"]["failed"], "0 UNSERVED" if q.unserved else q.live_workers,
            ",".join(f"{t}={n}" for t, n in q.orphaned_tasks.items()) or "-"]
           for q in stats.queues.values()])
    runtimes = [[q.name, task, r["count"], f"{r['p50']:.3f}s", f"{r['p95']:.3f}s"]
                for q in stats.queues.values() for task, r in q.runtimes.items()]
    if runtimes:
        click.echo("")
        table(["QUEUE", "TASK", "DONE/15m", "P50", "P95"], runtimes)


@contextmanager
def _stop_on_sigterm(watching: bool) -> Iterator[threading.Event]:
    """While watching, an event SIGTERM sets: the frame being computed or printed is
    finished first. The handler is then given back at once, so a second SIGTERM ends a
    frame stuck on an unresponsive database the default way."""
    stop = threading.Event()
    if not watching or threading.current_thread() is not threading.main_thread():
        yield stop  # one frame: SIGTERM keeps its default; or not on the signals' thread
        return

    def terminated(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGTERM, previous)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(epilog="Exit codes: 0 (also --watch ended by SIGTERM), 1 error (database), "
               "2 usage, 130 interrupted (Ctrl-C).")
@json_option
@click.option("--watch", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="Print them again every SECONDS until interrupted (Ctrl-C: exit 130) or "
              "terminated (SIGTERM: exit 0 after the current frame).")
@database_option
def stats(as_json: bool, watch: float | None, database_url: str | None) -> None:
    """Per queue: jobs by state, lag, finished and failed per window, run times, dead
    letters, workers, orphaned tasks. Read from the stats cache, never heavy."""
    with operator_app(database_url) as app, _stop_on_sigterm(watch is not None) as stop:
        while True:
            found = app.stats()
            if as_json:
                emit_json({"source": found.source, "age_seconds": found.age_seconds,
                           **found.document})
            else:
                if watch is not None:
                    click.clear()
                show(found)
            if watch is None or stop.wait(watch):  # the --watch period, or SIGTERM
                return
