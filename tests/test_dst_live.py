"""Static crontabs across real DST changes, on real processes (``0 * * * *``, ``30 2 * * *``).

Each case runs its own ZooKeeper server and ``celery beat -S beatleader.Scheduler`` on one fake
wall clock (``beatleader.testing.faketime``: libfaketime, 60 times as fast as the real clock,
monotonic clocks real, so ZooKeeper's and kazoo's session timers run in real time). The beat
schedules on ZooKeeper's clock (its clock probe), which is the same fake clock. The clock starts
a few fake minutes before the first expected run and the beat lives through the transition; one
celery worker on the real clock executes every case's runs. The cases run at once (about 75 s
in all). Asserted, per case and entry:

* the leader's records of the entry (each run's ``last_run_at``): exactly the expected runs,
  each at its scheduled instant (UTC) or after it by less than ``LATE`` of fake time (at 60x a
  real stall of a second is a fake minute; the runs expected are an hour apart, so a record
  names one instant only), and no other run up to the end of the case's window;
* the worker executed each of those runs (its task id, so its ordinal) exactly once;
* per case, the beat led to the end of the window, ZooKeeper ran on the fake clock (its stamp
  of the beat's last clock probe lies in the window) and the beat's clock agreed with it to
  ``MAX_SKEW``.

Cases: Paris fall back (2026-10-25 01:00 UTC: 02:00 CEST, then 02:00 CET, so 00:00 and 01:00
UTC), Paris spring forward (2026-03-29 01:00 UTC: 01:00 CET, then 03:00 CEST; there also
``30 2 * * *``, whose 02:30 does not exist that day: once, at the gap's end), New York fall
back (2026-11-01 06:00 UTC: 01:00 EDT then 01:00 EST, so 05:00 and 06:00 UTC) and spring forward
(2026-03-08 07:00 UTC: 01:00 EST, then 03:00 EDT), under the default
``beatleader_crontab_rules = "cron"``; and Paris fall back under ``"celery"``: celery's crontab
loses the run at 02:00 CET (celery #10107), as docs/compatibility.md says. The same instants
and rules, on a simulated clock without processes: tests/test_dst_crontab.py (a
fast test here checks that each case's expected runs are what it computes, cron's reference or
celery's crontab; for an hourly spec the two differ only at a fall-back). Three more fast tests
check the fake clock itself (one timeline, ``time.sleep`` on it, stale segments).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from beatleader.testing import faketime, localzk
from beatleader.testing.faketime import FakeClock, FakeClockZooKeeper
from beatleader.zk import layout
from beatleader.zk.clocknode import ClockReading, read_clock
from tests.cluster import schedule_env
from tests.harness import (
    REPO_ROOT,
    BeatProcess,
    WorkerProcess,
    connected_client,
    entry_state,
    leader,
    read_executions,
    wait_for,
)

MISSING = faketime.missing_requirements() + localzk.missing_requirements()
needs_faketime = pytest.mark.skipif(bool(MISSING), reason="needs " + ", ".join(MISSING))

UTC = timezone.utc
PARIS, NEW_YORK = "Europe/Paris", "America/New_York"
HOURLY, DAILY = "hourly", "at-0230"
ROOT = "/dst"
#: Fake seconds per real second.
RATE = 60.0
#: The fake clock starts this long before a case's first expected run (ZooKeeper's JVM and the
#: beat start and lead meanwhile: about two fake minutes on an idle machine).
LEAD_IN = timedelta(minutes=8)
#: A case's window ends this long after its last expected run.
TAIL = timedelta(minutes=4)
#: A run recorded this much (fake time) after its scheduled instant is still that instant's.
LATE = timedelta(minutes=5)
#: Fake seconds the beat's clock may differ from ZooKeeper's (both start on one timeline, to
#: the fake length of a process start; a probe's reading also counts its round trip at 60x).
MAX_SKEW = 10.0
#: ZooKeeper session timeout: libfaketime shortens kazoo's ``select`` timeouts by ``RATE``, so
#: its read timeout (2/3 of this) is 0.67 real seconds.
SESSION_TIMEOUT = 60


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass
class Case:
    name: str
    zone: str
    rules: str
    #: Entry name -> its runs expected in the window (UTC); each entry's spec is ``SPECS[name]``.
    runs: dict[str, list[datetime]]
    #: The last instant the window must cover (default: the last expected run).
    covers: datetime | None = None
    beat: BeatProcess | None = None
    server: FakeClockZooKeeper | None = None
    clock: FakeClock | None = None
    #: Entry name -> its stored state (``entry_state``) once the beat stopped.
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    led_at_end: bool = False
    clock_reading: ClockReading | None = None
    #: The fake time when ``clock_reading`` was read.
    read_at: datetime | None = None

    @property
    def start(self) -> datetime:
        """The fake clock's start: ``LEAD_IN`` before the first expected run."""
        return min(min(runs) for runs in self.runs.values()) - LEAD_IN

    @property
    def end(self) -> datetime:
        """The end of the case's window (fake time): the beat is stopped then."""
        return (self.covers or max(max(runs) for runs in self.runs.values())) + TAIL

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.name}"

    def diagnostics(self) -> list[tuple[str, str]]:
        out = []
        if self.beat is not None:
            out.append((f"{self.name} beat", self.beat.log_tail(40)))
        if self.server is not None:
            out.extend((f"{self.name} {title}", text) for title, text in self.server.diagnostics())
        return out


#: Entry name -> crontab spec.
SPECS = {HOURLY: "0 * * * *", DAILY: "30 2 * * *"}


def cases() -> list[Case]:
    return [
        Case(
            "paris-fall-cron", PARIS, "cron", {HOURLY: [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1)]}
        ),
        # the spring-forward skips 02:30 CET: cron runs it once, when the gap ends (03:00 CEST)
        Case(
            "paris-spring-cron",
            PARIS,
            "cron",
            {
                HOURLY: [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1)],
                DAILY: [utc(2026, 3, 29, 1)],
            },
        ),
        Case(
            "ny-fall-cron", NEW_YORK, "cron", {HOURLY: [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6)]}
        ),
        Case(
            "ny-spring-cron", NEW_YORK, "cron", {HOURLY: [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7)]}
        ),
        # celery's rules, the window of paris-fall-cron: 02:00 CET (01:00 UTC) is lost
        Case(
            "paris-fall-celery",
            PARIS,
            "celery",
            {HOURLY: [utc(2026, 10, 25, 0)]},
            covers=utc(2026, 10, 25, 1),
        ),
    ]


CASE_NAMES = [case.name for case in cases()]
ENTRY_CASES = [(case.name, entry) for case in cases() for entry in case.runs]


class Lived:
    """Every case, lived through; ``diagnostics`` for a failed test's report."""

    def __init__(self, cases: list[Case], executions: list[dict[str, Any]]) -> None:
        self.cases = {case.name: case for case in cases}
        self.executions = executions

    def diagnostics(self) -> list[tuple[str, str]]:
        return [section for case in self.cases.values() for section in case.diagnostics()]


def _beat_env(case: Case, server: FakeClockZooKeeper, common: dict[str, str]) -> dict[str, str]:
    return {
        **common,
        "BEATLEADER_ZK_HOSTS": server.hosts,
        "BEATLEADER_PATH": case.root,
        "BEATLEADER_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
        "BEATLEADER_CRONTAB_RULES": case.rules,
        "TEST_TIMEZONE": case.zone,
        "TEST_MAX_INTERVAL": "5",  # fake seconds: the beat samples the clock often
        **schedule_env(**{entry: {"crontab": SPECS[entry]} for entry in case.runs}),
    }


def _record_times(state: dict[str, Any]) -> list[datetime]:
    return [datetime.fromtimestamp(record[1], UTC) for record in state.get("recent", [])]


def _run_ids(case: Case, entry: str) -> dict[str, int]:
    """Task id -> ordinal of every run of ``entry`` the leader recorded."""
    state = case.states.get(entry, {})
    count, incarnation = int(state.get("total_run_count", 0)), state.get("incarnation")
    return {
        layout.run_task_id(case.root, entry, ordinal, incarnation): ordinal
        for ordinal in range(1, count + 1)
    }


@pytest.fixture(scope="module")
def lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lived]:
    """Start every case at once, live through each window, stop; then read what ran."""
    base = tmp_path_factory.mktemp("dst-live")
    broker, log = base / "broker", base / "executions.jsonl"
    broker.mkdir()
    common = {
        "TEST_BROKER_DIR": str(broker),
        "TEST_EXECUTION_LOG": str(log),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    }
    all_cases = cases()
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(WorkerProcess(base / "procs", common))  # the real clock
        for case in all_cases:
            clock = FakeClock(case.start, RATE, base / case.name / "site")
            server = FakeClockZooKeeper(base / case.name / "zookeeper")
            server.clock, case.clock, case.server = clock, clock, server
            server.launch()
            stack.callback(server.kill)  # a throwaway server: no graceful stop to wait for
        for case in all_cases:
            assert case.server is not None and case.clock is not None
            case.server.wait_serving(60)
            env = case.clock.env({**os.environ, **_beat_env(case, case.server, common)})
            case.beat = stack.enter_context(BeatProcess(base / "procs", env, name=case.name))
        worker.wait_ready(60)
        clients = {
            case.name: stack.enter_context(connected_client(case.server.hosts))
            for case in all_cases
            if case.server is not None
        }
        for case in all_cases:  # windows as long, started in this order: each ends in turn
            assert case.clock is not None and case.beat is not None
            client = clients[case.name]
            clock, end = case.clock, case.end
            wait_for(
                lambda clock=clock, end=end: clock.now() >= end,  # type: ignore[misc]
                clock.real_seconds((end - clock.now()).total_seconds()) + 30,
                interval=0.2,
                message=f"{case.name}: the fake clock reaches {end:%H:%M} UTC",
            )
            case.clock_reading, case.read_at = read_clock(client, case.root), clock.now()
            found = leader(client, case.root)
            case.led_at_end = bool(found and found.get("pid") == case.beat.pid)
            case.beat.terminate()
            case.beat.wait_exit(30)
            for entry in case.runs:
                case.states[entry] = entry_state(client, case.root, entry) or {}
                times = [f"{t:%m-%d %H:%M:%S.%f}" for t in _record_times(case.states[entry])]
                print(f"{case.name} {entry}: ran at {times}")
            print(f"{case.name}: last clock probe {case.clock_reading}")
        wanted = {i for case in all_cases for entry in case.runs for i in _run_ids(case, entry)}
        wait_for(
            lambda: wanted <= {line["id"] for line in read_executions(log)},
            30,
            message="the worker executed every recorded run",
        )
        yield Lived(all_cases, read_executions(log))


def _matches(recorded: list[datetime], expected: list[datetime]) -> bool:
    return len(recorded) == len(expected) and all(
        timedelta(0) <= got - want < LATE for got, want in zip(recorded, expected, strict=True)
    )


@pytest.mark.slow
@needs_faketime
@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_beat_and_zookeeper_lived_on_one_fake_clock(lived: Lived, name: str) -> None:
    """The beat led to the end of its window; ZooKeeper was on the fake clock (its stamp of the
    beat's last clock probe lies in the window) and the beat's clock agreed with it."""
    case = lived.cases[name]
    assert case.led_at_end, f"{name}: the beat did not lead to the end of its window"
    reading = case.clock_reading
    assert reading is not None, f"{name}: the beat never probed ZooKeeper's clock"
    stamped = datetime.fromisoformat(reading.at)
    assert case.read_at is not None
    assert case.start <= stamped <= case.read_at, (name, reading, case.read_at)
    assert abs(reading.skew) < MAX_SKEW, (name, reading)  # its local time - ZooKeeper's


@pytest.mark.slow
@needs_faketime
@pytest.mark.parametrize(("name", "entry"), ENTRY_CASES, ids=[f"{c}-{e}" for c, e in ENTRY_CASES])
def test_crontab_runs_across_a_dst_change(lived: Lived, name: str, entry: str) -> None:
    case = lived.cases[name]
    state, expected = case.states[entry], case.runs[entry]
    recorded = _record_times(state)
    shown = [f"{moment:%Y-%m-%d %H:%M:%S.%f} UTC" for moment in recorded]
    want = [f"{moment:%Y-%m-%d %H:%M} UTC" for moment in expected]
    assert _matches(recorded, expected), f"{name} {entry}: ran at {shown}, expected {want}"
    records = state.get("recent", [])
    assert all(status == "sent" for _, _, status in records), records
    assert [record[0] for record in records] == list(range(1, len(expected) + 1))
    assert state["total_run_count"] == len(expected)
    ids = _run_ids(case, entry)
    executed: dict[int, int] = {}
    for line in lived.executions:
        if line["id"] in ids:
            executed[ids[line["id"]]] = executed.get(ids[line["id"]], 0) + 1
    assert executed == dict.fromkeys(range(1, len(expected) + 1), 1), executed


@pytest.mark.slow
@needs_faketime
def test_the_rules_differ_where_documented(lived: Lived) -> None:
    """Same zone, same window: cron's rules run 02:00 CET (01:00 UTC), celery's do not."""
    cron, celery = lived.cases["paris-fall-cron"], lived.cases["paris-fall-celery"]
    assert cron.end == celery.end and celery.led_at_end
    second = utc(2026, 10, 25, 1)
    assert any(timedelta(0) <= t - second < LATE for t in _record_times(cron.states[HOURLY]))
    assert not any(abs(t - second) < LATE for t in _record_times(celery.states[HOURLY]))


# -- the fake clock itself (fast) -------------------------------------------------------------


def test_a_fake_clock_env_names_libfaketime_and_keeps_the_path(tmp_path: Path) -> None:
    clock = FakeClock(utc(2026, 11, 1, 4, 58), RATE, tmp_path / "site")
    env = clock.env({"PYTHONPATH": "/somewhere", "LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"] == f"{faketime.LIBFAKETIME}:/other.so"
    assert env["PYTHONPATH"] == f"{tmp_path / 'site'}:/somewhere"
    assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert re.fullmatch(r"-\d+\.\d{3} x60", env["FAKETIME"]), env["FAKETIME"]
    assert (tmp_path / "site" / "sitecustomize.py").exists()
    assert timedelta(0) <= clock.now() - utc(2026, 11, 1, 4, 58) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="aware"):
        FakeClock(datetime(2026, 1, 1), RATE, tmp_path)
    with pytest.raises(ValueError, match="rate must be positive"):
        FakeClock(utc(2026, 1, 1), 0, tmp_path)


@needs_faketime
def test_a_python_child_reads_the_fake_clock_and_sleeps_on_it(tmp_path: Path) -> None:
    """One timeline: the child's first reading is the clock's, to a few fake seconds; its
    ``time.sleep`` works (libfaketime's own fails, see ``faketime``) and lasts fake seconds."""
    clock = FakeClock(utc(2026, 3, 8, 6, 59), RATE, tmp_path / "site")
    code = "import time; a = time.time(); time.sleep(30); print(a, time.time())"
    before = clock.epoch()
    done = subprocess.run(
        [sys.executable, "-c", code], env=clock.env(), capture_output=True, text=True, timeout=30
    )
    after = clock.epoch()
    assert done.returncode == 0, done.stderr
    first, second = map(float, done.stdout.split())
    assert before <= first <= after, (before, first, after)
    assert 30 <= second - first < 30 + (after - before), (second - first, after - before)
    assert after - before < 30 * 0.5 * RATE  # 30 fake seconds took well under 30 real ones


def test_stale_segments_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone, alive = int(dead.stdout), os.getpid()
    names = [f"{prefix}{pid}" for prefix in ("faketime_shm_", "sem.faketime_sem_")
             for pid in (gone, alive)]  # fmt: skip
    for name in [*names, "faketime_shm_x", "unrelated_1"]:
        (tmp_path / name).write_bytes(b"")
    removed = faketime.remove_stale_segments(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n in names if str(gone) in n)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*(n for n in names if str(alive) in n), "faketime_shm_x", "unrelated_1"])


def test_the_expected_runs_are_those_of_the_simulated_clock() -> None:
    """Each case's expected runs, over its whole window, are what tests/test_dst_crontab.py
    computes without processes: cron's minute-by-minute reference for ``"cron"``, a beat loop
    over celery's own crontab for ``"celery"``."""
    from celery.schedules import crontab

    from tests.test_dst_crontab import beat_loop, fields, make_app, reference

    for case in cases():
        for entry, expected in case.runs.items():
            spec, start, end = SPECS[entry], case.start, case.end
            if case.rules == "cron":
                found = reference(crontab(*fields(spec)), ZoneInfo(case.zone), start, end)
            else:
                plain = crontab(*fields(spec), app=make_app(case.zone))
                found = beat_loop(plain, start, (end - start) / timedelta(hours=1))
            assert found == expected, (case.name, entry)
