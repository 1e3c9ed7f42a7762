"""Periodic tasks: cron entries, validated when the app is loaded, and their fire times.

Fire times are computed in the entry's time zone on *wall-clock* time, then mapped to
instants with two rules that make every schedule a strictly increasing sequence:

* a wall time that does not exist (the hour skipped when clocks spring forward) fires at
  the instant the clocks jump, once;
* a wall time that exists twice (the hour repeated when clocks fall back) fires at its
  first occurrence only.

So a daily 02:30 entry fires exactly once on both transition days, an hourly entry never
fires twice at the same wall-clock time, and no day is skipped (a day the zone skips
altogether, as Samoa did on 2011-12-30, fires at the jump, which is on the next day).

Only the standard five fields (minute hour day-of-month month day-of-week) and the
aliases ``@yearly @annually @monthly @weekly @daily @midnight @hourly`` are accepted,
each field made of numbers (names ``JAN``-``DEC`` and ``SUN``-``SAT`` in the month and
day-of-week fields), ``*``, ranges ``a-b``, steps ``/n`` and lists ``a,b``. croniter's
extensions (a seconds or years field, ``L W # ?``, random ``R`` and hashed ``H``) are
rejected: no other cron shares them, and ``R`` would pick a different minute in every
process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from pgq.core.errors import ConfigError, PgqError
from pgq.core.validation import check_task_name

MAX_EXPRESSION = 200
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_ITEM = r"(?:\*|(?:[0-9]+|[A-Za-z]{3})(?:-(?:[0-9]+|[A-Za-z]{3}))?)(?:/[0-9]+)?"
_FIELD = re.compile(rf"{_ITEM}(?:,{_ITEM})*")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {3: {n: i for i, n in enumerate(_MONTHS, 1)}, 4: {n: i for i, n in enumerate(_DAYS)}}
"""Names allowed per field index (month, day-of-week) and their numbers."""
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
        if not isinstance(self.backfill_window, timedelta) or self.backfill_window <= timedelta(0):
            raise ScheduleError(f"{where}: backfill_window must be a positive timedelta, "
                                f"got {self.backfill_window!r}")
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
        # wall_to_instant is non-decreasing in wall time, so every wall time at or
        # before the wall time of ``after`` maps to an instant at or before ``after``.
        start = after.astimezone(tz).replace(tzinfo=None)
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
        # Walk back from the latest wall time shown at or before ``moment``: after clocks
        # fall back, that is later than the wall time of ``moment`` by up to the shift, and
        # the (first occurrences of the) wall times in between fired before ``moment``.
        utc = moment.astimezone(UTC).replace(tzinfo=None)
        start = utc + max_offset_before(moment, tz) + timedelta(minutes=1)
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
        if self.catch_up == CatchUp.SKIP and now - latest >= on_time:
            return []
        return [latest]


def parse_expression(expression: object, where: str) -> str:
    """The expression, normalised; ``ScheduleError`` naming the field if invalid."""
    if not isinstance(expression, str):
        raise ScheduleError(f"{where}: cron expression must be a string")
    if len(expression) > MAX_EXPRESSION:
        raise ScheduleError(f"{where}: cron expression longer than {MAX_EXPRESSION} characters")
    text = " ".join(expression.split())
    if not text:
        raise ScheduleError(f"{where}: cron expression is empty")
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise ScheduleError(f"{where}: unknown alias {text!r}; use one of {', '.join(ALIASES)}")
        return ALIASES[text.lower()]
    parts = text.split(" ")
    if len(parts) != 5:
        raise ScheduleError(f"{where}: cron expression {text!r} has {len(parts)} fields; "
                            f"expected 5 ({' '.join(FIELDS)}) or an @alias")
    for i, name in enumerate(FIELDS):
        names = _NAMES.get(i, {})
        if not _FIELD.fullmatch(parts[i]) or any(
                word.lower() not in names for word in re.findall("[A-Za-z]+", parts[i])):
            raise ScheduleError(f"{where}: invalid {name} field {parts[i]!r} in {text!r} (standard "
                                f"cron: numbers{' or names' * bool(names)}, *, ranges a-b, steps /n, "
                                "lists a,b)")
        parts[i] = _normalise_ranges(parts[i], names, f"{where}: invalid {name} field {parts[i]!r} "
                                     f"in {text!r}")
        probe = ["*"] * 5
        probe[i] = parts[i]
        try:
            croniter(" ".join(probe), _EPOCH)
        except (CroniterBadCronError, ValueError, KeyError) as exc:
            # croniter says "[* * * * 8] is not acceptable, out of range": keep the reason
            detail = re.sub(r"^\[[^\]]*\] is not acceptable,? *", "", str(exc))
            raise ScheduleError(f"{where}: invalid {name} field {parts[i]!r} in {text!r}"
                                + (f" ({detail})" if detail else "")) from None
    text = " ".join(parts)
    try:
        croniter(text, _EPOCH)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise ScheduleError(f"{where}: invalid cron expression {text!r} ({exc})") from None
    return text


def _normalise_ranges(field: str, names: Mapping[str, int], where: str) -> str:
    """``field`` (already matching ``_FIELD``) with each one-value range ``a-a`` or
    ``a-a/n`` written ``a``; a range running backwards is an error. croniter reads
    ``5-5`` as ``*`` (every minute) and ``5-5/2`` as ``*/2``, and its wrap-around of
    ``22-2`` is inconsistent once a step is added; standard cron has neither."""
    items = []
    for item in field.split(","):
        base, _, step = item.partition("/")
        if step and int(step) == 0:
            raise ScheduleError(f"{where}: a step must be at least 1")
        low, dash, high = base.partition("-")
        one_value = False
        if dash:
            a, b = (names[v.lower()] if v.isalpha() else int(v) for v in (low, high))
            if a > b:
                raise ScheduleError(f"{where}: the range {base!r} runs backwards; write it as "
                                    "two ranges, e.g. 22-23,0-2")
            one_value = a == b
        items.append(low if one_value else item)
    return ",".join(items)


def zone(name: object, where: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ScheduleError(f"{where}: time zone must be an IANA name such as 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory ("America")
        raise ScheduleError(f"{where}: unknown time zone {name!r} "
                            "(an IANA name such as 'Europe/Paris' or 'UTC')") from None


def wall_to_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a naive wall time in ``tz`` (rules in the module docstring)."""
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant  # exists (the first occurrence, if repeated)
    # Skipped by a spring-forward: the instant the clocks jumped. fold=0 maps the wall
    # time with the offset in force before the gap (an instant past the jump), fold=1
    # with the offset after it (an instant before the jump); the jump lies between,
    # found to the second.
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


def max_offset_before(moment: datetime, tz: ZoneInfo) -> timedelta:
    """The largest UTC offset ``tz`` had in the 26 hours up to ``moment`` (sampled every
    10 minutes, and at ``moment``), so that no wall time shown at or before ``moment`` is
    later than ``moment`` plus it: a wall time shown within the 26 hours is at most
    ``moment`` plus the offset then, and one shown earlier is below ``moment - 12h`` (no
    offset exceeds +14h), so below the wall time of ``moment`` (no offset is under -12h)."""
    offsets = [(moment - timedelta(minutes=10 * k)).astimezone(tz).utcoffset() or timedelta(0)
               for k in range(26 * 6 + 1)]
    return max(offsets)
