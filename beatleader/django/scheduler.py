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
* **Status.** The leader publishes the rows' descriptions under ``sources/django``
  (``describe.py``), which ``beatleader status`` lists with the static entries.

Guarantees (besides :class:`beatleader.Scheduler`'s): a follower makes no database request;
database errors are logged once per change of state, retried, and never stop beat; every row
send goes through the fence and the outbox like any other entry.

Not guaranteed: a row ``expires`` in the past stops its sends but the row is not disabled; an
unusable row (no schedule, arguments that are not JSON) is logged and skipped, not disabled; a
one-off row edited after its run and before the leader wrote that run back is armed again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from celery import beat
from celery.utils.time import maybe_make_aware

from beatleader.beat.scheduler import Scheduler
from beatleader.beat.state import StoredState
from beatleader.django.describe import publish_rows
from beatleader.django.rows import RowEntry
from beatleader.django.sync import DatabaseSync, RunRecord
from beatleader.observe import Observer


class DatabaseScheduler(Scheduler):
    """:class:`beatleader.Scheduler` over django-celery-beat's tables; see the module doc."""

    Entry = RowEntry

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

    _db: DatabaseSync | None = None

    def setup_schedule(self) -> None:
        ensure_django()
        self._db = DatabaseSync(self)
        self.observers.add(_RunRecorder(self))
        super().setup_schedule()
        self._db.start()

    def close(self) -> None:
        if self._db is not None:
            self._db.stop(self.db_stop_timeout)  # while still leading: writes what is queued
        super().close()

    # -- for the database thread -----------------------------------------------------------------

    @property
    def static_names(self) -> frozenset[str]:
        return self._static_names

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
        try:
            publish_rows(client, self.settings.path, fence, entries)
        except Exception as exc:
            self._report("django:describe", "describe", f"cannot publish the rows ({exc!r})")
            return False
        self._reported.pop("django:describe", None)
        return True

    # -- the dynamic seam -------------------------------------------------------------------------

    def dynamic_entries(self) -> Mapping[str, beat.ScheduleEntry]:
        """The rows, beside any other source's entries (``super()``); the rows win a clash."""
        rows = self._db.read_all() if self._db is not None else {}
        if rows is None:  # the database cannot say: keep what we have, read all later
            return {name: self.schedule[name] for name in self.dynamic_names}
        return {**super().dynamic_entries(), **rows}

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
            row = found.row
            db.record(RunRecord(row.pk, found.total_run_count, found.last_run_at, row.one_off))


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
