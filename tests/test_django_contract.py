"""django-celery-beat's scheduler extension points, kept by ``beatleader.django.DatabaseScheduler``.

Written from django-celery-beat's ``DatabaseScheduler`` as users extend it: an own ``Entry``
(a ``ModelEntry`` subclass with its own ``is_due`` and ``save``), the ``Model``/``Changes``
attributes, celery's default entry as a row (``install_default_entries``), ``schedule`` and
``all_as_schedule()`` read on an instance that does not run the beat, and a second
``setup_schedule()``. Every test runs on the suite's real ZooKeeper and SQLite (Django's ORM in
this process, ``tests/django_support.py``); the schedulers tick here on kombu's ``memory://``.
See docs/compatibility.md (django-celery-beat table).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from celery.schedules import schedstate

from beatleader.config import Settings
from beatleader.django import DatabaseScheduler
from tests.app import make_app
from tests.django_support import add_row, edit_row, row, row_names
from tests.harness import wait_for

CLEANUP = "celery.backend_cleanup"


class _Quick(DatabaseScheduler):
    """Records the names of the entries it published; checks the rows often."""

    change_check_interval = 0.3
    change_poll_interval = 0.1
    published: list[str]

    def publish_run(self, entry: Any, ordinal: int, incarnation: str | None = None) -> str:
        task_id = super().publish_run(entry, ordinal, incarnation)
        self.published.append(entry.name)
        return task_id


def _model_entry() -> type:
    from django_celery_beat.schedulers import ModelEntry

    return ModelEntry  # type: ignore[no-any-return]


class Made:
    """Schedulers of this test (one root, one app configuration), closed at its end."""

    def __init__(self, hosts: str, root: str) -> None:
        self.hosts, self.root = hosts, root
        self.made: list[DatabaseScheduler] = []

    def __call__(self, cls: type[_Quick] = _Quick, **schedule: dict[str, Any]) -> Any:
        app = make_app(
            {"TEST_SCHEDULE": json.dumps(schedule), "TEST_MAX_INTERVAL": "0.3"},
            set_as_current=False,
        )
        settings = Settings.from_app(app, zk_hosts=self.hosts, path=self.root, session_timeout=2)
        scheduler = cls(app, beatleader_settings=settings)
        scheduler.published = []
        self.made.append(scheduler)
        return scheduler

    def close(self) -> None:
        for scheduler in self.made:
            scheduler.close()


@pytest.fixture
def make(use_db, zk_server, zk_root) -> Iterator[Made]:
    use_db("default")
    made = Made(zk_server.hosts, zk_root)
    yield made
    made.close()


def ticking(scheduler: Any, condition: Callable[[], bool]) -> Callable[[], bool]:
    def step() -> bool:
        time.sleep(min(scheduler.tick(), 0.05))
        return condition()

    return step


class Ticker:
    """Ticks a scheduler in a thread of its own, as ``celery beat`` does; no tick may raise."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.ticks = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-ticker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stop.wait(min(self.scheduler.tick(), 0.05))
            except BaseException as exc:  # reported by stop()
                self.errors.append(exc)
                return
            self.ticks += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        assert not self.errors, self.errors


class Queries:
    """Every SQL statement Django runs in this process, by the thread that ran it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from django.db.backends import utils

        self.by_thread: list[tuple[threading.Thread, str]] = []
        for name in ("execute", "executemany"):
            original = getattr(utils.CursorWrapper, name)
            monkeypatch.setattr(utils.CursorWrapper, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def run(cursor: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            self.by_thread.append((threading.current_thread(), sql))
            return original(cursor, sql, *args, **kwargs)

        return run

    def of(self, *threads: threading.Thread | None) -> list[str]:
        return [sql for thread, sql in self.by_thread if thread in threads]


# -- Entry -------------------------------------------------------------------------------------


def held_entry() -> Any:
    """A ``ModelEntry`` subclass as users write one: it holds back rows named ``held*`` and
    records every ``save`` (django-celery-beat calls it to write a run back)."""

    class Held(_model_entry()):  # type: ignore[misc]
        saved: ClassVar[list[tuple[str, int]]] = []

        def is_due(self) -> Any:
            if self.name.startswith("held"):
                return schedstate(False, 0.2)
            return super().is_due()

        def save(self) -> None:
            Held.saved.append((self.name, self.model.total_run_count))
            super().save()

    return Held


def test_an_entry_subclass_converts_the_rows_and_its_is_due_and_save_are_used(make) -> None:
    held = held_entry()

    class Custom(_Quick):
        Entry = held

    add_row("free", every=1)
    add_row("held back", every=1)
    scheduler = make(Custom, static={"every": 1})  # starts: no "unexpected keyword 'task'"
    assert isinstance(scheduler.all_as_schedule()["free"], held)

    def written() -> bool:  # save() records before it writes: wait for the row too
        saved = any(name == "free" and count >= 2 for name, count in held.saved)
        return saved and row("free").total_run_count >= 2

    wait_for(ticking(scheduler, written), 30, message="free ran twice, written through save")
    assert row("free").total_run_count >= 2
    assert scheduler.published.count("free") >= 2 and scheduler.published.count("static") >= 1
    assert "held back" not in scheduler.published  # the subclass's is_due decided
    assert row("held back").total_run_count == 0
    static = scheduler.schedule["static"]
    assert not isinstance(static, _model_entry())  # static entries stay plain celery entries


def test_an_entry_that_is_not_a_model_entry_is_refused_in_one_line(make) -> None:
    from celery.beat import ScheduleEntry

    class Wrong(_Quick):
        Entry = ScheduleEntry

    with pytest.raises(SystemExit, match=r"Wrong\.Entry must be django_celery_beat's ModelEntry"):
        make(Wrong)


def test_model_and_changes_are_django_celery_beats_and_a_subclass_may_set_its_own(make) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    assert DatabaseScheduler.Model is PeriodicTask
    assert DatabaseScheduler.Changes is PeriodicTasks
    asked: list[str] = []

    class CountedChanges:
        @staticmethod
        def last_change() -> Any:
            asked.append("last_change")
            return PeriodicTasks.last_change()

        @staticmethod
        def update_changed() -> None:
            asked.append("update_changed")
            PeriodicTasks.update_changed()

    class Own(_Quick):
        Changes = CountedChanges

    add_row("once", every=1, one_off=True)
    scheduler = make(Own)
    wait_for(ticking(scheduler, lambda: not row("once").enabled), 30, message="one-off done")
    assert "last_change" in asked and "update_changed" in asked  # the row was disabled


# -- celery's default entry is a row -----------------------------------------------------------


def test_backend_cleanup_is_a_row_the_leader_creates_at_takeover(make, monkeypatch) -> None:
    queries = Queries(monkeypatch)
    first = make(static={"every": 1})
    wait_for(ticking(first, lambda: CLEANUP in row_names()), 30, message="the cleanup row")
    cleanup = row(CLEANUP)
    assert cleanup.task == CLEANUP and cleanup.enabled and cleanup.expire_seconds == 12 * 3600
    assert (cleanup.crontab.minute, cleanup.crontab.hour) == ("0", "4")
    assert CLEANUP not in first.data or first.data[CLEANUP].row is not None  # a row, not static

    second = make(static={"every": 1})  # a follower: it reads and writes nothing
    follower = Ticker(second)
    try:
        wait_for(lambda: follower.ticks >= 10, 30, message="the follower ticked")
        assert not second.is_leader
        assert queries.of(follower.thread, second._db._thread) == []
        row(CLEANUP).delete()
        first.close()  # the follower takes over and creates the missing row
        wait_for(lambda: CLEANUP in row_names(), 30, message="the new leader created it")
    finally:
        follower.stop()
    assert second.is_leader


def test_an_edited_or_disabled_cleanup_row_is_left_as_the_admin_set_it(make) -> None:
    add_row(CLEANUP, every=1, args=json.dumps(["cleanup"]), enabled=False)
    scheduler = make(static={"every": 1})
    wait_for(ticking(scheduler, lambda: scheduler.published.count("static") >= 2), 30)
    cleanup = row(CLEANUP)
    assert (cleanup.enabled, cleanup.task, cleanup.crontab) == (False, "tests.app.record", None)
    assert CLEANUP not in scheduler.published
    edit_row(CLEANUP, enabled=True)  # the admin's choice: every second, the record task
    wait_for(ticking(scheduler, lambda: CLEANUP in scheduler.published), 30, message="enabled")
    assert scheduler.schedule[CLEANUP].task == "tests.app.record"


def test_a_static_backend_cleanup_stays_static_and_no_row_is_made(make) -> None:
    scheduler = make(**{CLEANUP: {"every": 1}})
    wait_for(ticking(scheduler, lambda: CLEANUP in scheduler.published), 30)
    assert CLEANUP not in row_names()


# -- schedule on an instance that does not run the beat ---------------------------------------


def test_a_follower_schedule_and_all_as_schedule_show_the_rows_read_only(make) -> None:
    add_row("nightly", every=3600)
    add_row("off", every=1, enabled=False)
    leader = make(static={"every": 1})
    wait_for(ticking(leader, lambda: CLEANUP in row_names()), 30, message="a leader's takeover")
    viewer = make(static={"every": 1})  # as a script builds one to look at the rows
    assert not viewer.is_leader
    view = viewer.schedule
    assert {"static", "nightly", CLEANUP} <= set(view) and "off" not in view
    assert view["nightly"].schedule.run_every.total_seconds() == 3600
    with pytest.raises(TypeError):
        view["new"] = view["nightly"]  # type: ignore[index]
    rows = viewer.all_as_schedule()
    assert set(rows) == {"nightly", CLEANUP} and isinstance(rows["nightly"], _model_entry())
    add_row("added", every=60)
    wait_for(lambda: "added" in viewer.schedule, 10, message="the view follows the rows")
    assert "added" not in viewer.data  # the follower's own schedule is untouched


def test_setup_schedule_twice_keeps_one_database_thread(make) -> None:
    scheduler = make(static={"every": 1})
    db = scheduler._db
    scheduler.setup_schedule()
    assert scheduler._db is db and db._thread.is_alive()
    alive = [t for t in threading.enumerate() if t.name == "beatleader-django" and t.is_alive()]
    assert len(alive) == 1
    scheduler.close()
    scheduler.close()
    wait_for(lambda: not db._thread.is_alive(), 10, message="the database thread ended")
