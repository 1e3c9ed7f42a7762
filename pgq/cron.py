"""Periodic tasks: cron entries, validated when the app is loaded, and their fire times.

Fire times are computed in the entry's time zone on *wall-clock* time, then mapped to
instants with two rules that make every schedule a strictly increasing sequence:

* a wall time that does not exist (the hour skipped when clocks spring forward) fires at
  the instant the clocks jump, once;
* a wall time that exists twice (the hour repeated when clocks fall back) fires at its
  first occurrence only.

So a daily 02:30 entry fires exactly once on both transition days, an hourly entry never
fires twice within one real hour, and no day is skipped. Only the standard five fields
(minute hour day-of-month month day-of-week) and the aliases ``@yearly @annually
@monthly @weekly @daily @midnight @hourly`` are accepted: croniter's seconds and years
fields are extensions no other cron shares.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from pgq.errors import ConfigError, PgqError
from pgq.validation import check_task_name

MAX_EXPRESSION = 200
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_EPOCH = datetime(2000, 1, 1)


class ScheduleError(ConfigError):
    """An invalid cron entry: bad expression, unknown time zone, bad option."""


class CatchUp(StrEnum):
    """What a scheduler does with ticks it missed (all schedulers down, a long pause)."""

    SKIP = "skip"
    """Fire nothing missed; resume with the next tick."""
    LATEST = "latest"
    """Fire once, for the latest missed tick (the default): a nightly report missed
    during an outage still runs, once."""
    BACKFILL = "backfill"
    """Fire every missed tick within ``backfill_window``, oldest first."""


DEFAULT_CATCH_UP = CatchUp.LATEST
DEFAULT_BACKFILL_WINDOW = timedelta(hours=24)
MAX_BACKFILL = 10_000


@dataclass(frozen=True)
class CronEntry:
    name: str
    expression: str
    task: str
    args: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    catch_up: CatchUp = DEFAULT_CATCH_UP
    backfill_window: timedelta = DEFAULT_BACKFILL_WINDOW
    options: Mapping[str, Any] = field(default_factory=dict)
    """Job options for each fire (queue, priority, max_attempts, tags, timeout…)."""

    def __post_init__(self) -> None:
        try:
            check_task_name(self.name)  # same alphabet as task names
        except PgqError as exc:
            raise ScheduleError(f"cron entry name: {exc}") from None
        where = f"cron entry {self.name!r}"
        object.__setattr__(self, "expression", parse_expression(self.expression, where))
        zone(self.timezone, where)
        try:
            object.__setattr__(self, "catch_up", CatchUp(self.catch_up))
        except ValueError:
            raise ScheduleError(f"{where}: catch_up must be one of "
                                f"{', '.join(c.value for c in CatchUp)}, got {self.catch_up!r}") from None
        if self.backfill_window <= timedelta(0):
            raise ScheduleError(f"{where}: backfill_window must be positive")
        if self.next_after(datetime.now(UTC)) is None:
            raise ScheduleError(f"{where}: {self.expression!r} never fires")

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone, self.name)

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire instant strictly after ``after`` (aware), or None if none
        within ~5 years (an impossible date such as 31 February)."""
        for instant in self.fires_after(after):
            return instant
        return None

    def fires_after(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after``, in order, strictly increasing (UTC)."""
        tz = self.zone
        # Start a little before, in wall time, so a repeated hour is not jumped over.
        start = after.astimezone(tz).replace(tzinfo=None) - timedelta(hours=3)
        it = croniter(self.expression, start)
        horizon = start + timedelta(days=366 * 5)
        last = after
        while True:
            try:
                wall = it.get_next(datetime)
            except CroniterBadDateError:
                return
            if wall > horizon:
                return
            instant = wall_to_instant(wall, tz)
            if instant > last:
                last = instant
                yield instant

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire instant at or before ``moment``, searching back ~5 years."""
        tz = self.zone
        start = moment.astimezone(tz).replace(tzinfo=None) + timedelta(hours=3)
        it = croniter(self.expression, start)
        horizon = start - timedelta(days=366 * 5)
        while True:
            try:
                wall = it.get_prev(datetime)
            except CroniterBadDateError:
                return None
            if wall < horizon:
                return None
            instant = wall_to_instant(wall, tz)
            if instant <= moment:
                return instant

    def due(self, last_fire: datetime | None, now: datetime,
            on_time: timedelta) -> list[datetime]:
        """The ticks to fire at ``now``, given the last tick fired (None: never fired, so
        only a tick within ``on_time`` counts) and the catch-up policy. A tick that passed
        less than ``on_time`` ago is on time, not missed."""
        floor = now - on_time if last_fire is None else last_fire
        if self.catch_up == CatchUp.BACKFILL:
            ticks = []
            for instant in self.fires_after(max(floor, now - self.backfill_window)):
                if instant > now:
                    break
                ticks.append(instant)
            return ticks[-MAX_BACKFILL:]
        latest = self.latest_at_or_before(now)
        if latest is None or latest <= floor:
            return []
        if self.catch_up == CatchUp.SKIP and now - latest > on_time:
            return []
        return [latest]


def parse_expression(expression: object, where: str) -> str:
    """The expression, normalised; ``ScheduleError`` naming the field if invalid."""
    if not isinstance(expression, str):
        raise ScheduleError(f"{where}: cron expression must be a string")
    if len(expression) > MAX_EXPRESSION:
        raise ScheduleError(f"{where}: cron expression longer than {MAX_EXPRESSION} characters")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise ScheduleError(f"{where}: unknown alias {text!r}; use one of {', '.join(ALIASES)}")
        return ALIASES[text.lower()]
    parts = text.split(" ")
    if len(parts) != 5:
        raise ScheduleError(f"{where}: cron expression {text!r} has {len(parts)} fields; "
                            f"expected 5 ({' '.join(FIELDS)}) or an @alias")
    for i, name in enumerate(FIELDS):
        probe = ["*"] * 5
        probe[i] = parts[i]
        try:
            croniter(" ".join(probe), _EPOCH)
        except (CroniterBadCronError, ValueError, KeyError) as exc:
            raise ScheduleError(f"{where}: invalid {name} field {parts[i]!r} in {text!r} "
                                f"({exc})") from None
    try:
        croniter(text, _EPOCH)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise ScheduleError(f"{where}: invalid cron expression {text!r} ({exc})") from None
    return text


def zone(name: object, where: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ScheduleError(f"{where}: time zone must be an IANA name such as 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{where}: unknown time zone {name!r} "
                            "(an IANA name such as 'Europe/Paris' or 'UTC')") from None


def wall_to_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a naive wall time in ``tz`` (rules in the module docstring)."""
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant  # exists (the first occurrence, if repeated)
    # Skipped by a spring-forward: the instant the clocks jumped. fold=1 maps the wall
    # time with the offset before the gap (an instant before it), fold=0 with the offset
    # after (an instant past it); the jump lies between, found to the second.
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = instant
    if lo > hi:
        lo, hi = hi, lo
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)
