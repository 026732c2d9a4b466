"""``beatleader.django.DatabaseScheduler``: django-celery-beat's schedule, elected and fenced.

A drop-in for ``django_celery_beat.schedulers:DatabaseScheduler``: run it on every instance,
``celery -A proj beat -S beatleader.django.DatabaseScheduler`` (alias ``beatleader-django``);
nothing is added to ``INSTALLED_APPS`` (``django_celery_beat`` must be there, as it is for
django-celery-beat's own scheduler). It is :class:`beatleader.Scheduler` (election, fenced commit,
outbox, deterministic task ids and run headers, so ``beatleader.dedup.install(app)`` works) whose
dynamic entries (``dynamic.py``) are the enabled ``PeriodicTask`` rows, converted by
django-celery-beat's own ``ModelEntry`` (``rows.py``).

* **Reading.** The leader reads every enabled row at each takeover; while it leads, the
  ``beatleader-django`` thread (``sync.py``) checks django-celery-beat's change marker at most
  every :attr:`DatabaseScheduler.change_check_interval` seconds and hands only the changed rows
  to ``update_entries``. An edit, a disable, a new row therefore take effect within
  ``change_check_interval`` + ``change_poll_interval`` seconds (5 + 1 by default).
* **Run state.** ZooKeeper is the authority (ordinals, ``last_run_at``, the outbox). The leader
  alone writes the row's ``last_run_at``/``total_run_count`` after each published run, and
  disables a ``one_off`` row after its run (as django-celery-beat does, except that its
  ``total_run_count`` keeps counting: ordinals never restart). A row's ``last_run_at`` later
  than ZooKeeper's (the row was re-enabled or created again since: django-celery-beat then counts
  from its ``date_changed``) wins, so an interval restarts from the change as it does there.
  A takeover that finds runs in ZooKeeper the row does not have yet (the previous leader died
  before writing them back) writes them back, and treats a one-off as done.
* **Static entries.** ``beat_schedule`` entries are scheduled as by :class:`beatleader.Scheduler`
  (their state only in ZooKeeper); they are not copied into the database (django-celery-beat's
  scheduler does that), and a row named like one of them is ignored (it is usually the copy
  django-celery-beat's scheduler made).
* **Extension points** as django-celery-beat's scheduler has them: ``Entry`` (a ``ModelEntry``
  subclass converts the rows; its ``is_due`` decides, its ``save`` writes each run back, on the
  database thread), ``Model`` and ``Changes``. celery's default entry ``celery.backend_cleanup``
  is a row, created by the leader at takeover when no row of that name exists (an edited or
  disabled one is left alone). On an instance that does not lead, ``schedule`` and
  ``all_as_schedule()`` read outside the beat's own methods are a read-only view of the rows
  (read on demand); inside ``tick`` a follower reads nothing.
* **Status.** The leader publishes the rows' descriptions under ``sources/django``
  (``describe.py``), which ``beatleader status`` lists with the static entries; a row's
  ``start_time``, ``expires`` and ``one_off`` count there as its ``start_at``, ``end_at`` and
  ``max_runs``, so a one-off after its run and a row past its ``expires`` show as done (and
  :meth:`DatabaseScheduler.entry_done` exports no period for them).

Guarantees (besides :class:`beatleader.Scheduler`'s): a follower makes no database request;
database errors are logged once per change of state, retried, and never stop beat; every row
send goes through the fence and the outbox like any other entry.

Not guaranteed: a row ``expires`` in the past stops its sends but the row is not disabled; an
unusable row (no schedule, arguments that are not JSON) is logged and skipped, not disabled; a
one-off row edited after its run and before the leader wrote that run back is armed again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from celery import beat, schedules
from celery.utils.time import maybe_make_aware

from beatleader.beat import sigmask
from beatleader.beat.scheduler import Scheduler
from beatleader.beat.state import StoredState
from beatleader.django.describe import publish_rows
from beatleader.django.rows import RowEntry, enabled_rows, model_entry, overrides
from beatleader.django.sync import DatabaseSync, RunRecord
from beatleader.observe import Observer

logger = logging.getLogger("beatleader.django")

#: celery's default entry, a row here as in django-celery-beat (``install_default_entries``).
BACKEND_CLEANUP = "celery.backend_cleanup"


class _DjangoModel:
    """A class attribute that is django-celery-beat's model ``name``, imported when read.

    django-celery-beat's scheduler has ``Model = PeriodicTask`` and ``Changes = PeriodicTasks``;
    reading them here needs Django set up, as importing django-celery-beat's scheduler does. A
    subclass may set its own (a proxy model, say), as with django-celery-beat's.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        from django_celery_beat import models

        return getattr(models, self.name)


class RowsSource:
    """django-celery-beat's enabled rows as an entry source (``beat/sources/``).

    ``read_all`` at takeover is the database thread's full read (None when the database cannot
    say: the rows scheduled before are kept). Changes while leading come from that thread
    (``sync.py``, through ``update_entries``): ``poll`` has nothing to do.
    """

    def __init__(self, scheduler: DatabaseScheduler) -> None:
        self.scheduler = scheduler

    def prefetch(self, generation: int) -> None:
        pass

    def read_all(self) -> Mapping[str, beat.ScheduleEntry] | None:
        db = self.scheduler._db
        return db.read_all() if db is not None else {}

    def poll(self) -> None:
        pass


class DatabaseScheduler(Scheduler):
    """:class:`beatleader.Scheduler` over django-celery-beat's tables; see the module doc."""

    #: The class of the row entries. beatleader's :class:`RowEntry` (the default) converts each
    #: row with django-celery-beat's ``ModelEntry``; a ``ModelEntry`` subclass here converts the
    #: rows with it, and its own ``is_due`` and ``save`` are used (see ``docs/django.md``).
    #: Static (``beat_schedule``) entries are :attr:`static_entry_class` either way.
    Entry: Any = RowEntry
    #: The class of the static entries when :attr:`Entry` is a ``ModelEntry`` subclass.
    static_entry_class: type[beat.ScheduleEntry] = RowEntry
    #: The rows' model and change marker (django-celery-beat's ``PeriodicTask``, ``PeriodicTasks``).
    Model: Any = _DjangoModel("PeriodicTask")
    Changes: Any = _DjangoModel("PeriodicTasks")

    #: Seconds between two checks of django-celery-beat's change marker while leading.
    change_check_interval = 5.0
    #: Seconds between full reads while leading even when the marker did not move (changes made
    #: without ``save()``, as django-celery-beat's own 5-minute sync).
    full_read_interval = 300.0
    #: Seconds a takeover waits for a change check in progress before it goes on without the
    #: database (with the entries it has; the next check reads them all).
    takeover_read_timeout = 10.0
    #: First and longest delay before the database is tried again after an error.
    db_retry_first = 1.0
    db_retry_max = 30.0
    #: Seconds ``close`` waits for the database thread to write the queued run state.
    db_stop_timeout = 3.0

    #: The runtime entries' source and the rows' (the rows win a name both define).
    source_classes = (*Scheduler.source_classes, RowsSource)
    _db: DatabaseSync | None = None
    _recorder: _RunRecorder | None = None
    _view: tuple[float, Mapping[str, beat.ScheduleEntry]] | None = None
    #: Per thread: how deep inside the beat's own methods (setup, tick, close) it is.
    _inside: threading.local
    #: Rows created by the leader at takeover when missing (``install_default_entries``).
    default_rows: Mapping[str, Mapping[str, Any]] = {}

    def setup_schedule(self) -> None:
        """As :meth:`beatleader.Scheduler.setup_schedule`; one database thread per session."""
        ensure_django()
        self.row_entry_class = self._row_entry_class()
        with self._own():
            if self._db is not None and not self._closed:
                return super().setup_schedule()  # open: nothing to do, as there
            if self._recorder is None:
                self._recorder = _RunRecorder(self)
                self.observers.add(self._recorder)
            self._db = DatabaseSync(self)
            super().setup_schedule()
            with sigmask.blocked_in_new_threads():  # signals reach the tick thread only
                self._db.start()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        with self._own():
            return super().tick(*args, **kwargs)

    def close(self) -> None:
        with self._own():
            if self._db is not None and not self._closed:
                self._db.stop(self.db_stop_timeout)  # while still leading: writes what is queued
            super().close()

    def sync(self) -> None:
        with self._own():
            super().sync()

    @contextlib.contextmanager
    def _own(self) -> Iterator[None]:
        """Inside the beat's own methods ``schedule`` is the live schedule (no database read)."""
        inside = self.__dict__.get("_inside")
        if inside is None:
            inside = self.__dict__.setdefault("_inside", threading.local())
        inside.depth = getattr(inside, "depth", 0) + 1
        try:
            yield
        finally:
            inside.depth -= 1

    def _row_entry_class(self) -> Any:
        from django_celery_beat.schedulers import ModelEntry

        entry = self.Entry
        if isinstance(entry, type) and issubclass(entry, ModelEntry):
            return entry
        if isinstance(entry, type) and issubclass(entry, RowEntry):
            return ModelEntry
        raise SystemExit(
            f"beatleader: {type(self).__name__}.Entry must be django_celery_beat's ModelEntry "
            f"or a subclass (it converts the rows), or beatleader's RowEntry; it is {entry!r}"
        )

    # -- celery's entry hooks: static entries are plain entries whatever ``Entry`` is ----------

    def _entry_class(self) -> type[beat.ScheduleEntry]:
        entry = self.Entry
        if isinstance(entry, type) and issubclass(entry, RowEntry):
            return entry
        return self.static_entry_class

    def _maybe_entry(self, name: str, entry: Any) -> Any:
        cls = self._entry_class()
        if isinstance(entry, cls):
            entry.scheduler = self
            return entry
        return cls(**dict(entry, name=name, app=self.app))

    def add(self, **kwargs: Any) -> Any:
        entry = self._entry_class()(app=self.app, **kwargs)
        self.data[entry.name] = entry
        return entry

    def update_from_dict(self, mapping: Mapping[str, Any]) -> None:
        self.data.update({name: self._maybe_entry(name, entry) for name, entry in mapping.items()})

    def merge_inplace(self, b: Mapping[str, Any]) -> None:
        schedule = self.data
        for key in set(schedule) - set(b):
            schedule.pop(key, None)
        for key, entry in b.items():
            if key in schedule:
                schedule[key].update(self._maybe_entry(key, entry))
            else:
                schedule[key] = self._maybe_entry(key, entry)

    def install_default_entries(self, data: Mapping[str, Any]) -> None:
        """celery's default entries become rows, as django-celery-beat installs them.

        ``celery.backend_cleanup`` (when ``result_expires`` is set) is created by the leader at
        takeover as a ``PeriodicTask`` row if no row of that name exists; an existing row (edited
        or disabled in the admin) is left as it is. django-celery-beat's scheduler writes its
        task, schedule and options over the row at every start; see docs/compatibility.md.
        A static entry of that name keeps it static (no row is created).
        """
        rows: dict[str, Mapping[str, Any]] = {}
        if self.app.conf.result_expires and BACKEND_CLEANUP not in data:
            rows[BACKEND_CLEANUP] = {
                "task": BACKEND_CLEANUP,
                "schedule": schedules.crontab("0", "4", "*"),
                "options": {"expire_seconds": 12 * 3600},
            }
        self.default_rows = rows

    # -- reading the rows from outside the beat ------------------------------------------------

    def get_schedule(self) -> Mapping[str, beat.ScheduleEntry]:
        """The live schedule while leading or inside the beat's own methods; else a read-only view.

        On a follower (or a scheduler that never ran), outside ``setup_schedule``/``tick``/
        ``sync``/``close``: the
        static entries and the enabled rows, read from the database on demand (at most once per
        :attr:`change_check_interval`), as django-celery-beat's ``schedule`` shows them.
        """
        election = self._election
        leading = election is not None and election.is_leader
        inside = self.__dict__.get("_inside")
        if leading or (inside is not None and getattr(inside, "depth", 0) > 0):
            live: Mapping[str, beat.ScheduleEntry] = self.data
            return live
        now = time.monotonic()
        if self._view is None or now - self._view[0] >= self.change_check_interval:
            self._view = now, MappingProxyType({**self.all_as_schedule(), **self.data})
        return self._view[1]

    schedule = property(get_schedule, beat.Scheduler.set_schedule)

    def all_as_schedule(self) -> dict[str, Any]:
        """Every enabled row as an entry of :attr:`Entry`'s row class (reads the database).

        As django-celery-beat's: a row that cannot be converted is left out; nothing is written.
        Rows named like a static entry are included (the schedule ignores them).
        """
        ensure_django()
        entry_class = self._row_entry_class()
        found: dict[str, Any] = {}
        for model in enabled_rows(self.Model):
            try:
                found[model.name] = model_entry(model, self.app, entry_class)
            except Exception:
                logger.debug("beatleader: row %r left out", model.name, exc_info=True)
        return found

    # -- for the database thread -----------------------------------------------------------------

    def has_taken_over(self) -> bool:
        """Leading, with this leadership's state loaded (the database is this leader's now)."""
        election = self._election
        return (
            not self._closed
            and election is not None
            and election.is_leader
            and election.generation == self._loaded_generation
        )

    def describe_rows(self, entries: list[Any]) -> bool:
        """Publish the rows' descriptions for ``status`` (fenced); False when that failed."""
        election, client = self._election, self._zk
        fence = election.node if election is not None else None
        if fence is None or client is None:
            return False
        counts: dict[str, int] = {}
        for entry in entries:  # one lookup each: the tick thread may change the schedule
            live = self.schedule.get(entry.name)
            if live is not None:
                counts[entry.name] = int(live.total_run_count)
        try:
            publish_rows(client, self.settings.path, fence, entries, counts)
        except Exception as exc:
            self._report("django:describe", "describe", f"cannot publish the rows ({exc!r})")
            return False
        self._resolved("django:describe")
        return True

    def entry_done(self, name: str) -> bool:
        """As :meth:`beatleader.Scheduler.entry_done`, and a row that ran its one-off run or is
        past its ``expires`` (no period is exported for it: never overdue)."""
        if super().entry_done(name):
            return True
        entry = self.schedule.get(name)
        if not isinstance(entry, RowEntry) or entry.row is None:
            return False
        return entry.finished or entry.expired(maybe_make_aware(entry.default_now()))

    # -- the dynamic seam -------------------------------------------------------------------------

    def _put_entry(
        self,
        name: str,
        entry: beat.ScheduleEntry,
        stored: dict[str, StoredState] | None,
        level: int = logging.INFO,
    ) -> None:
        current = self.schedule.get(name)
        row_last = entry.last_run_at
        super()._put_entry(name, entry, stored, level)
        if isinstance(entry, RowEntry) and entry.row is not None and entry is not current:
            self._settle_row(entry, row_last)

    def _settle_row(self, entry: RowEntry, row_last: datetime | None) -> None:
        """Reconcile a freshly read row with the run state ZooKeeper (or this leader) has."""
        row = entry.row
        assert row is not None
        kept_last, kept_count = entry.last_run_at, entry.total_run_count
        unrecorded = kept_count > row.db_count and _not_before(kept_last, row.date_changed)
        if row_last is not None and not _not_before(kept_last, row_last):
            entry.last_run_at = row_last  # changed since its last run: count from the change
        if row.one_off:
            entry.base = row.db_count if unrecorded else kept_count
        if unrecorded and self._db is not None:  # the previous leader did not write it back
            self._db.record(RunRecord(row.pk, kept_count, kept_last, row.one_off))


class _RunRecorder(Observer):
    """After each published run of a row: queue its write-back (the leader alone publishes)."""

    def __init__(self, scheduler: DatabaseScheduler) -> None:
        self.scheduler = scheduler

    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        found = self.scheduler.schedule.get(entry)
        db = self.scheduler._db
        if isinstance(found, RowEntry) and found.row is not None and db is not None:
            row, saver = found.row, found.model_entry
            if saver is not None and not overrides(type(saver), "save"):
                saver = None
            run = RunRecord(row.pk, found.total_run_count, found.last_run_at, row.one_off, saver)
            db.record(run)


def _not_before(moment: datetime | None, other: datetime | None) -> bool:
    if moment is None or other is None:
        return other is None
    return bool(maybe_make_aware(moment) >= maybe_make_aware(other))


def ensure_django() -> None:
    """Set Django up when celery did not; one line (SystemExit) when it cannot be."""
    try:
        import django
        from django.apps import apps
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        raise SystemExit(
            "beatleader: beatleader.django.DatabaseScheduler needs Django and django-celery-beat: "
            "pip install 'beatleader[django]'"
        ) from None
    try:
        if not apps.ready:
            django.setup()
    except (ImproperlyConfigured, ImportError) as exc:
        raise SystemExit(
            f"beatleader: beatleader.django.DatabaseScheduler cannot set Django up ({exc}); "
            "set DJANGO_SETTINGS_MODULE as your celery app module does"
        ) from None
    if not apps.is_installed("django_celery_beat"):
        raise SystemExit(
            "beatleader: beatleader.django.DatabaseScheduler reads django-celery-beat's tables: "
            "add 'django_celery_beat' to INSTALLED_APPS and run 'manage.py migrate'"
        )
