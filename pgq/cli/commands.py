"""The ``pgq`` group and its commands that set up and run pgq: migrate, enqueue,
worker, scheduler, cron, check. The operator commands (jobs, queues, workers) live in
their own modules and are added to the group here. Exit codes: ``pgq.cli``'s docstring.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

import pgq
from pgq.cli.apikeys import api_keys
from pgq.cli.jobs import jobs
from pgq.cli.observe import health, metrics_command, worker_metrics_options
from pgq.cli.options import CONTEXT, app_option, database_option
from pgq.cli.queues import queues, workers
from pgq.cli.stats import stats
from pgq.cli.web import hash_password_command, web
from pgq.client.app import App
from pgq.core.errors import ConfigError, PgqError
from pgq.core.logs import LOG_FORMATS, configure_logging
from pgq.core.settings import Settings
from pgq.core.validation import parse_json


@click.group(context_settings=CONTEXT)
@click.version_option(pgq.__version__, "--version", prog_name="pgq")
def cli() -> None:
    """pgq: durable background jobs on PostgreSQL."""


@cli.command()
@database_option
@click.option("--sql", "as_sql", is_flag=True, envvar="PGQ_MIGRATE_SQL", show_envvar=True,
              help="Print the DDL instead of running it (for DBAs who apply SQL themselves).")
@click.option("--revision", default="head", metavar="REV", show_envvar=True,
              help="Upgrade to this revision.")
@click.option("--downgrade", "downgrade_to", envvar="PGQ_MIGRATE_DOWNGRADE", metavar="REV",
              show_envvar=True,
              help="Downgrade to REV instead; 'base' removes every pgq object.")
def migrate(database_url: str | None, as_sql: bool, revision: str,
            downgrade_to: str | None) -> None:
    """Create or upgrade the pgq tables. Safe to run again: at the latest revision it
    changes nothing. Uses its own version table, so a host app's Alembic history is
    untouched."""
    from pgq.store import migrate as migrations  # Alembic and SQLAlchemy: not in every command

    if as_sql:
        click.echo(migrations.upgrade_sql(revision), nl=False)
        return
    settings = Settings.from_env(database_url=database_url)
    if downgrade_to is not None:
        before, after = migrations.downgrade(settings, downgrade_to)
    else:
        before, after = migrations.upgrade(settings, revision)
    if before == after:
        click.echo(f"pgq schema already at {after or 'base'}; nothing to do")
    else:
        click.echo(f"pgq schema migrated: {before or 'base'} -> {after or 'base (removed)'}")


@cli.command()
@click.argument("task")
@click.option("--args", "args_json", envvar="PGQ_ENQUEUE_ARGS", default="{}", metavar="JSON",
              show_envvar=True,
              help="Task arguments as a JSON object.")
@click.option("--queue", metavar="NAME", show_envvar=True, help="Queue (default: the task's).")
@click.option("--delay", type=click.FloatRange(min=0), metavar="SECONDS", show_envvar=True,
              help="Run no earlier than this many seconds from now.")
@click.option("--priority", type=int, metavar="N", show_envvar=True,
              help="-100..100, lower runs first (default: the task's, else 0).")
@click.option("--max-attempts", type=int, metavar="N", show_envvar=True,
              help="Attempts before the job ends failed (default: the task's, else 25).")
@click.option("--unique-key", metavar="KEY", show_envvar=True,
              help="Skip if a job of this task with this key is active.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", show_envvar=True,
              help="A tag; repeatable (the env var takes space-separated tags).")
@app_option
@database_option
def enqueue(task: str, args_json: str, queue: str | None, delay: float | None,
            priority: int | None, max_attempts: int | None, unique_key: str | None,
            tags: tuple[str, ...], app_path: str | None, database_url: str | None) -> None:
    """Enqueue one job of TASK. With --app the task must be registered there and its
    defaults apply; without, any valid task name is accepted."""
    args = parse_json(args_json, "--args")
    app = load_app(app_path, database_url) if app_path else App(
        Settings.from_env(database_url=database_url), strict=False)
    with app:
        result = app.enqueue(task, args, queue=queue, delay=delay, priority=priority,
                             max_attempts=max_attempts, unique_key=unique_key, tags=tags)
    if result.duplicate:
        click.echo(f"duplicate: job {result.id} already holds unique key {unique_key!r}")
    else:
        click.echo(f"enqueued job {result.id}")
    if not app_path:  # after the result: an error stays the one line on stderr
        click.echo(f"note: no --app, so {task}'s registered defaults are not applied: queue, "
                   "priority and max attempts are pgq's (default, 0, 25) unless given here; "
                   "the worker applies its timeout. Pass --app module:attribute to use them.",
                   err=True)


log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", envvar="PGQ_LOG_FORMAT",
    show_envvar=True, help="text: the human line; json: one JSON object per line (time, "
    "level, logger, message, and a job's fields; docs/worker.md, Observability).")


@cli.command()
@app_option
@click.option("--queues", default="default", show_envvar=True, metavar="SPEC",
              help="Queues to serve: name[=weight][:cap],... e.g. critical=6,default=3,bulk=1:4. "
              "With all busy, slots are shared by weight; idle slots are lent to busy queues "
              "(one per idle queue is kept free); cap limits one queue's running jobs.")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=10, show_envvar=True,
              help="Jobs one process runs at once.")
@click.option("--strict", is_flag=True, show_envvar=True,
              help="Serve queues in the order given: a queue runs only when those before it are empty.")
@click.option("--processes", type=click.IntRange(1, 256), default=1, show_envvar=True,
              help="Worker processes under one supervisor (always there, for 1 too) that restarts "
              "any that die, renews their leases and ends tasks stuck past their timeout.")
@worker_metrics_options
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=30.0, show_envvar=True,
              metavar="SECONDS", help="On SIGTERM, how long running jobs may finish before "
              "they are handed back (attempt not spent). A second signal exits at once.")
@click.option("--lease", type=click.FloatRange(1), default=12.0, show_envvar=True,
              metavar="SECONDS", help="Lease length; heartbeats renew it every third of it. "
              "A dead worker's jobs run again within lease + 5 s.")
@click.option("--poll-interval", type=click.FloatRange(0.01), default=1.0, show_envvar=True,
              metavar="SECONDS", help="Longest wait between claims when idle.")
@click.option("--scheduler", "with_scheduler", is_flag=True, show_envvar=True,
              help="Also run the cron scheduler here (fires only while leader; run it in as "
              "many workers as you like).")
@click.option("--no-maintenance", "no_maintenance", is_flag=True, show_envvar=True,
              help="Do not campaign for the maintenance role (retention of finished jobs).")
@click.option("--no-wakeups", "no_wakeups", is_flag=True, show_envvar=True,
              help="Poll only: ignore Redis and NOTIFY wake-ups (diagnosis, benchmarks).")
@click.option("--async-commit", "async_commit", is_flag=True, show_envvar=True,
              help="Commit claims and outcomes without waiting for the WAL flush (faster; "
              "if PostgreSQL itself crashes, the last fraction of a second of them is lost "
              "and those jobs run again). Off by default: see docs/performance.md.")
@click.option("--crash-budget", type=click.IntRange(1), default=3, show_envvar=True,
              help="Times a job may lose its worker (crash, kill) before it ends failed.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default="INFO", show_envvar=True, help="DEBUG also logs job args (redacted).")
@log_format_option
@database_option
def worker(app_path: str | None, queues: str, concurrency: int, strict: bool, processes: int,
           metrics_port: int | None, metrics_host: str, liveness_threshold: float,
           shutdown_timeout: float, lease: float, poll_interval: float, with_scheduler: bool,
           no_maintenance: bool, no_wakeups: bool, async_commit: bool, crash_budget: int,
           log_level: str, log_format: str, database_url: str | None) -> None:
    """Run jobs. Stops gracefully on SIGTERM/SIGINT."""
    from pgq.worker import WorkerConfig
    from pgq.worker.process import warn_unserved_tasks
    from pgq.worker.queues import parse_queues
    from pgq.worker.supervisor import Supervisor

    if not app_path:
        raise ConfigError("pgq worker needs --app module:attribute (or PGQ_APP)")
    configure_logging(getattr(logging, log_level), log_format)
    config = WorkerConfig(queues=tuple(parse_queues(queues)), concurrency=concurrency,
                          strict=strict, lease_seconds=lease, poll_seconds=poll_interval,
                          shutdown_seconds=shutdown_timeout, crash_budget=crash_budget,
                          wakeups=not no_wakeups, scheduler=with_scheduler,
                          maintenance=not no_maintenance, async_commit=async_commit,
                          metrics_port=metrics_port, metrics_host=metrics_host,
                          liveness_seconds=liveness_threshold)
    app = load_app(app_path, database_url)
    # Refused here, in one line, before any child starts: a child that cannot start would
    # only be restarted (the child checks again, for a schema changed meanwhile).
    _check_schema(app)
    warn_unserved_tasks(app, config)  # here, once, not in each process
    # Always supervised, one process too: the supervisor restarts a worker that recycles
    # itself or dies, renews leases a GIL-bound task would starve, and ends hung tasks.
    sys.exit(Supervisor(app, load_app, (app_path, database_url), config, processes,
                        getattr(logging, log_level), log_format=log_format).run())


@cli.command()
@app_option
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default="INFO", show_envvar=True)
@log_format_option
@database_option
def scheduler(app_path: str | None, log_level: str, log_format: str,
              database_url: str | None) -> None:
    """Run the cron scheduler (and maintenance). Run several for availability: the
    leader fires, and each tick is enqueued exactly once whatever happens."""
    import signal
    import threading

    from pgq.scheduling.maintenance import Maintenance
    from pgq.scheduling.scheduler import Scheduler
    from pgq.worker import new_worker_id

    app = load_app(_need_app(app_path), database_url)
    configure_logging(getattr(logging, log_level), log_format)
    _check_schema(app)
    holder = new_worker_id()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    services: list[Scheduler | Maintenance] = [Scheduler(app, holder=holder).start(),
                                               Maintenance(app, holder=holder).start()]
    stop.wait()
    for service in services:
        service.stop()
    app.close()


@cli.group()
def cron() -> None:
    """Inspect cron entries."""


@cron.command("list")
@app_option
@click.option("--next", "count", type=click.IntRange(1, 100), default=3, envvar="PGQ_CRON_LIST_NEXT",
              show_envvar=True, help="Next fire times to show per entry.")
def cron_list(app_path: str | None, count: int) -> None:
    """Every cron entry of the app with its next fire times (UTC and its zone)."""
    from datetime import UTC, datetime
    from itertools import islice

    app = load_app(_need_app(app_path))
    if not app.schedules:
        click.echo("no cron entries")
        return
    now = datetime.now(UTC)
    for entry in app.schedules.values():
        click.echo(f"{entry.name}  {entry.expression!r} {entry.timezone}  task={entry.task} "
                   f"catch_up={entry.catch_up}")
        for instant in islice(entry.fires_after(now), count):
            local = instant.astimezone(entry.zone)
            click.echo(f"    {instant:%Y-%m-%d %H:%M:%S}Z  ({local:%Y-%m-%d %H:%M %Z})")


cli.add_command(jobs)
cli.add_command(queues)
cli.add_command(workers)
cli.add_command(stats)
cli.add_command(metrics_command)
cli.add_command(health)
cli.add_command(web)
cli.add_command(hash_password_command)
cli.add_command(api_keys)


@cli.command()
@app_option
def check(app_path: str | None) -> None:
    """Load and validate an app (tasks, cron entries) without running anything or
    touching the database. Exits non-zero on the first problem."""
    app = load_app(_need_app(app_path))
    click.echo(f"ok: {len(app.registry)} tasks, {len(app.schedules)} cron entries")


def _need_app(app_path: str | None) -> str:
    if not app_path:
        raise ConfigError("this command needs --app module:attribute (or PGQ_APP)")
    return app_path


def _check_schema(app: App) -> None:
    from pgq.core.errors import MigrationError
    from pgq.store.database import connect, execute
    from pgq.store.revision import SCHEMA_REVISION

    with connect(app.settings, autocommit=True) as conn:
        try:
            rows = execute(conn, "schema_version", {})
        except MigrationError:
            rows = []
    current = rows[0][0] if rows else None
    if current != SCHEMA_REVISION:
        raise MigrationError(f"the database's pgq schema is at {current or 'nothing'}, "
                             f"this pgq needs {SCHEMA_REVISION}: run `pgq migrate` first")


def load_app(path: str, database_url: str | None = None) -> App:
    """Import ``module:attr`` and return the App there, or raise ``ConfigError``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like module.path:attribute, got {path!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`, find the user's modules in the cwd
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for --app: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{path!r} is {type(app).__name__}, not a pgq.App")
    if database_url:
        app = _rebind(app, database_url)
    return app


def _rebind(app: App, database_url: str) -> App:
    rebound = App(app.settings.with_changes(database_url=database_url), strict=app.strict,
                  clock=app.clock)
    rebound.registry = app.registry
    rebound.schedules = app.schedules
    rebound.middleware = app.middleware
    rebound.dead_letter_hooks = app.dead_letter_hooks
    return rebound


def main() -> None:
    # One-shot commands report a failed connection themselves, in one line; the pool's
    # per-attempt warnings would only repeat it.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PgqError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
