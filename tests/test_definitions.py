"""definitions.py: the codec of runtime entry definitions, its validation, its celery schedules.

No ZooKeeper: pure encoding, parsing and schedule arithmetic.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import schedule

from beatleader.schedules.definitions import (
    Definition,
    DefinitionError,
    Limits,
    OneOff,
    ZonedCrontab,
    parse_at,
    parse_cron,
    parse_every,
)
from beatleader.schedules.describe import describe_entry
from beatleader.zk import layout

UTC = timezone.utc


@pytest.fixture
def app() -> Celery:
    app = Celery("defs", set_as_current=False)
    app.conf.timezone = "UTC"
    return app


def full() -> Definition:
    return Definition(
        task="proj.tasks.x",
        schedule={"crontab": "*/5 * * * *", "timezone": "Europe/Paris"},
        args=(1, "a", [2]),
        kwargs={"k": {"n": None}},
        options={"queue": "q", "priority": 5, "expires": 60.0},
        enabled=False,
        changed_by="me@host",
        changed_at="2026-11-27T10:00:00+00:00",
    ).validated()


@pytest.mark.parametrize(
    "sched",
    [
        {"every": 30.0},
        {"crontab": "*/5 * * * *"},
        {"crontab": "0 9 * * 1-5", "timezone": "Europe/Paris"},
        {"at": "2026-12-01T09:00:00+01:00"},
        {"solar": "sunrise", "lat": 52.1, "lon": 4.3},
    ],
)
def test_round_trip_every_kind(sched: dict[str, Any]) -> None:
    definition = Definition("t.x", sched).validated()
    again, problem = Definition.parse(definition.encode())
    assert problem is None
    assert again == definition


def test_round_trip_all_fields() -> None:
    definition = full()
    assert Definition.parse(definition.encode()) == (definition, None)
    assert json.loads(definition.encode())["options"] == {
        "queue": "q",
        "priority": 5,
        "expires": 60.0,
    }


def mutate(**changes: Any) -> bytes:
    fields = json.loads(full().encode())
    for key, value in changes.items():
        if value is KeyError:
            fields.pop(key)
        else:
            fields[key] = value
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        pytest.param(b"[" * 60000, "not JSON", id="deep"),
        (b"null", "not a JSON object"),
        (b'{"task": "t", "schedule": {"every": NaN}}', "not JSON"),
        (b'{"task": "t", "schedule": {"every": 1e400}}', "every must be between"),
        (mutate(extra=1), "unknown field(s) extra"),
        (mutate(task=KeyError), "needs 'task'"),
        (mutate(task=""), "task must not be empty"),
        (mutate(task="a b"), "no whitespace"),
        (mutate(task=7), "task must be a string"),
        (mutate(task="x" * 201), "longer than 200"),
        (mutate(task="a\x00"), "control characters"),
        (mutate(schedule={}), "exactly one of"),
        (mutate(schedule={"every": 1, "at": "x"}), "exactly one of"),
        (mutate(schedule={"every": True}), "number of seconds"),
        (mutate(schedule={"every": "30"}), "number of seconds"),
        (mutate(schedule={"every": 0}), "between"),
        (mutate(schedule={"every": -5}), "between"),
        (mutate(schedule={"every": 5, "x": 1}), "unknown field(s) x"),
        (mutate(schedule={"crontab": "* * *"}), "5 fields"),
        (mutate(schedule={"crontab": "61 * * * *"}), "not a valid crontab"),
        (mutate(schedule={"crontab": "* * * * *", "timezone": "Mars/Base"}), "time zone"),
        (mutate(schedule={"at": "2026-12-01T09:00:00"}), "UTC offset"),
        (mutate(schedule={"at": "tomorrow"}), "UTC offset"),
        (mutate(schedule={"solar": "noonish", "lat": 1, "lon": 1}), "not one of"),
        (mutate(schedule={"solar": "sunrise", "lat": 91, "lon": 1}), "solar lat"),
        (mutate(schedule=[]), "schedule must be a JSON object"),
        (mutate(args={"a": 1}), "args must be a JSON list"),
        (mutate(kwargs=[1]), "kwargs must be a JSON object"),
        (mutate(options=[]), "options must be a JSON object"),
        (mutate(options={"routing_key": "x"}), "unknown field(s) routing_key"),
        (mutate(options={"priority": 256}), "priority"),
        (mutate(options={"priority": True}), "priority"),
        (mutate(options={"priority": 1.5}), "priority"),
        (mutate(options={"expires": 0}), "expires"),
        (mutate(options={"expires": "60"}), "expires"),
        pytest.param(mutate(schedule={"every": 10**400}), "between", id="every-past-float"),
        pytest.param(mutate(options={"expires": 10**400}), "expires", id="expires-past-float"),
        pytest.param(mutate(options={"priority": 10**400}), "priority", id="priority-huge"),
        pytest.param(mutate(options={"expires": "x" * 5000}), "expires", id="expires-long"),
        (mutate(options={"queue": ""}), "queue must not be empty"),
        (mutate(enabled="yes"), "enabled must be true or false"),
        (mutate(changed_by=5), "changed_by must be a string"),
        (mutate(changed_at="yesterday"), "changed_at"),
        pytest.param(mutate(args=["x" * Limits.max_bytes]), "more than", id="big"),
    ],
)
def test_parse_refuses(data: bytes, needle: str) -> None:
    definition, problem = Definition.parse(data)
    assert definition is None
    assert problem is not None and needle in problem
    assert "\n" not in problem
    assert len(problem) < 300  # a hostile value is cut in the line that names it


def test_validated_refuses_non_json_args() -> None:
    with pytest.raises(DefinitionError, match="JSON"):
        Definition("t.x", {"every": 5.0}, args=(object(),)).validated()
    with pytest.raises(DefinitionError, match="JSON"):
        Definition("t.x", {"every": 5.0}, args=(float("nan"),)).validated()
    deep: list[Any] = []
    for _ in range(100000):
        deep = [deep]
    with pytest.raises(DefinitionError, match="JSON"):
        Definition("t.x", {"every": 5.0}, args=(deep,)).validated()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90m", 5400), ("2h", 7200), ("1d", 86400), ("45", 45), ("1.5H", 5400)],
)
def test_parse_every(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "30x", "-5", "0", "1e3", "30 s s", "inf"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(DefinitionError, match="--every"):
        parse_every(text)


def test_parse_cron() -> None:
    assert parse_cron(" */5  * * * * ") == "*/5 * * * *"
    for bad in ("* * * *", "60 * * * *", "* 25 * * *", "* * 31 2 *", "a b c d e"):
        with pytest.raises(DefinitionError, match="--cron"):
            parse_cron(bad)


def test_parse_at() -> None:
    assert parse_at("2026-12-01T09:00:00+01:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    for bad in ("2026-12-01T09:00:00", "soon", ""):
        with pytest.raises(DefinitionError, match="--at"):
            parse_at(bad)


def test_describe() -> None:
    assert Definition("t", {"every": 30.0}).describe() == "every 30s"
    assert full().describe() == "crontab */5 * * * * (Europe/Paris)"
    assert Definition("t", {"crontab": "0 9 * * *"}).describe() == "crontab 0 9 * * *"
    at = Definition("t", {"at": "2026-12-01T09:00:00+01:00"})
    assert at.describe() == "at 2026-12-01T09:00:00+01:00"


def test_interval_schedule(app: Celery) -> None:
    sched = Definition("t", {"every": 90.0}).celery_schedule(app)
    assert type(sched) is schedule and sched.run_every == timedelta(seconds=90)
    entry = Definition("t", {"every": 90.0}, args=(1,), options={"queue": "q"}).to_entry(app, "n")
    assert (entry.name, entry.task, entry.args, entry.options) == ("n", "t", [1], {"queue": "q"})
    assert describe_entry(entry).every == 90.0


def test_crontab_runs_in_its_timezone(app: Celery) -> None:
    now = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)  # 08:30 in Paris (summer time)
    paris = Definition("t", {"crontab": "0 9 * * *", "timezone": "Europe/Paris"})
    plain = Definition("t", {"crontab": "0 9 * * *"})
    zoned = paris.celery_schedule(app)
    assert isinstance(zoned, ZonedCrontab) and zoned.tz == ZoneInfo("Europe/Paris")
    zoned.nowfun = lambda: now
    utc_cron = plain.celery_schedule(app)
    utc_cron.nowfun = lambda: now
    # no timezone: the app's (UTC here), still the DST-aware class
    assert type(utc_cron) is ZonedCrontab and utc_cron.zone is None
    assert utc_cron.tz == ZoneInfo("UTC")
    # 09:00 Paris is 07:00 UTC: 30 min away; 09:00 UTC is 2 h 30 away.
    assert zoned.remaining_estimate(now) == timedelta(minutes=30)
    assert utc_cron.remaining_estimate(now) == timedelta(hours=2, minutes=30)
    # the leader copies schedules (to put them on its clock): the copy keeps the zone
    copied = copy.copy(zoned)
    copied.nowfun = zoned.nowfun
    assert copied.tz == ZoneInfo("Europe/Paris") and copied == zoned
    assert copied.remaining_estimate(now) == timedelta(minutes=30)
    assert copied != utc_cron
    assert describe_entry(paris.to_entry(app, "p")).timezone == "Europe/Paris"


def test_one_off(app: Celery) -> None:
    at = datetime(2026, 12, 1, 8, tzinfo=UTC)
    definition = Definition("t", {"at": "2026-12-01T09:00:00+01:00"})
    entry = definition.to_entry(app, "once")
    sched = entry.schedule
    assert isinstance(sched, OneOff) and sched.at == at
    assert entry.last_run_at < at  # not "now", which would make a past moment never due
    sched.nowfun = lambda: at - timedelta(seconds=10)
    assert sched.is_due(entry.last_run_at) == (False, 10.0)
    sched.nowfun = lambda: at + timedelta(seconds=3)
    due, _ = sched.is_due(entry.last_run_at)
    assert due
    ran = at + timedelta(seconds=3)
    assert sched.is_due(ran) == (False, OneOff.done_recheck)
    assert sched.done(ran) and not sched.done(entry.last_run_at)
    copied = copy.copy(sched)
    assert copied == sched and copied.at == at


def test_solar_without_ephem_is_one_line(app: Celery) -> None:
    definition = Definition("t", {"solar": "sunrise", "lat": 52.1, "lon": 4.3}).validated()
    try:
        import ephem  # noqa: F401
    except ImportError:
        with pytest.raises(DefinitionError, match="ephem"):
            definition.celery_schedule(app)
    else:
        assert definition.celery_schedule(app) is not None


def test_layout_paths() -> None:
    assert layout.definition_path("/r", "a/b") == "/r/definitions/a%2Fb"
    assert layout.paused_entry_path("/r", "a b") == "/r/paused/a%20b"
    assert layout.request_prefix("/r", "x") == "/r/requests/x__run__"
    assert layout.request_entry_name("a__run__b__run__0000000007") == "a__run__b"
    assert layout.request_entry_name("a%2Fb__run__0000000001") == "a/b"
    for bad in ("x", "__run__0001", "x__run__", "x__run__12a"):
        assert layout.request_entry_name(bad) is None
