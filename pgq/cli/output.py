"""How the operator commands print: ``--json`` documents (one per run, on stdout),
aligned text tables, times in UTC, and the exit codes other than 0, 1 and 2.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import click

NOT_FOUND = 3
"""The job named does not exist (``jobs show``, or an action none of whose ids exist)."""

NOTHING_CHANGED = 4
"""An action (or its ``--dry-run``) found no job it could change."""


class NotFound(click.ClickException):
    """End the command with ``NOT_FOUND`` once its output is printed; the message goes
    to stderr as one line."""

    exit_code = NOT_FOUND

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


class NothingChanged(NotFound):
    """End the command with ``NOTHING_CHANGED``, the same way."""

    exit_code = NOTHING_CHANGED


def plain(value: Any) -> Any:
    """``value`` as JSON can carry it: dataclasses as objects, times as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    click.echo(json.dumps(plain(document), ensure_ascii=False, sort_keys=False))


def when(value: datetime | None) -> str:
    """A time in UTC to the second, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        click.echo("  ".join(padded).rstrip())



class JobFailedExit(NotFound):
    """``jobs result``: the job failed."""

    exit_code = 5


class JobCancelledExit(NotFound):
    """``jobs result``: the job was cancelled."""

    exit_code = 6


class NotFinished(NotFound):
    """``jobs result``: the job did not finish within ``--wait``."""

    exit_code = 7
