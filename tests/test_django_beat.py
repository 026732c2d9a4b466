"""Leader-elected django-celery-beat (``beatleader.django.DatabaseScheduler``), real processes.

A real PostgreSQL (``beatleader.testing.localpg``: the main case) and SQLite (the light one),
migrated by this process, which edits ``PeriodicTask`` rows through Django's ORM while three
``celery -A tests.app beat -S beatleader.django.DatabaseScheduler`` processes (the test project
``tests/djangoproj``) run against the database, with one real worker running the dedup guard.
Every execution is counted by its task id, i.e. by run ordinal of its entry, and compared with
the run count the leaders committed in ZooKeeper: each run executed exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from beatleader.django import DatabaseScheduler
from beatleader.zk import layout
from tests.django_support import add_row, edit_row, row, row_names
from tests.harness import (
    REPO_ROOT,
    BeatProcess,
    FilesystemBroker,
    entry_state,
    leader,
    read_executions,
    wait_for,
)

SCHEDULER = "beatleader.django.DatabaseScheduler"
#: An edit reaches the leader's schedule within this many seconds (docs/django.md).
EDIT_DELAY = DatabaseScheduler.change_check_interval + DatabaseScheduler.change_poll_interval
#: Slack for a loaded two-core machine on top of a documented delay.
SLACK = 4.0
BOOT = 60.0


# -- counting ------------------------------------------------------------------------------------


def ordinals(
    executions: list[dict[str, Any]], root: str, entry: str, upto: int, incarnation: str | None
) -> Counter[int]:
    """Run ordinal of ``entry`` (of one incarnation) -> how many times the worker executed it."""
    by_id = {layout.run_task_id(root, entry, n, incarnation): n for n in range(1, upto + 1)}
    return Counter(by_id[e["id"]] for e in executions if e["id"] in by_id)


def executed(log: Path, *names: str) -> int:
    return sum(e["name"] in names for e in read_executions(log))


def run_id(client: Any, root: str, entry: str, ordinal: int) -> str:
    """The task id of run ``ordinal`` of ``entry``'s stored incarnation."""
    state = entry_state(client, root, entry) or {}
    return layout.run_task_id(root, entry, ordinal, state.get("incarnation"))


def committed(client: Any, root: str, entry: str) -> int:
    state = entry_state(client, root, entry)
    return int(state["total_run_count"]) if state else 0


def each_run_once(client: Any, root: str, log: Path, entry: str, timeout: float = 30) -> int:
    """Wait until the worker executed runs 1..N of ``entry`` (N: ZooKeeper's count); assert once."""
    total = committed(client, root, entry)
    assert total > 0, f"{entry} never ran"
    life = (entry_state(client, root, entry) or {}).get("incarnation")
    expected = Counter(range(1, total + 1))

    def seen() -> Counter[int]:
        return ordinals(read_executions(log), root, entry, total + 50, life)

    wait_for(lambda: set(seen()) >= set(expected), timeout, message=f"every run of {entry} ran")
    assert seen() == expected
    return total


def start_beats(beats: Any, url: str, count: int = 3, **env: str) -> list[BeatProcess]:
    django_env = {"DJANGO_SETTINGS_MODULE": "tests.djangoproj.settings", "TEST_DATABASE_URL": url}
    return [beats(env={**django_env, **env}, scheduler=SCHEDULER) for _ in range(count)]


def leading(client: Any, root: str, started: list[BeatProcess], but: int | None = None) -> Any:
    """The beat process first in ZooKeeper's queue (once it is not ``but``)."""

    def find() -> BeatProcess | None:
        first = leader(client, root)
        pid = first["pid"] if first else None
        return next((b for b in started if b.pid == pid and pid != but), None)

    return wait_for(find, BOOT, message="a beat leads")


def stop_all(started: list[BeatProcess]) -> None:
    """SIGTERM (celery closes the scheduler: marks and run state written), reap."""
    for beat in started:
        if beat.alive:
            beat.terminate()
    for beat in started:
        beat.wait_exit(30)


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_postgres_edits_one_off_disable_kill_and_pause_each_run_once(
    use_db, databases, beats, workers, zk_client, zk_root, execution_log
) -> None:
    from django.db import connections

    url = use_db("pg")
    add_row("tick", every=1)
    add_row("steady", every=2)
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    started = start_beats(beats, url)
    first = leading(zk_client, zk_root, started)
    wait_for(lambda: executed(execution_log, "tick") >= 3, BOOT, message="tick runs")
    assert _connected_pids() & {b.pid for b in started} == {first.pid}  # followers: none

    # an edit takes effect within the documented delay (+ one interval for the next run)
    saved = edit_row("tick", args=json.dumps(["tock"]))
    wait_for(lambda: executed(execution_log, "tock"), EDIT_DELAY + 1 + SLACK, message="edit")
    assert time.monotonic() - saved <= EDIT_DELAY + 1 + SLACK

    # a one-off row runs once, then the leader disables it (as django-celery-beat does)
    add_row("once", every=1, one_off=True)
    wait_for(lambda: not row("once").enabled, EDIT_DELAY + 2 + SLACK, message="once disabled")
    assert row("once").total_run_count == 1
    first.wait_for_log(r"entry 'once' removed", EDIT_DELAY + SLACK)  # seconds of 1 s intervals
    assert committed(zk_client, zk_root, "once") == 1

    # the database goes away while leading: runs go on; one log line per change of its state
    databases.postgres.stop_server()
    try:
        before = executed(execution_log, "tock")
        wait_for(lambda: executed(execution_log, "tock") >= before + 3, 30, message="no database")
    finally:
        databases.postgres.start_server()
        connections.close_all()
    wait_for(lambda: first.log_matches("the database answers again"), 40, message="db back")
    assert len(first.log_matches("database error while")) == 1

    # the leader is SIGKILLed: another one continues the schedule
    os.kill(first.pid, signal.SIGKILL)
    second = leading(zk_client, zk_root, started, but=first.pid)
    before = executed(execution_log, "tock")
    wait_for(lambda: executed(execution_log, "tock") >= before + 2, 30, message="continues")

    # disabling the row stops it: no run is committed after the leader removed it
    edit_row("tick", enabled=False)
    second.wait_for_log(r"entry 'tick' removed", EDIT_DELAY + SLACK)
    stopped_at = committed(zk_client, zk_root, "tick")

    # the leader is paused past its session: another one leads and sends
    os.kill(second.pid, signal.SIGSTOP)
    try:
        leading(zk_client, zk_root, started, but=second.pid)
        before = executed(execution_log, "steady")
        wait_for(lambda: executed(execution_log, "steady") >= before + 2, 30, message="steady")
    finally:
        os.kill(second.pid, signal.SIGCONT)
    stop_all(started)

    assert committed(zk_client, zk_root, "tick") == stopped_at
    assert each_run_once(zk_client, zk_root, execution_log, "tick") == stopped_at
    steady = each_run_once(zk_client, zk_root, execution_log, "steady")
    assert each_run_once(zk_client, zk_root, execution_log, "once") == 1
    # the leader wrote the run state back (the last one on SIGTERM); ZooKeeper's count is it
    assert row("steady").total_run_count == steady
    assert row("steady").last_run_at is not None
    assert (row("once").enabled, row("once").total_run_count) == (False, 1)


def test_sqlite_rows_beside_static_entries_clocked_one_off_status_and_a_kill(
    use_db, beats, workers, zk_client, zk_server, zk_root, execution_log, broker_dir
) -> None:
    from django.utils import timezone
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule

    url = use_db("default")
    # the copy django-celery-beat's own scheduler makes of a beat_schedule entry: ignored
    add_row("static", every=1, args=json.dumps(["copied"]))
    nightly = CrontabSchedule.objects.create(minute="0", hour="3", timezone="Europe/Paris")
    add_row("nightly", crontab=nightly)
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    started = start_beats(beats, url, TEST_SCHEDULE=json.dumps({"static": {"every": 1}}))
    first = leading(zk_client, zk_root, started)
    options = {"queue": "celery", "headers": json.dumps({"x-origin": "admin"}), "priority": 3}
    add_row("row", every=1, expire_seconds=600, **options)  # created while the beats run
    clock = ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(seconds=2))
    add_row("clocked", clocked=clock, one_off=True)
    wait_for(lambda: not row("clocked").enabled, EDIT_DELAY + 3 + SLACK, message="clocked ran")
    wait_for(lambda: executed(execution_log, "row") >= 2, 30, message="row runs")

    status = _status(zk_server.hosts, zk_root)
    entries = {e["name"]: e for e in status["entries"]}
    assert entries["row"]["schedule"] == "every 1s"
    assert entries["row"]["task"] == "tests.app.record"
    assert entries["static"]["schedule"] == "every 1s"
    assert (entries["nightly"]["crontab"], entries["nightly"]["timezone"]) == (
        "0 3 * * *",
        "Europe/Paris",
    )
    assert entries["nightly"]["next_due"] is not None
    message = FilesystemBroker(broker_dir).for_entry("row")[0]
    assert (message.queue, message.headers["x-origin"]) == ("celery", "admin")
    if _dcb_version() >= (2, 6):  # as django-celery-beat sends it (2.5 sends no such header)
        assert message.headers["periodic_task_name"] == "row"
    assert message.headers["expires"] is not None
    assert message.headers[layout.HEADER_ENTRY] == "row"
    assert message.task_id == run_id(zk_client, zk_root, "row", 1)
    assert {"row", "static"} <= set(status["scheduled_names"])

    os.kill(first.pid, signal.SIGKILL)
    leading(zk_client, zk_root, started, but=first.pid)
    before = executed(execution_log, "row")
    wait_for(lambda: executed(execution_log, "row") >= before + 2, 30, message="continues")
    stop_all(started)

    assert each_run_once(zk_client, zk_root, execution_log, "clocked") == 1
    each_run_once(zk_client, zk_root, execution_log, "static")
    rows = each_run_once(zk_client, zk_root, execution_log, "row")
    assert row("row").total_run_count == rows
    assert entry_state(zk_client, zk_root, "static") is not None
    # beat_schedule entries stay out of the database; the row named like one is not run;
    # celery.backend_cleanup is a row, as django-celery-beat installs it (result_expires is set)
    assert row_names() == {"static", "row", "clocked", "nightly", "celery.backend_cleanup"}
    cleanup = row("celery.backend_cleanup")
    assert (cleanup.task, cleanup.enabled) == ("celery.backend_cleanup", True)
    assert (cleanup.crontab.minute, cleanup.crontab.hour) == ("0", "4")
    assert executed(execution_log, "copied") == 0
    assert row("static").total_run_count == 0


def test_unusable_rows_are_reported_and_left_alone(use_db) -> None:
    from django_celery_beat.models import PeriodicTask

    from beatleader.django.rows import read_rows
    from tests.app import make_app

    use_db("default")
    add_row("good", every=1)
    add_row("bad-args", every=1, args="[not json")
    add_row("no-schedule", every=1)
    PeriodicTask.objects.filter(name="no-schedule").update(interval=None)
    add_row("static", every=1)
    entries, bad = read_rows(make_app({}, set_as_current=False), frozenset({"static"}))
    assert set(entries) == {"good"}
    assert set(bad) == {"bad-args", "no-schedule"}
    assert "not JSON" in bad["bad-args"] and "no interval" in bad["no-schedule"]
    assert all(row(name).enabled for name in ("bad-args", "no-schedule"))  # nothing written


def test_a_row_entry_is_due_as_model_entry_would_be_without_writing(use_db) -> None:
    from django.utils import timezone

    from beatleader.django.rows import NEVER, read_rows
    from tests.app import make_app

    use_db("default")
    now = timezone.now()
    add_row("later", every=1, start_time=now + timedelta(hours=1))
    add_row("expired", every=1, expires=now - timedelta(seconds=1))
    add_row("once", every=1, one_off=True, last_run_at=now - timedelta(seconds=5))
    add_row("due", every=1, last_run_at=now - timedelta(seconds=5))
    entries, _ = read_rows(make_app({}, set_as_current=False), frozenset())
    due, wait = entries["later"].is_due()
    assert not due and 3590 < wait <= 3600
    assert tuple(entries["expired"].is_due()) == (False, NEVER)
    assert entries["due"].is_due()[0]
    once = entries["once"]
    once.base = once.total_run_count
    assert once.is_due()[0]
    ran = next(once)  # celery's next(): the copy keeps row and base
    assert (ran.row, ran.base, ran.total_run_count) == (once.row, once.base, 1)
    assert tuple(ran.is_due()) == (False, NEVER)
    assert row("expired").enabled and row("once").enabled  # is_due wrote nothing


class _Recording(DatabaseScheduler):
    """Records the task ids it published (kombu's ``memory://`` broker, in this process)."""

    published: list[str]

    def publish_run(self, entry: Any, ordinal: int, incarnation: str | None = None) -> str:
        task_id = super().publish_run(entry, ordinal, incarnation)
        self.published.append(task_id)
        return task_id


def test_a_takeover_writes_back_what_the_dead_leader_did_not_and_finishes_its_one_off(
    use_db, zk_server, zk_client, zk_root
) -> None:
    """The previous leader committed runs (ZooKeeper) and died before writing the rows."""
    from django.utils import timezone

    from beatleader.config import Settings
    from tests.app import make_app

    use_db("default")
    add_row("once", every=1, one_off=True)
    add_row("steady", every=1)
    ran_at = timezone.now().isoformat()  # after both rows were saved
    lives = {name: layout.new_incarnation() for name in ("once", "steady")}
    for name, count in (("once", 1), ("steady", 5)):
        last_id = layout.run_task_id(zk_root, name, count, lives[name])
        state = layout.EntryState(ran_at, count, last_id, "x:1", incarnation=lives[name])
        zk_client.create(layout.entry_path(zk_root, name), state.encode(), makepath=True)
    app = make_app({}, set_as_current=False)
    settings = Settings.from_app(app, zk_hosts=zk_server.hosts, path=zk_root, session_timeout=2.0)
    scheduler = _Recording(app, beatleader_settings=settings)
    scheduler.published = []
    steady = [layout.run_task_id(zk_root, "steady", n, lives["steady"]) for n in range(1, 50)]
    try:

        def step() -> bool:
            time.sleep(min(scheduler.tick(), 0.05))
            return sum(t in steady for t in scheduler.published) >= 2 and not row("once").enabled

        wait_for(step, 30, message="steady runs and the one-off is finished")
        assert layout.run_task_id(zk_root, "once", 2, lives["once"]) not in scheduler.published
        edit_row("once", enabled=True)  # armed again: one more run, then disabled again

        def again() -> bool:
            time.sleep(min(scheduler.tick(), 0.05))
            return not row("once").enabled

        wait_for(again, EDIT_DELAY + 2 + SLACK, message="the re-enabled one-off ran")
    finally:
        scheduler.close()
    once = [layout.run_task_id(zk_root, "once", n, lives["once"]) for n in (1, 2, 3)]
    assert [t for t in scheduler.published if t in once] == once[1:2]
    sent = [t for t in scheduler.published if t in steady]
    assert sent == steady[5 : 5 + len(sent)]  # continues at run 6
    assert (row("once").enabled, row("once").total_run_count) == (False, 2)
    assert row("steady").total_run_count == committed(zk_client, zk_root, "steady") >= 7


class _Quick(_Recording):
    change_check_interval = 0.5
    full_read_interval = 2.0


def test_a_change_that_bypasses_the_marker_is_read_within_the_full_read_interval(
    use_db, zk_server, zk_root
) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    from beatleader.config import Settings
    from tests.app import make_app

    use_db("default")
    add_row("quiet", every=1)
    app = make_app({}, set_as_current=False)
    settings = Settings.from_app(app, zk_hosts=zk_server.hosts, path=zk_root, session_timeout=2.0)
    scheduler = _Quick(app, beatleader_settings=settings)
    scheduler.published = []

    def ticking(condition: Callable[[], bool]) -> Callable[[], bool]:
        def step() -> bool:
            time.sleep(min(scheduler.tick(), 0.05))
            return condition()

        return step

    try:
        wait_for(ticking(lambda: len(scheduler.published) >= 1), 20, message="quiet runs")
        marker = PeriodicTasks.last_change()
        PeriodicTask.objects.filter(name="quiet").update(args=json.dumps(["updated"]))
        assert PeriodicTasks.last_change() == marker  # an update() does not move it
        updated = ticking(lambda: scheduler.schedule["quiet"].args == ["updated"])
        wait_for(updated, _Quick.full_read_interval + 1 + SLACK, message="the full read")
    finally:
        scheduler.close()


def test_embedded_beat_runs_the_database_scheduler(
    use_db, zk_server, zk_client, zk_root, broker_dir
) -> None:
    from beatleader.beat.embedded import EmbeddedBeat
    from tests.app import make_app

    use_db("default")
    add_row("embedded", every=1)
    app = make_app({"TEST_BROKER_DIR": str(broker_dir)}, set_as_current=False)
    beat = EmbeddedBeat(
        app,
        scheduler_cls="beatleader.django.DatabaseScheduler",
        zk_hosts=zk_server.hosts,
        path=zk_root,
        session_timeout=2.0,
    )
    broker = FilesystemBroker(broker_dir)
    with beat:
        wait_for(lambda: broker.count("embedded") >= 2, 30, message="the embedded beat sends")
        assert beat.is_leader
    ids = [m.task_id for m in broker.for_entry("embedded")]
    assert ids == [run_id(zk_client, zk_root, "embedded", n) for n in range(1, len(ids) + 1)]


def test_a_scheduler_that_is_not_beatleaders_is_refused() -> None:
    from beatleader.beat.embedded import EmbeddedBeat
    from beatleader.config import ConfigError
    from tests.app import make_app

    app = make_app({}, set_as_current=False)
    with pytest.raises(ConfigError, match=r"scheduler_cls must be beatleader\.Scheduler"):
        EmbeddedBeat(app, scheduler_cls="celery.beat.PersistentScheduler", zk_hosts="x:1")


def test_a_second_start_with_another_scheduler_reuses_the_running_beat_and_says_so(
    caplog,
) -> None:
    from beatleader.beat.embedded import EmbeddedBeat
    from tests.app import make_app

    app = make_app({}, set_as_current=False)
    where = {"zk_hosts": "127.0.0.1:1", "path": "/beatleader-tests/twice"}
    first = EmbeddedBeat(app, **where).start()
    try:
        second = EmbeddedBeat(app, scheduler_cls=DatabaseScheduler, **where)
        assert second.start() is first
    finally:
        first.stop()
    assert "uses Scheduler, not DatabaseScheduler" in caplog.text


@pytest.mark.parametrize(
    ("settings_module", "expected"),
    [
        ("tests.djangoproj.bare_settings", "add 'django_celery_beat' to INSTALLED_APPS"),
        (None, "set DJANGO_SETTINGS_MODULE"),
    ],
)
def test_a_django_that_cannot_serve_the_scheduler_is_one_line(
    tmp_path: Path, settings_module: str | None, expected: str
) -> None:
    """(A settings module that does not import fails earlier, in celery's own Django fixup.)"""
    env = {**os.environ, "BEATLEADER_ZK_HOSTS": "127.0.0.1:1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if settings_module:
        env["DJANGO_SETTINGS_MODULE"] = settings_module
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "beat", "-S", SCHEDULER],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def _connected_pids() -> set[int]:
    """Processes with a connection to PostgreSQL (``application_name`` ``pid-<pid>``)."""
    from django.db import connections

    with connections["pg"].cursor() as cursor:
        cursor.execute("select application_name from pg_stat_activity")
        names = [name for (name,) in cursor.fetchall()]
    return {int(name[4:]) for name in names if name.startswith("pid-")}


def _dcb_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("django-celery-beat").split(".")[:2])


def _status(hosts: str, root: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "beatleader.cli", "status", "--json"]
    result = subprocess.run(
        [*command, "--zk-hosts", hosts, "--path", root],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def test_a_row_sets_its_overlap_policy_in_its_headers_and_it_is_never_published(
    use_db, beats, workers, zk_client, zk_root, execution_log, broker_dir
) -> None:
    """The convention of docs/runs.md: ``headers`` ``{"beatleader": {"overlap": "skip"}}``."""
    from tests.dedup_tasks import SLOW_TASK

    url = use_db("default")
    workers(env={"TEST_DEDUP": "1"}, extra_args=["--pool=threads", "--concurrency=4"]).wait_ready()
    headers = json.dumps({"beatleader": {"overlap": "skip"}, "x-origin": "admin"})
    add_row("slowrow", every=1, task=SLOW_TASK, args=json.dumps(["slowrow", 2.5]), headers=headers)
    started = start_beats(beats, url, count=1)
    leading(zk_client, zk_root, started)

    def spans() -> list[list[float]]:
        found: dict[str, list[float]] = {}
        for line in read_executions(execution_log):
            if line["name"] in ("slowrow:start", "slowrow"):
                found.setdefault(line["id"], []).append(line["ts"])
        return sorted(found.values())

    wait_for(lambda: sum(len(s) == 2 for s in spans()) >= 3, 60, message="3 finished runs")
    stop_all(started)
    wait_for(lambda: all(len(s) == 2 for s in spans()), 30, message="the last run ends")
    ordered = spans()
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(ordered))
    started[0].wait_for_log(r"skipping the run of 'slowrow'", 5)
    for message in FilesystemBroker(broker_dir).for_entry("slowrow"):
        assert message.headers["x-origin"] == "admin" and "beatleader" not in message.headers
    total = committed(zk_client, zk_root, "slowrow")  # each committed run started once
    starts = [e for e in read_executions(execution_log) if e["name"] == "slowrow:start"]
    assert sorted(e["id"] for e in starts) == sorted(
        run_id(zk_client, zk_root, "slowrow", n) for n in range(1, total + 1)
    )
