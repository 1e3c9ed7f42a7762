"""What the ``pgq`` commands share: the context settings (every option can come from
its ``PGQ_*`` environment variable), the database and app options, and the operator
commands' ``--json`` option and job filters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from pgq.client.app import App
from pgq.client.jobfilter import JobFilter
from pgq.core.errors import InvalidOptionError
from pgq.core.settings import DEFAULT_DATABASE_URL, Settings

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PGQ", "show_default": True}


def database_option(fn: F) -> F:
    return click.option(
        "--database-url", envvar="PGQ_DATABASE_URL", show_envvar=True, metavar="URL",
        help="PostgreSQL URL (postgresql://, postgres:// or postgresql+psycopg://). "
        f"Default: {DEFAULT_DATABASE_URL}",
    )(fn)


def app_option(fn: F) -> F:
    return click.option(
        "--app", "app_path", envvar="PGQ_APP", show_envvar=True, metavar="MODULE:ATTR",
        help="Import path of your pgq.App, e.g. myapp.jobs:app.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of text.")(fn)


def operator_app(database_url: str | None) -> App:
    """An App for the operator commands: no task registry needed, any task name goes."""
    return App(Settings.from_env(database_url=database_url), strict=False)


# --- filters ---------------------------------------------------------------------------

FILTER_HELP = ("Filters (all given must match; --state, --queue, --task and --meta "
               "repeat): times are ISO 8601 (UTC unless an offset is given) or relative "
               "to now, like 90s, 15m, 2h, 7d, 1w (that long ago).")


def filter_options(fn: F) -> F:
    for option in reversed([
        click.option("--state", "states", multiple=True, metavar="STATE",
                     help="Job state (scheduled, available, running, retryable, completed, "
                     "failed, cancelled); repeat for any of several."),
        click.option("--queue", "queues", multiple=True, metavar="NAME", help="Queue name."),
        click.option("--task", "tasks", multiple=True, metavar="NAME", help="Task name."),
        click.option("--tag", metavar="TAG", help="The job carries this tag."),
        click.option("--meta", "metas", multiple=True, metavar="KEY=VALUE",
                     help="The job's meta has KEY equal to the string VALUE (KEY:=JSON for "
                     "a number, true, null, ...)."),
        click.option("--unique-key", metavar="KEY", help="The job's unique key."),
        click.option("--since", metavar="WHEN", help="Created at or after WHEN."),
        click.option("--until", metavar="WHEN", help="Created before WHEN."),
    ]):
        fn = option(fn)
    return fn


FILTER_KEYS = ("states", "queues", "tasks", "tag", "metas", "unique_key", "since", "until")


def build_filter(states: tuple[str, ...], queues: tuple[str, ...], tasks: tuple[str, ...],
                 tag: str | None, metas: tuple[str, ...], unique_key: str | None,
                 since: str | None, until: str | None) -> JobFilter | None:
    """The JobFilter the options describe, or None if none was given."""
    if not any((states, queues, tasks, tag, metas, unique_key, since, until)):
        return None
    now = datetime.now(UTC)
    where = JobFilter(state=list(states) or None, queue=list(queues) or None,
                      task=list(tasks) or None, tag=tag, meta=parse_meta(metas) or None,
                      unique_key=unique_key,
                      since=parse_when(since, "--since", now, ago=True),
                      until=parse_when(until, "--until", now, ago=True))
    where.params()  # checked here, in one line, before anything else happens
    return where


def parse_meta(pairs: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidOptionError(f"--meta must look like KEY=VALUE or KEY:=JSON, got {pair!r}")
        if key.endswith(":"):
            try:
                meta[key[:-1]] = json.loads(value)
            except ValueError as exc:
                raise InvalidOptionError(f"--meta {key[:-1]}:= needs a JSON value: {exc}") from None
        else:
            meta[key] = value
    return meta


_RELATIVE = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str | None, option: str, now: datetime, *, ago: bool) -> datetime | None:
    """ISO 8601 (UTC unless it has an offset), ``now``, or a duration like ``2h``: that
    long before ``now`` (``ago``), or after it."""
    if text is None:
        return None
    text = text.strip()
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        span = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        return now - span if ago else now + span
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidOptionError(
            f"{option} must be ISO 8601 (2026-01-31T09:00, +02:00 or Z for an offset, UTC "
            f"without) or a duration like 90s, 15m, 2h, 7d, 1w; got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
