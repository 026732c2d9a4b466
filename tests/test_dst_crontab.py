"""Runtime crontabs across daylight-saving changes: cron's rules, celery's answers otherwise.

Pure schedule arithmetic, no ZooKeeper: a beat loop is simulated on the schedule's own clock
(``nowfun``), stepping 60 s at a time: ``is_due(last_run_at)``, and on a run ``last_run_at =
now``, as celery beat does. Each case asserts the exact run instants (UTC) and that every
``is_due`` answer's "check again in" points exactly at the next run (beat would not oversleep).
Transitions used: Europe/Paris 2026-10-25 01:00 UTC (03:00 CEST -> 02:00 CET) and 2026-03-29
01:00 UTC (02:00 CET -> 03:00 CEST); America/New_York 2026-11-01 06:00 UTC (02:00 EDT -> 01:00
EST) and 2026-03-08 07:00 UTC (02:00 EST -> 03:00 EDT).
"""

from __future__ import annotations

import copy
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab

from beatleader.schedules import types as schedtypes
from beatleader.schedules.definitions import Definition, ZonedCrontab

UTC = timezone.utc
PARIS, NEW_YORK = "Europe/Paris", "America/New_York"
PARIS_FALL = datetime(2026, 10, 24, 22, tzinfo=UTC)  # 00:00 CEST; window of 6 h
PARIS_SPRING = datetime(2026, 3, 28, 23, tzinfo=UTC)  # 00:00 CET; window of 5 h
NY_FALL = datetime(2026, 11, 1, 3, tzinfo=UTC)  # 23:00 EDT the day before; 6 h
NY_SPRING = datetime(2026, 3, 8, 4, tzinfo=UTC)  # 23:00 EST the day before; 6 h
WINDOW = {PARIS_FALL: 6, PARIS_SPRING: 5, NY_FALL: 6, NY_SPRING: 6}


def make_app(zone: str) -> Celery:
    app = Celery("dst", set_as_current=False)
    app.conf.timezone = zone
    app.conf.enable_utc = True
    return app


def fields(spec: str) -> tuple[str, ...]:
    minute, hour, day_of_month, month_of_year, day_of_week = spec.split()
    return (minute, hour, day_of_week, day_of_month, month_of_year)


def beat_loop(sched: Any, start: datetime, hours: float, step: int = 60) -> list[datetime]:
    """The instants a beat loop runs ``sched`` at, from ``start`` (also the first last_run_at).

    Also asserts that each ``is_due`` answer's wait ends exactly at the next run.
    """
    clock = [start]
    sched.nowfun = lambda: clock[0]
    last, runs, waits = start, [], []
    end = start + timedelta(hours=hours)
    while clock[0] < end:
        due, wait = sched.is_due(last)
        if due:
            runs.append(clock[0])
            last = clock[0]
        waits.append((clock[0], clock[0] + timedelta(seconds=wait)))
        clock[0] += timedelta(seconds=step)
    for moment, woken in waits:
        following = [run for run in runs if run > moment]
        if following:
            assert woken == following[0], (moment, woken, following[0])
    return runs


def at(*hhmm: str, day: datetime) -> list[datetime]:
    """UTC instants on ``day``'s date (a time before ``day``'s hour is on the next date)."""
    out = []
    for text in hhmm:
        hour, minute = map(int, text.split(":"))
        moment = day.replace(hour=hour, minute=minute)
        out.append(moment if moment >= day else moment + timedelta(days=1))
    return out


def every(minutes: int, first: str, last: str, day: datetime) -> list[datetime]:
    start, end = at(first, last, day=day)
    count = (end - start) // timedelta(minutes=minutes) + 1
    return [start + timedelta(minutes=minutes * i) for i in range(count)]


def zoned(zone: str, spec: str) -> ZonedCrontab:
    return ZonedCrontab(zone, *fields(spec), app=make_app("UTC"))


CASES = [
    # Paris fall back, 01:00 UTC: 02:xx local twice (00:xx UTC as CEST, then 01:xx UTC as CET).
    # Hourly: 01:00 CEST, 02:00 CEST, 02:00 CET (the run celery loses), 03:00 CET, 04:00 CET.
    (PARIS, "0 * * * *", PARIS_FALL, every(60, "23:00", "03:00", day=PARIS_FALL)),
    # every 30 minutes of real time, through both 02:xx (celery: none from 02:30 CEST to 03:00 CET)
    (PARIS, "*/30 * * * *", PARIS_FALL, every(30, "22:30", "03:30", day=PARIS_FALL)),
    (PARIS, "30 2 * * *", PARIS_FALL, at("00:30", day=PARIS_FALL)),  # 02:30 CEST only
    (PARIS, "0 2 * * *", PARIS_FALL, at("00:00", day=PARIS_FALL)),  # 02:00 CEST only
    (PARIS, "15 1 * * *", PARIS_FALL, at("23:15", day=PARIS_FALL)),  # 01:15 CEST, not repeated
    (PARIS, "*/15 2 * * *", PARIS_FALL, every(15, "00:00", "00:45", day=PARIS_FALL)),  # CEST only
    # Paris spring forward, 01:00 UTC: 02:xx local does not exist. Hourly: 01:00 CET, 03:00 CEST.
    (PARIS, "0 * * * *", PARIS_SPRING, every(60, "00:00", "03:00", day=PARIS_SPRING)),
    (PARIS, "*/30 * * * *", PARIS_SPRING, every(30, "23:30", "03:30", day=PARIS_SPRING)),
    (PARIS, "30 2 * * *", PARIS_SPRING, at("01:00", day=PARIS_SPRING)),  # 03:00 CEST, gap's end
    (PARIS, "0 2 * * *", PARIS_SPRING, at("01:00", day=PARIS_SPRING)),
    (PARIS, "15 1 * * *", PARIS_SPRING, at("00:15", day=PARIS_SPRING)),  # 01:15 CET
    (PARIS, "*/15 2 * * *", PARIS_SPRING, at("01:00", day=PARIS_SPRING)),  # four skipped: once
    # New York fall back, 06:00 UTC: 01:00-01:59 local twice (05:xx EDT, 06:xx EST in UTC).
    (NEW_YORK, "0 * * * *", NY_FALL, every(60, "04:00", "08:00", day=NY_FALL)),
    (NEW_YORK, "*/30 * * * *", NY_FALL, every(30, "03:30", "08:30", day=NY_FALL)),
    (NEW_YORK, "30 2 * * *", NY_FALL, at("07:30", day=NY_FALL)),  # 02:30 EST, not repeated
    (NEW_YORK, "0 2 * * *", NY_FALL, at("07:00", day=NY_FALL)),
    (NEW_YORK, "15 1 * * *", NY_FALL, at("05:15", day=NY_FALL)),  # 01:15 EDT only
    (NEW_YORK, "*/15 2 * * *", NY_FALL, every(15, "07:00", "07:45", day=NY_FALL)),
    (NEW_YORK, "*/15 1 * * *", NY_FALL, every(15, "05:00", "05:45", day=NY_FALL)),  # EDT only
    # New York spring forward, 07:00 UTC: 02:00-02:59 local do not exist.
    (NEW_YORK, "0 * * * *", NY_SPRING, every(60, "05:00", "09:00", day=NY_SPRING)),
    (NEW_YORK, "*/30 * * * *", NY_SPRING, every(30, "04:30", "09:30", day=NY_SPRING)),
    (NEW_YORK, "30 2 * * *", NY_SPRING, at("07:00", day=NY_SPRING)),  # 03:00 EDT
    (NEW_YORK, "0 2 * * *", NY_SPRING, at("07:00", day=NY_SPRING)),
    (NEW_YORK, "15 1 * * *", NY_SPRING, at("06:15", day=NY_SPRING)),  # 01:15 EST
    (NEW_YORK, "*/15 2 * * *", NY_SPRING, at("07:00", day=NY_SPRING)),
]


@pytest.mark.parametrize(
    ("zone", "spec", "start", "expected"),
    CASES,
    ids=[f"{zone}-{spec}-{start:%m-%d}" for zone, spec, start, _ in CASES],
)
def test_dst_runs(zone: str, spec: str, start: datetime, expected: list[datetime]) -> None:
    assert beat_loop(zoned(zone, spec), start, WINDOW[start]) == expected


def test_celery_loses_what_zoned_runs() -> None:
    """The premise, measured: celery's crontab loses the second 02:00 (celery #10107)."""
    plain = crontab(*fields("0 * * * *"), app=make_app(PARIS))
    lost = at("01:00", day=PARIS_FALL)[0]
    assert lost not in beat_loop(plain, PARIS_FALL, 6)
    assert lost in beat_loop(zoned(PARIS, "0 * * * *"), PARIS_FALL, 6)


def test_specific_hour_started_in_second_occurrence() -> None:
    """Beat (re)started at 02:05 CET, the repeated 02:xx: a specific-hour job waits a day."""
    start = datetime(2026, 10, 25, 1, 5, tzinfo=UTC)
    assert beat_loop(zoned(PARIS, "*/15 2 * * *"), start, 2) == []
    sched = zoned(PARIS, "*/15 2 * * *")
    sched.nowfun = lambda: start
    assert sched.remaining_estimate(start) == datetime(2026, 10, 26, 1, tzinfo=UTC) - start


QUIET_SPECS = [
    "0 * * * *",
    "*/30 * * * *",
    "*/7 * * * *",
    "30 2 * * *",
    "15 1 * * *",
    "*/15 2 * * *",
    "0 9 1 * *",
    "30 8 * * 1-5",
    "0 0,23 * 7 *",
]


@pytest.mark.parametrize("zone", [PARIS, NEW_YORK])
@pytest.mark.parametrize("spec", QUIET_SPECS)
def test_quiet_day_is_celery(zone: str, spec: str) -> None:
    """No transition: every is_due answer equals celery's own crontab's, in the same zone."""
    start = datetime(2026, 6, 30, 20, tzinfo=UTC)
    ours, celerys = zoned(zone, spec), crontab(*fields(spec), app=make_app(zone))
    clock = [start]
    ours.nowfun = celerys.nowfun = lambda: clock[0]
    last = start
    answers = 0
    while clock[0] < start + timedelta(hours=30):
        answer = ours.is_due(last)
        assert answer == celerys.is_due(last), clock[0]
        assert ours.remaining_estimate(last) == celerys.remaining_estimate(last)
        if answer[0]:
            last = clock[0]
            answers += 1
        clock[0] += timedelta(seconds=60)
    assert answers > 0 or spec == "0 9 1 * *"  # the monthly one: 1 July 09:00 is in the window


def test_quiet_day_uses_celery_arithmetic_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a transition the DST arithmetic is never entered (celery's answer, no extra work)."""

    def refuse(*_args: Any) -> datetime:
        raise AssertionError("DST arithmetic entered on a quiet day")

    monkeypatch.setattr(schedtypes, "next_run", refuse)
    start = datetime(2026, 7, 1, tzinfo=UTC)
    assert beat_loop(zoned(PARIS, "*/30 * * * *"), start, 24) == every(30, "00:30", "23:30", start)
    # a day and a month each spanning a transition, wall times plain at both ends: celery's
    sched = zoned(PARIS, "0 12 1 * *")
    sched.nowfun = lambda: datetime(2026, 3, 15, tzinfo=UTC)
    last = datetime(2026, 3, 1, 11, tzinfo=UTC)  # 12:00 CET
    following = datetime(2026, 4, 1, 10, tzinfo=UTC)  # 12:00 CEST
    assert sched.remaining_estimate(last) == following - datetime(2026, 3, 15, tzinfo=UTC)
    assert beat_loop(zoned(PARIS, "0 12 * * *"), datetime(2026, 10, 24, 9, tzinfo=UTC), 28) == [
        datetime(2026, 10, 24, 10, tzinfo=UTC),
        datetime(2026, 10, 25, 11, tzinfo=UTC),
    ]


# -- against a minute-by-minute reference of cron's rules, in zones with odd transitions ------

MINUTE = timedelta(minutes=1)
REFERENCE_SPECS = [
    "0 * * * *",
    "*/30 * * * *",
    "*/20 * * * *",
    "45 * * * *",
    "0 * * * 0",
    "30 2 * * *",
    "0 2 * * *",
    "15 1 * * *",
    "30 1 * * *",
    "*/15 2 * * *",
    "*/20 1-3 * * *",
    "0 0 * * *",
    "30 23 * * *",
    "0 0,23 * * *",
    "59 23 * * *",
]


def transitions(zone: str, year: int) -> list[datetime]:
    """The instants (UTC, to the minute) at which ``zone``'s UTC offset changes in ``year``."""
    tz, found = ZoneInfo(zone), []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    while moment.year == year:
        offset = moment.astimezone(tz).utcoffset()
        if (moment + timedelta(hours=1)).astimezone(tz).utcoffset() != offset:
            while moment.astimezone(tz).utcoffset() == offset:
                moment += MINUTE
            found.append(moment)
        moment += timedelta(hours=1)
    return found


def matches(cron: crontab, wall: datetime) -> bool:
    return (
        wall.minute in cron.minute
        and wall.hour in cron.hour
        and wall.day in cron.day_of_month
        and wall.month in cron.month_of_year
        and wall.isoweekday() % 7 in cron.day_of_week
    )


def reference(cron: crontab, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """cron's rules, one real minute at a time: what the schedule must run in (start, end)."""
    every_hour, runs = cron.hour == set(range(24)), []
    moment = start + MINUTE
    while moment < end:
        local, before = moment.astimezone(tz), (moment - MINUTE).astimezone(tz)
        wall = local.replace(tzinfo=None)
        due = matches(cron, wall) and (every_hour or local.fold == 0)
        if not every_hour and local.utcoffset() > before.utcoffset():  # a gap just ended
            skipped = before.replace(tzinfo=None) + MINUTE
            while skipped < wall and not due:
                due, skipped = matches(cron, skipped), skipped + MINUTE
        if due:
            runs.append(moment)
        moment += MINUTE
    return runs


def chained(sched: Any, start: datetime, end: datetime) -> list[datetime]:
    """The runs in (start, end), each from the one before: now = last_run_at = the run."""
    clock = [start]
    sched.nowfun = lambda: clock[0]
    runs: list[datetime] = []
    while True:
        following = clock[0] + sched.remaining_estimate(clock[0])
        assert following > clock[0]
        if following >= end:
            return runs
        runs.append(following)
        clock[0] = following


@pytest.mark.parametrize(
    "zone",
    # 1 h at 01:00/02:00 local, 30 min (Lord Howe), at midnight (Santiago), 2 h (Troll)
    [PARIS, NEW_YORK, "Australia/Lord_Howe", "America/Santiago", "Antarctica/Troll"],
)
def test_against_cron_reference(zone: str) -> None:
    """Every spec, 30 h either side of each 2026 transition: exactly the reference's runs."""
    tz = ZoneInfo(zone)
    shifts = transitions(zone, 2026)
    assert len(shifts) == 2
    for shift in shifts:
        start, end = shift - timedelta(hours=30), shift + timedelta(hours=30)
        for spec in REFERENCE_SPECS:
            expected = reference(crontab(*fields(spec)), tz, start, end)
            assert chained(zoned(zone, spec), start, end) == expected, (spec, shift)


def runs_of(sched: Any) -> list[datetime]:
    return beat_loop(sched, PARIS_FALL, 6)


def test_copy_and_pickle_keep_behaviour() -> None:
    """The leader copies each schedule (to set nowfun); pickles and copies run the same."""
    for sched in (zoned(PARIS, "*/30 * * * *"), ZonedCrontab(None, "*/30", app=make_app(PARIS))):
        expected = runs_of(copy.copy(sched))
        assert expected == every(30, "22:30", "03:30", day=PARIS_FALL)
        sched.nowfun = None  # a lambda does not pickle
        restored = pickle.loads(pickle.dumps(sched))
        assert type(restored) is ZonedCrontab and restored.zone == sched.zone
        assert restored == sched and hash(restored) == hash(sched)
        assert runs_of(restored) == expected
        copied = copy.copy(sched)
        assert copied == sched and hash(copied) == hash(sched)
        assert runs_of(copied) == expected
    assert zoned(PARIS, "0 * * * *") != zoned(NEW_YORK, "0 * * * *")
    assert zoned(PARIS, "0 * * * *") != crontab(*fields("0 * * * *"), app=make_app(PARIS))
    assert "(Europe/Paris)" in repr(zoned(PARIS, "0 * * * *"))


def test_entry_without_timezone_uses_app_zone_and_cron_rules() -> None:
    app = make_app(PARIS)
    definition = Definition("proj.tasks.x", {"crontab": "0 * * * *"})
    assert "timezone" not in definition.encode().decode()
    assert definition.describe() == "crontab 0 * * * *"
    entry = definition.to_entry(app, "hourly")
    sched = entry.schedule
    assert type(sched) is ZonedCrontab and sched.zone is None and sched.tz == app.timezone
    assert "(app timezone)" in repr(sched)
    server_clock = copy.copy(sched)  # as the leader's Scheduler._on_server_clock does
    assert runs_of(server_clock) == at("23:00", "00:00", "01:00", "02:00", "03:00", day=PARIS_FALL)
    zoned_def = Definition("proj.tasks.x", {"crontab": "0 * * * *", "timezone": NEW_YORK})
    assert zoned_def.to_entry(app, "ny").schedule.zone == NEW_YORK


HOURLY = [case for case in CASES if case[1] == "0 * * * *"]


@pytest.mark.parametrize(("zone", "spec", "start", "expected"), HOURLY,
                         ids=[f"{z}-{s:%m-%d}" for z, _, s, _ in HOURLY])  # fmt: skip
def test_a_static_crontab_keeps_cron_rules_by_default(
    zone: str, spec: str, start: datetime, expected: list[datetime]
) -> None:
    """``beatleader_crontab_rules = "cron"`` (the default): the scheduler gives a static
    ``beat_schedule`` crontab cron's rules (``types.cron_rules``); ``"celery"`` keeps celery's."""
    from celery.beat import ScheduleEntry

    from beatleader.config import Settings

    app = make_app(zone)
    assert Settings.from_app(app).crontab_rules == "cron"
    assert Settings.from_app(app, crontab_rules="celery").crontab_rules == "celery"
    entry = ScheduleEntry(
        name="hourly", task="t", schedule=crontab(*fields(spec), app=app), app=app
    )
    kept = copy.copy(entry.schedule)
    schedtypes.cron_rules([entry])
    assert isinstance(entry.schedule, ZonedCrontab)
    assert beat_loop(entry.schedule, start, WINDOW[start]) == expected
    if start in (PARIS_FALL, NY_FALL):  # celery's loses the repeated hour's second run
        assert beat_loop(kept, start, WINDOW[start]) != expected


def test_a_bad_crontab_rules_setting_is_one_line() -> None:
    from beatleader.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"crontab_rules.*expected cron or celery"):
        Settings.from_app(make_app(PARIS), crontab_rules="vixie")
