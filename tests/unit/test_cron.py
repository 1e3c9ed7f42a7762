"""Cron entries without I/O: validation at declaration, fire times across DST transitions
(exact examples and properties checked against a brute-force oracle), catch-up policies,
and ``App.cron``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import psycopg
import psycopg_pool
import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pgq
from pgq.core.cron import MAX_BACKFILL, CatchUp, CronEntry, ScheduleError, parse_expression, wall_to_instant
from pgq.core.errors import ConfigError

MINUTE = timedelta(minutes=1)
ON_TIME = timedelta(seconds=60)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def entry(expression: str, timezone: str = "UTC", **kwargs: Any) -> CronEntry:
    return CronEntry("reports.nightly", expression, "reports.build", timezone=timezone, **kwargs)


def fires(e: CronEntry, after: datetime, until: datetime) -> list[datetime]:
    out = []
    for instant in e.fires_after(after):
        if instant > until:
            break
        out.append(instant)
    return out


def labels(e: CronEntry, instants: list[datetime]) -> list[str]:
    return [i.astimezone(e.zone).strftime("%Y-%m-%d %H:%M%z") for i in instants]


# --- validation at declaration ------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("60 * * * *", "invalid minute field '60'"),
    ("* 25 * * *", "invalid hour field '25'"),
    ("0 0 32 * *", "invalid day-of-month field '32'"),
    ("0 0 * 13 *", "invalid month field '13'"),
    ("0 0 * * 8", "invalid day-of-week field '8'"),
    ("*/0 * * * *", "invalid minute field '*/0'"),
    ("-1 * * * *", "invalid minute field '-1'"),
    ("1,,2 * * * *", "invalid minute field '1,,2'"),
    ("* * * *", "has 4 fields; expected 5"),
    ("0 * * * * *", "has 6 fields; expected 5"),  # croniter's seconds field
    ("0 0 1 1 * 2030", "has 6 fields; expected 5"),  # croniter's years field
    ("@yearlyy", "unknown alias '@yearlyy'"),
    ("@reboot", "unknown alias '@reboot'"),
    ("x" * 10_240, "longer than 200 characters"),
    ("", "cron expression is empty"),
    ("   ", "cron expression is empty"),
    ("0 0 31 2 *", "'0 0 31 2 *' never fires"),
    ("0 0 30 2 *", "never fires"),
    # croniter extensions, not standard cron; R would pick a minute per process
    ("R * * * *", "invalid minute field 'R'"),
    ("H * * * *", "invalid minute field 'H'"),
    ("0 0 L * *", "invalid day-of-month field 'L'"),
    ("0 0 15W * *", "invalid day-of-month field '15W'"),
    ("0 0 ? * *", "invalid day-of-month field '?'"),
    ("0 0 * * 5#3", "invalid day-of-week field '5#3'"),
    ("0 0 * * 5L", "invalid day-of-week field '5L'"),
    ("0 0 * * MONDAY", "invalid day-of-week field 'MONDAY'"),
    ("0 0 MON * *", "invalid day-of-month field 'MON'"),
    ("0 0 * * JAN", "invalid day-of-week field 'JAN'"),
    ("0 0 * FOO *", "invalid month field 'FOO'"),
    # backwards ranges: croniter wraps them around, inconsistently once a step is added
    ("0 22-2 * * *", "invalid hour field '22-2' in '0 22-2 * * *': the range '22-2' runs backwards"),
    ("50-10/20 * * * *", "the range '50-10' runs backwards"),
    ("0 0 * * FRI-SUN", "the range 'FRI-SUN' runs backwards"),
])
def test_invalid_expression_names_the_entry_and_the_field(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError) as exc:
        entry(expression)
    text = str(exc.value)
    assert text.startswith("cron entry 'reports.nightly': "), text
    assert message in text, text
    assert len(text) < 400 and "\n" not in text


@pytest.mark.parametrize("value", [None, 5, b"* * * * *", ["*"] * 5])
def test_expression_must_be_a_string(value: object) -> None:
    with pytest.raises(ScheduleError, match=re.escape("'reports.nightly': cron expression must be a string")):
        entry(value)  # type: ignore[arg-type]


def test_schedule_error_is_a_config_error() -> None:
    assert issubclass(ScheduleError, ConfigError) and issubclass(ScheduleError, pgq.PgqError)


@pytest.mark.parametrize(("alias", "expanded"), [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"), ("@DAILY", "0 0 * * *"), ("  @hourly\n", "0 * * * *"),
])
def test_aliases(alias: str, expanded: str) -> None:
    assert entry(alias).expression == expanded


@pytest.mark.parametrize(("expression", "normalised", "after", "first"), [
    ("0 9 * * MON-FRI", "0 9 * * MON-FRI", utc(2026, 1, 2, 10), utc(2026, 1, 5, 9)),  # Fri -> Mon
    ("0 9 * * mon-fri", "0 9 * * mon-fri", utc(2026, 1, 2, 10), utc(2026, 1, 5, 9)),
    ("0 0 1 JAN *", "0 0 1 JAN *", utc(2026, 1, 1), utc(2027, 1, 1)),
    ("0 0 1 jan,Jul *", "0 0 1 jan,Jul *", utc(2026, 1, 1), utc(2026, 7, 1)),
    ("*/15 9-17 * * 1-5", "*/15 9-17 * * 1-5", utc(2026, 1, 2, 17, 45), utc(2026, 1, 5, 9)),
    ("0-30/10 * * * *", "0-30/10 * * * *", utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 1, 0)),
    ("0 0 * * 7", "0 0 * * 7", utc(2026, 1, 1), utc(2026, 1, 4)),  # 7 is Sunday too
    ("0 0 29 2 *", "0 0 29 2 *", utc(2026, 1, 1), utc(2028, 2, 29)),
    ("  5\t4   * *\n*  ", "5 4 * * *", utc(2026, 1, 1), utc(2026, 1, 1, 4, 5)),
    ("0 0 * * 5-7", "0 0 * * 5-7", utc(2026, 1, 4, 1), utc(2026, 1, 9)),  # Sun -> Fri
    # One-value ranges are written as the value: croniter reads 9-9 as * (every hour)
    # and 5-5/2 as */2.
    ("0 9-9 * * *", "0 9 * * *", utc(2026, 1, 1, 9), utc(2026, 1, 2, 9)),
    ("5-5/2 * * * *", "5 * * * *", utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 1, 5)),
    ("0 0 * * MON-MON", "0 0 * * MON", utc(2026, 1, 1), utc(2026, 1, 5)),
    ("0 0 1 12-12/3 *", "0 0 1 12 *", utc(2026, 1, 1), utc(2026, 12, 1)),
])
def test_valid_expressions(expression: str, normalised: str, after: datetime, first: datetime) -> None:
    e = entry(expression)
    assert e.expression == normalised
    assert e.next_after(after) == first


FIELD_LIMITS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


@st.composite
def field_texts(draw: st.DrawFn, index: int) -> tuple[str, set[int]]:
    """A standard cron field for FIELDS[index] (numbers only) and the values it means."""
    low, high = FIELD_LIMITS[index]
    items, values = [], set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "range", "star"]))
        step = draw(st.one_of(st.none(), st.integers(1, high - low + 2)))
        if kind == "value":
            a = b = draw(st.integers(low, high))
            text = str(a)
        elif kind == "range":
            a, b = sorted(draw(st.tuples(st.integers(low, high), st.integers(low, high))))
            text = f"{a}-{b}"
        else:
            a, b, text = low, high, "*"
        if step is not None and kind != "value":
            text += f"/{step}"
            values |= set(range(a, b + 1, step))
        else:
            values |= set(range(a, b + 1))
        items.append(text)
    return ",".join(items), values


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(0, 4))
def test_accepted_fields_mean_what_standard_cron_means(data: st.DataObject, index: int) -> None:
    """Each accepted field, as croniter will run it, is the set standard cron gives it."""
    text, values = data.draw(field_texts(index))
    probe = ["*"] * 5
    probe[index] = text
    expression = parse_expression(" ".join(probe), "w")
    expanded = croniter(expression, datetime(2000, 1, 1)).expanded[index]
    low, high = FIELD_LIMITS[index]
    star = set(range(low, high + 1)) if "*" in expanded else set()  # "*,5" expands as ["*", 5]
    assert star | {v for v in expanded if v != "*"} == values


def test_parse_expression_names_the_place() -> None:
    with pytest.raises(ScheduleError, match=r"^somewhere: invalid hour field '24'"):
        parse_expression("0 24 * * *", "somewhere")


@pytest.mark.parametrize(("timezone", "message"), [
    ("Mars/Base", "unknown time zone 'Mars/Base'"),
    ("", "time zone must be an IANA name"),
    ("America", "unknown time zone 'America'"),  # a directory of the database, not a zone
    ("../../etc/passwd", "unknown time zone"),
    ("Europe/Paris ", "unknown time zone"),
    ("x" * 300, "time zone must be an IANA name"),
    (None, "time zone must be an IANA name"),
])
def test_invalid_zone(timezone: Any, message: str) -> None:
    with pytest.raises(ScheduleError, match="^" + re.escape("cron entry 'reports.nightly': ")) as exc:
        entry("@daily", timezone)
    assert message in str(exc.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"catch_up": "sometimes"}, "catch_up must be one of skip, latest, backfill, got 'sometimes'"),
    ({"catch_up": None}, "catch_up must be one of"),
    ({"backfill_window": timedelta(0)}, "backfill_window must be a positive timedelta"),
    ({"backfill_window": timedelta(seconds=-1)}, "backfill_window must be a positive timedelta"),
    ({"backfill_window": 3600}, "backfill_window must be a positive timedelta, got 3600"),
    ({"backfill_window": None}, "backfill_window must be a positive timedelta"),
])
def test_invalid_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError, match="^" + re.escape("cron entry 'reports.nightly': ")) as exc:
        entry("@daily", **kwargs)
    assert message in str(exc.value)


def test_catch_up_accepts_its_values_as_strings() -> None:
    assert entry("@daily", catch_up="skip").catch_up is CatchUp.SKIP
    assert entry("@daily", catch_up=CatchUp.BACKFILL).catch_up is CatchUp.BACKFILL
    assert entry("@daily").catch_up is CatchUp.LATEST


@pytest.mark.parametrize("name", ["", "bad name", "a" * 129, None])
def test_invalid_entry_name(name: Any) -> None:
    with pytest.raises(ScheduleError, match=re.escape("cron entry name")):
        CronEntry(name, "@daily", "t")


# --- DST: exact expectations --------------------------------------------------------------


@pytest.mark.parametrize(("timezone", "expression", "after", "expected"), [
    # Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist and
    # fires at the jump, 01:00Z (03:00 CEST), once.
    ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 27, 12),
     [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]),
    # ... and falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice and
    # fires at the first, 00:30Z (02:30 CEST), once.
    ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 23, 12),
     [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]),
    # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
    ("America/New_York", "30 2 * * *", utc(2026, 3, 6, 12),
     [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]),
    # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST: 02:30 exists once (EST) ...
    ("America/New_York", "30 2 * * *", utc(2026, 10, 30, 12),
     [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]),
    # ... and 01:30 twice: the first, 01:30 EDT = 05:30Z.
    ("America/New_York", "30 1 * * *", utc(2026, 10, 30, 12),
     [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
    # Lord Howe shifts by 30 minutes. Spring 2026-10-04 02:00 +10:30 -> 02:30 +11 (15:30Z).
    ("Australia/Lord_Howe", "15 2 * * *", utc(2026, 10, 2),
     [utc(2026, 10, 2, 15, 45), utc(2026, 10, 3, 15, 30), utc(2026, 10, 4, 15, 15)]),
    # Fall 2026-04-05 02:00 +11 -> 01:30 +10:30: 01:45 twice, first at 14:45Z.
    ("Australia/Lord_Howe", "45 1 * * *", utc(2026, 4, 3),
     [utc(2026, 4, 3, 14, 45), utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]),
    # Southern hemisphere: Sydney falls back in April, springs forward in October.
    ("Australia/Sydney", "30 2 * * *", utc(2026, 4, 3),
     [utc(2026, 4, 3, 15, 30), utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)]),
    ("Australia/Sydney", "30 2 * * *", utc(2026, 10, 2),
     [utc(2026, 10, 2, 16, 30), utc(2026, 10, 3, 16, 0), utc(2026, 10, 4, 15, 30)]),
    # Santiago changes at midnight: 2026-04-05 00:00 -03 -> 04-04 23:00 -04 (23:30 twice) ...
    ("America/Santiago", "30 23 * * *", utc(2026, 4, 3, 12),
     [utc(2026, 4, 4, 2, 30), utc(2026, 4, 5, 2, 30), utc(2026, 4, 6, 3, 30)]),
    # ... and 2026-09-06 00:00 -04 -> 01:00 -03 (00:30 skipped: fires at the jump, 04:00Z).
    ("America/Santiago", "30 0 * * *", utc(2026, 9, 4, 12),
     [utc(2026, 9, 5, 4, 30), utc(2026, 9, 6, 4, 0), utc(2026, 9, 7, 3, 30)]),
    # Samoa skipped 2011-12-30 altogether (-10 -> +14 at 10:00Z): that day's noon fires
    # at the jump, 2011-12-31 00:00 local.
    ("Pacific/Apia", "0 12 * * *", utc(2011, 12, 28, 12),
     [utc(2011, 12, 28, 22), utc(2011, 12, 29, 22), utc(2011, 12, 30, 10), utc(2011, 12, 30, 22)]),
])
def test_daily_fires_once_on_transition_days(timezone: str, expression: str, after: datetime,
                                             expected: list[datetime]) -> None:
    e = entry(expression, timezone)
    assert list(islice(e.fires_after(after), len(expected))) == expected


def test_hourly_around_new_york_fall_back() -> None:
    e = entry("30 * * * *", "America/New_York")
    got = fires(e, utc(2026, 11, 1, 3), utc(2026, 11, 1, 9))
    assert got == [utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5, 30),
                   utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 8, 30)]
    # 01:30 EST (06:30Z) is the second 01:30 of the night: not fired again.
    assert labels(e, got) == ["2026-10-31 23:30-0400", "2026-11-01 00:30-0400",
                              "2026-11-01 01:30-0400", "2026-11-01 02:30-0500",
                              "2026-11-01 03:30-0500"]


def test_hourly_around_new_york_spring_forward() -> None:
    e = entry("30 * * * *", "America/New_York")
    got = fires(e, utc(2026, 3, 8, 4), utc(2026, 3, 8, 9))
    assert got == [utc(2026, 3, 8, 4, 30), utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 6, 30),
                   utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8, 30)]
    assert labels(e, got)[2:5] == ["2026-03-08 01:30-0500", "2026-03-08 03:00-0400",
                                   "2026-03-08 03:30-0400"]


def test_steps_inside_a_gap_fire_once_at_the_jump() -> None:
    e = entry("*/20 * * * *", "America/New_York")  # 02:00, 02:20, 02:40 do not exist
    got = fires(e, utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30))
    assert got == [utc(2026, 3, 8, 6, 40), utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 20)]


def test_after_is_inside_the_repeated_hour() -> None:
    e = entry("*/15 * * * *", "America/New_York")
    # 06:10Z is 01:10 EST, the second pass: 01:15-01:45 fired already (EDT), next is 02:00 EST.
    assert e.next_after(utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 1, 7, 0)
    # 05:10Z is 01:10 EDT, the first pass.
    assert e.next_after(utc(2026, 11, 1, 5, 10)) == utc(2026, 11, 1, 5, 15)


def test_wall_to_instant() -> None:
    ny = ZoneInfo("America/New_York")
    assert wall_to_instant(datetime(2026, 3, 8, 2, 30), ny) == utc(2026, 3, 8, 7)  # gap
    assert wall_to_instant(datetime(2026, 3, 8, 2, 0), ny) == utc(2026, 3, 8, 7)
    assert wall_to_instant(datetime(2026, 3, 8, 3, 0), ny) == utc(2026, 3, 8, 7)
    assert wall_to_instant(datetime(2026, 11, 1, 1, 30), ny) == utc(2026, 11, 1, 5, 30)  # first
    assert wall_to_instant(datetime(2026, 7, 1, 12, 0), ny) == utc(2026, 7, 1, 16)
    assert wall_to_instant(datetime(2011, 12, 30, 12), ZoneInfo("Pacific/Apia")) == utc(2011, 12, 30, 10)


def test_fire_times_are_utc() -> None:
    got = entry("0 9 * * *", "Asia/Kolkata").next_after(utc(2026, 1, 1))
    assert got == utc(2026, 1, 1, 3, 30) and got is not None and got.utcoffset() == timedelta(0)


# --- latest_at_or_before --------------------------------------------------------------------


def test_latest_at_or_before() -> None:
    e = entry("0 * * * *")
    assert e.latest_at_or_before(utc(2026, 1, 1, 10)) == utc(2026, 1, 1, 10)  # inclusive
    assert e.latest_at_or_before(utc(2026, 1, 1, 10) - timedelta(microseconds=1)) == utc(2026, 1, 1, 9)
    assert e.latest_at_or_before(utc(2026, 1, 1, 10, 59, 59)) == utc(2026, 1, 1, 10)
    yearly = entry("@yearly")
    assert yearly.latest_at_or_before(utc(2026, 6, 1)) == utc(2026, 1, 1)


def test_latest_at_or_before_across_transitions() -> None:
    ny = entry("30 * * * *", "America/New_York")
    # In the repeated hour's second pass (01:45 EST): the last fire is 01:30 EDT, not 00:30.
    assert ny.latest_at_or_before(utc(2026, 11, 1, 6, 45)) == utc(2026, 11, 1, 5, 30)
    assert ny.latest_at_or_before(utc(2026, 11, 1, 7, 29)) == utc(2026, 11, 1, 5, 30)
    # Just after the spring-forward jump: the skipped 02:30 fired at the jump.
    assert ny.latest_at_or_before(utc(2026, 3, 8, 7, 10)) == utc(2026, 3, 8, 7, 0)
    assert ny.latest_at_or_before(utc(2026, 3, 8, 6, 59)) == utc(2026, 3, 8, 6, 30)


def test_latest_at_or_before_after_a_fall_back_of_almost_a_day() -> None:
    # Kwajalein moved west across the date line on 1969-09-30 13:00Z (+11 -> -12): 23 hours
    # of wall time repeated. Every hour of them fired in the first pass, up to 12:00Z.
    e = entry("0 * * * *", "Pacific/Kwajalein")
    for hours in (1, 5, 12, 22):
        assert e.latest_at_or_before(utc(1969, 9, 30, 13) + timedelta(hours=hours)) == \
            utc(1969, 9, 30, 12), hours
    assert e.next_after(utc(1969, 9, 30, 12)) == utc(1969, 10, 1, 12)


# --- due(): catch-up policies ---------------------------------------------------------------


def hourly(catch_up: str, window: timedelta = timedelta(hours=24)) -> CronEntry:
    return entry("0 * * * *", catch_up=catch_up, backfill_window=window)


H = [utc(2026, 1, 1, h) for h in range(24)]


@pytest.mark.parametrize(("last_fire", "now", "skip", "latest", "backfill"), [
    # never fired: only a tick that passed less than on_time ago counts
    (None, utc(2026, 1, 1, 10, 0, 30), [H[10]], [H[10]], [H[10]]),
    (None, utc(2026, 1, 1, 10, 0, 0), [H[10]], [H[10]], [H[10]]),
    (None, utc(2026, 1, 1, 10, 1, 0), [], [], []),  # exactly on_time ago: missed
    (None, utc(2026, 1, 1, 10, 5), [], [], []),
    # up to date
    (H[10], utc(2026, 1, 1, 10, 0, 30), [], [], []),
    (H[10], utc(2026, 1, 1, 10, 59, 59), [], [], []),
    (H[10], utc(2026, 1, 1, 11), [H[11]], [H[11]], [H[11]]),
    # four ticks missed, the latest on time
    (H[6], utc(2026, 1, 1, 10, 0, 30), [H[10]], [H[10]], H[7:11]),
    # four ticks missed, the latest missed too
    (H[6], utc(2026, 1, 1, 10, 20), [], [H[10]], H[7:11]),
    (H[6], utc(2026, 1, 1, 10, 1), [], [H[10]], H[7:11]),
    # a last fire in the future (a clock set back): nothing
    (H[12], utc(2026, 1, 1, 11, 0, 10), [], [], []),
])
def test_due(last_fire: datetime | None, now: datetime, skip: list[datetime],
             latest: list[datetime], backfill: list[datetime]) -> None:
    assert hourly("skip").due(last_fire, now, ON_TIME) == skip
    assert hourly("latest").due(last_fire, now, ON_TIME) == latest
    assert hourly("backfill").due(last_fire, now, ON_TIME) == backfill


def test_backfill_window_limits_how_far_back() -> None:
    e = hourly("backfill", timedelta(hours=2, minutes=30))
    assert e.due(H[1], utc(2026, 1, 1, 10, 20), ON_TIME) == [H[8], H[9], H[10]]
    # the window starts strictly after now - window
    e = hourly("backfill", timedelta(hours=2))
    assert e.due(H[1], H[10], ON_TIME) == [H[9], H[10]]


def test_backfill_keeps_the_newest_ticks_up_to_the_cap() -> None:
    e = entry("* * * * *", catch_up="backfill", backfill_window=timedelta(days=8))
    now = utc(2026, 1, 9)
    ticks = e.due(utc(2025, 1, 1), now, ON_TIME)
    assert len(ticks) == MAX_BACKFILL
    assert ticks[-1] == now and ticks[0] == now - (MAX_BACKFILL - 1) * MINUTE
    assert all(b - a == MINUTE for a, b in pairwise(ticks))


def test_due_across_the_fall_back_fires_the_repeated_hour_once() -> None:
    e = entry("30 * * * *", "America/New_York", catch_up="backfill")
    # Last fire 01:30 EDT; at 01:30 EST (06:30Z) nothing is due, at 02:30 EST it is.
    assert e.due(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30, 10), ON_TIME) == []
    assert e.due(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7, 30, 10), ON_TIME) == [utc(2026, 11, 1, 7, 30)]
    latest = entry("30 * * * *", "America/New_York")
    assert latest.due(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30, 10), ON_TIME) == []


# --- properties over zones and DST transitions ----------------------------------------------

ALL_ZONES = sorted(available_timezones())
DST_ZONES = ["Europe/Berlin", "Europe/London", "America/New_York", "America/Chicago",
             "America/Denver", "America/Los_Angeles", "America/St_Johns", "America/Goose_Bay",
             "America/Havana", "America/Santiago", "America/Asuncion", "America/Sao_Paulo",
             "Australia/Sydney", "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Auckland",
             "Pacific/Chatham", "Asia/Tehran", "Asia/Jerusalem", "Asia/Gaza", "Asia/Beirut",
             "Asia/Amman", "Africa/Cairo", "Africa/Casablanca", "Antarctica/Troll",
             "Antarctica/Casey", "Europe/Moscow", "Pacific/Apia", "America/Caracas"]
zones = st.one_of(st.sampled_from(DST_ZONES), st.sampled_from(ALL_ZONES))
years = st.integers(2000, 2037)


def offset(t: datetime, tz: ZoneInfo) -> timedelta | None:
    return t.astimezone(tz).utcoffset()


def transitions(tz: ZoneInfo, year: int) -> list[datetime]:
    """The instants ``tz`` changed its UTC offset in ``year`` (scanned every 2 hours)."""
    out = []
    t, end = utc(year, 1, 1), utc(year + 1, 1, 1)
    while t < end:
        nxt = t + timedelta(hours=2)
        if offset(nxt, tz) != offset(t, tz):
            lo, hi = t, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if offset(mid, tz) == offset(lo, tz) else (lo, mid)
            out.append(hi.replace(microsecond=0))
        t = nxt
    return out


def wall(t: datetime, tz: ZoneInfo) -> datetime:
    return t.astimezone(tz).replace(tzinfo=None)


def oracle(tz: ZoneInfo, minutes: set[int], hours: set[int], lo: datetime, hi: datetime
           ) -> list[datetime]:
    """Fire instants in (lo, hi] of ``M H * * *`` by brute force over every UTC minute: a
    wall time fires the first time the clock shows it; wall times the clock jumps over
    fire at the minute of the jump."""
    def match(w: datetime) -> bool:
        return w.minute in minutes and w.hour in hours

    seen: set[datetime] = set()
    out = []
    t = lo - timedelta(hours=30)  # warm up: a repeated wall time may have shown before lo
    previous = wall(t, tz)
    while t < hi:
        t += MINUTE
        w = wall(t, tz)
        jumped = w - previous > MINUTE and any(
            match(previous + k * MINUTE) for k in range(1, (w - previous) // MINUTE))
        if (jumped or (match(w) and w not in seen)) and t > lo:
            out.append(t)
        seen.add(w)
        previous = w
    return out


def minute_hour_sets() -> st.SearchStrategy[tuple[str, set[int], str, set[int]]]:
    """A minute field and an hour field, rendered as cron text, with the sets they mean."""
    def field(limit: int) -> st.SearchStrategy[tuple[str, set[int]]]:
        star = st.just(("*", set(range(limit))))
        step = st.integers(2, limit // 2).map(lambda n: (f"*/{n}", set(range(0, limit, n))))
        ranged = st.tuples(st.integers(0, limit - 1), st.integers(0, limit - 1),
                           st.integers(1, 7)).map(
            lambda a: (f"{min(a[:2])}-{max(a[:2])}/{a[2]}", set(range(min(a[:2]), max(a[:2]) + 1, a[2]))))
        listed = st.sets(st.integers(0, limit - 1), min_size=1, max_size=4).map(
            lambda s: (",".join(map(str, sorted(s))), s))
        return st.one_of(star, step, ranged, listed)

    minute = st.one_of(
        st.integers(0, 59).map(lambda m: (str(m), {m})),
        field(60).filter(lambda f: len(f[1]) <= 12))  # keep croniter's work small
    return st.tuples(minute, field(24)).map(lambda mh: (mh[0][0], mh[0][1], mh[1][0], mh[1][1]))


@st.composite
def windows(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant near one of its transitions (mid-year if it has none)."""
    name = draw(zones)
    year = draw(years)
    found = transitions(ZoneInfo(name), year)
    centre = draw(st.sampled_from(found)) if found else utc(year, 7, 1)
    jitter = draw(st.integers(-180, 180)) * MINUTE
    return name, centre + jitter


@settings(max_examples=250, deadline=None)
@given(windows(), minute_hour_sets(), st.data())
def test_fire_times_match_the_rules_around_transitions(
        window: tuple[str, datetime], fields: tuple[str, set[int], str, set[int]],
        data: st.DataObject) -> None:
    name, centre = window
    minute_text, minutes, hour_text, hours = fields
    tz = ZoneInfo(name)
    e = entry(f"{minute_text} {hour_text} * * *", name)
    lo, hi = centre - timedelta(hours=20), centre + timedelta(hours=20)
    got = fires(e, lo, hi)
    assert got == oracle(tz, minutes, hours, lo, hi)
    # strictly increasing, and no two fires show the same wall-clock time
    assert all(a < b for a, b in pairwise(got))
    shown = [wall(t, tz) for t in got]
    assert len(set(shown)) == len(shown)
    # latest_at_or_before agrees with the sequence, at a fire and between fires
    moment = centre + data.draw(st.integers(-36_000, 36_000)) * timedelta(seconds=1)
    before = [t for t in got if t <= moment]
    latest = e.latest_at_or_before(moment)
    if before:
        assert latest == before[-1]
    else:
        assert latest is None or latest <= lo
    for t in got[:3]:
        assert e.latest_at_or_before(t) == t
        assert e.next_after(t - timedelta(seconds=1)) == t


@settings(max_examples=60, deadline=None)
@given(zones, years, st.integers(0, 23), st.integers(0, 59))
def test_daily_fires_once_on_every_local_day(name: str, year: int, hour: int, minute: int) -> None:
    tz = ZoneInfo(name)
    first, last = datetime(year, 1, 2).date(), datetime(year, 12, 30).date()
    days = [first + timedelta(days=k) for k in range((last - first).days + 1)]
    # Days the zone skipped altogether (Samoa, 2011-12-30) fire on the next day, at the jump.
    existing = {wall(t, tz).date() for t in (utc(year, 1, 1) + timedelta(minutes=30 * k)
                                              for k in range(2 * 24 * 368))}
    assume(all(day in existing for day in days))
    e = entry(f"{minute} {hour} * * *", name)
    got = fires(e, utc(year, 1, 1) - timedelta(days=1), utc(year + 1, 1, 1) + timedelta(days=1))
    assert all(a < b for a, b in pairwise(got))
    local_days = [t.astimezone(tz).date() for t in got]
    in_range = [d for d in local_days if first <= d <= last]
    assert in_range == days  # each day once, in order: none skipped, none twice


@settings(max_examples=80, deadline=None)
@given(windows(), st.sampled_from([1, 2, 5, 10, 15, 20, 30]))
def test_minute_steps_never_repeat_a_wall_time(window: tuple[str, datetime], step: int) -> None:
    name, centre = window
    tz = ZoneInfo(name)
    e = entry(f"*/{step} * * * *", name)
    got = fires(e, centre - timedelta(hours=3), centre + timedelta(hours=3))
    assert all(a < b for a, b in pairwise(got))
    shown = [wall(t, tz) for t in got]
    assert len(set(shown)) == len(shown)
    # every fire shows a wall time the expression names, or is the jump over one
    assert all(w.minute % step == 0 or w - wall(t - timedelta(seconds=1), tz) > timedelta(seconds=1)
               for t, w in zip(got, shown, strict=True))


# --- App.cron -------------------------------------------------------------------------------

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"


def build_report(day: str, fmt: str = "pdf") -> None:
    """A task for App.cron to check args against."""


def make_app(strict: bool = True) -> pgq.App:
    app = pgq.App(pgq.Settings(database_url=UNREACHABLE), strict=strict)
    app.task(name="reports.build")(build_report)
    return app


def test_app_cron_declares_an_entry() -> None:
    app = make_app()
    e = app.cron("30 2 * * *", "reports.build", {"day": "today"}, timezone="Europe/Paris",
                 catch_up="backfill", backfill_window=timedelta(hours=6), queue="bulk", priority=5)
    assert app.schedules == {"reports.build": e}  # name defaults to the task name
    assert (e.name, e.task, dict(e.args), e.timezone, e.catch_up) == (
        "reports.build", "reports.build", {"day": "today"}, "Europe/Paris", CatchUp.BACKFILL)
    assert e.backfill_window == timedelta(hours=6)
    assert dict(e.options) == {"queue": "bulk", "priority": 5}
    task = app.registry.get("reports.build")
    assert task is not None
    named = app.cron("@hourly", task, {"day": "x"}, name="reports.hourly")
    assert named.task == "reports.build" and list(app.schedules) == ["reports.build", "reports.hourly"]


@pytest.mark.parametrize("option", ["run_at", "delay", "unique_key", "unique_for"])
def test_app_cron_rejects_timing_and_uniqueness_options(option: str) -> None:
    app = make_app()
    value: Any = {"run_at": utc(2026, 1, 1), "delay": 5, "unique_key": "k",
                  "unique_for": timedelta(hours=1)}[option]
    with pytest.raises(ScheduleError, match=f"cron entry 'reports.build': {option} is not a cron option"):
        app.cron("@daily", "reports.build", {"day": "x"}, **{option: value})
    assert app.schedules == {}


def test_app_cron_rejects_duplicate_names() -> None:
    app = make_app()
    app.cron("@daily", "reports.build", {"day": "x"})
    with pytest.raises(ScheduleError, match=re.escape("cron entry 'reports.build' is declared twice")):
        app.cron("@hourly", "reports.build", {"day": "y"})
    app.cron("@hourly", "reports.build", {"day": "y"}, name="reports.build.hourly")
    assert list(app.schedules) == ["reports.build", "reports.build.hourly"]


@pytest.mark.parametrize(("args", "options", "message"), [
    ({}, {}, "missing"),  # day is required
    ({"day": "x", "colour": "red"}, {}, "colour"),
    ({"day": object()}, {}, "args"),
    ({"day": "x"}, {"queue": "no spaces allowed"}, "queue name"),
    ({"day": "x"}, {"priority": 500}, "priority"),
])
def test_app_cron_checks_args_and_options_at_declaration(
        args: dict[str, Any], options: dict[str, Any], message: str) -> None:
    app = make_app()
    with pytest.raises(ScheduleError, match="^" + re.escape("cron entry 'reports.build': ")) as exc:
        app.cron("@daily", "reports.build", args, **options)
    assert message in str(exc.value)
    assert app.schedules == {}


def test_app_cron_unknown_task() -> None:
    typo = re.escape("cron entry 'reports.biuld': unknown task 'reports.biuld'")
    with pytest.raises(ScheduleError, match=typo):
        make_app().cron("@daily", "reports.biuld")
    lax = make_app(strict=False)
    assert lax.cron("@daily", "elsewhere.task", {"any": 1}).task == "elsewhere.task"


def test_app_cron_bad_expression_and_zone() -> None:
    app = make_app()
    with pytest.raises(ScheduleError, match=re.escape("'reports.build': invalid minute field '60'")):
        app.cron("60 * * * *", "reports.build", {"day": "x"})
    with pytest.raises(ScheduleError, match=re.escape("'nightly': unknown time zone 'Mars/Base'")):
        app.cron("@daily", "reports.build", {"day": "x"}, name="nightly", timezone="Mars/Base")
    assert app.schedules == {}


def test_declaring_an_app_and_its_entries_does_not_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("connected to the database")

    monkeypatch.setattr(psycopg.Connection, "connect", refuse)
    monkeypatch.setattr(psycopg_pool.ConnectionPool, "__init__", refuse)
    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "__init__", refuse)
    app = make_app()
    app.cron("@daily", "reports.build", {"day": "x"}, timezone="Europe/Paris")
    assert len(app.schedules) == 1
    app.close()
