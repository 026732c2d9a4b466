"""The leader's conversation with the database, in one background thread (``beatleader-django``).

While this instance leads (and has taken over), the thread

* checks django-celery-beat's change marker (``PeriodicTasks.last_update``, bumped by every
  ``PeriodicTask`` save and delete and by schedule edits) at most every
  ``DatabaseScheduler.change_check_interval`` seconds; when it moved, reads the enabled rows
  and reports only the rows whose signature changed (and the rows gone) through
  ``update_entries``, and publishes the descriptions of the database entries for ``status``;
  every ``DatabaseScheduler.full_read_interval`` seconds it reads them whatever the marker says
  (django-celery-beat does the same every 5 minutes: a queryset ``update`` or ``loaddata`` does
  not move the marker); with them, the one-off rows that ran and were disabled, which are only
  described (as done), never scheduled;
* writes back run state: ``last_run_at`` and ``total_run_count`` of each published run, and
  ``enabled=False`` for a finished one-off, as django-celery-beat does (an expired row is left
  enabled: it is never due again, and ``status`` shows it as done).

Guarantees: a follower makes no database request; the thread writes only while this instance
leads (a write queued by a leader that lost leadership is dropped: the next leader writes the
same state from ZooKeeper, the authority, when it loads the row); write-backs only move a row's
``total_run_count`` forward (a late or repeated write cannot undo a newer one); a database error
is logged once per change of state (one line, no traceback), retried with backoff, and never
reaches celery's beat loop. The tick thread reads the database only at takeover
(:meth:`DatabaseSync.read_all`), and falls back to the entries it has when that fails.

Not guaranteed: the database's run state lags ZooKeeper's by the write-back delay (a broken
database: until it is back); a ``save()`` of a row loaded before a write-back (an admin form)
writes its older run count back, which the next run corrects.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from celery import Celery, beat

from beatleader.beat.planning import Backoff
from beatleader.beat.publishing import replaced
from beatleader.django.rows import RowEntry, finished_rows, read_rows

logger = logging.getLogger("beatleader.django")


@dataclass(frozen=True)
class RunRecord:
    """What the row of a run gets: its count, its time, and whether it is disabled now."""

    pk: Any
    ordinal: int
    last_run_at: datetime | None
    disable: bool
    #: The row's converted entry when the scheduler's ``Entry`` overrides ``save``: the write
    #: goes through that ``save`` (compared by identity: a record per run).
    entry: Any = field(default=None, compare=False)


class Health:
    """One log line per change of the database's state (failing with an error type, or fine)."""

    def __init__(self) -> None:
        self._state: str | None = None

    def failed(self, doing: str, exc: BaseException, retry: float) -> None:
        state = type(exc).__name__  # the state; its text varies while the database is away
        if state != self._state:
            self._state = state
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            logger.warning(
                "beatleader: database error while %s (%s: %s); retrying in %.1f s (further "
                "%ss are not logged until it answers again)",
                doing,
                state,
                text,
                retry,
                state,
            )

    def ok(self) -> None:
        if self._state is not None:
            self._state = None
            logger.warning("beatleader: the database answers again")


class RowsHost(Protocol):
    """What the sync thread needs of its scheduler (``DatabaseScheduler`` is one).

    A protocol rather than an import, so that this module sits below the scheduler that runs it.
    """

    app: Celery
    #: django-celery-beat's ``PeriodicTask`` and ``PeriodicTasks`` (or the scheduler's own).
    Model: Any
    Changes: Any
    #: The row entry class (django-celery-beat's ``ModelEntry`` or a subclass).
    row_entry_class: Any
    #: Rows the leader creates at takeover when no row of that name exists (name -> entry
    #: fields, as celery's ``install_default_entries`` gives them).
    default_rows: Mapping[str, Mapping[str, Any]]
    db_retry_first: float
    db_retry_max: float
    change_check_interval: float
    full_read_interval: float
    takeover_read_timeout: float

    @property
    def static_names(self) -> frozenset[str]: ...

    def has_taken_over(self) -> bool: ...

    def describe_rows(self, entries: list[Any]) -> bool: ...

    def update_entries(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None: ...


class DatabaseSync:
    """The ``beatleader-django`` thread of one :class:`DatabaseScheduler`; see the module doc."""

    def __init__(self, scheduler: RowsHost) -> None:
        self.scheduler = scheduler
        self.health = Health()
        self._backoff = Backoff(scheduler.db_retry_first, scheduler.db_retry_max)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        #: Held around every read that ends in entries handed to the scheduler, so that a
        #: takeover's full read and a change check never cross.
        self._read_lock = threading.Lock()
        self._writes: dict[Any, RunRecord] = {}
        self._writes_lock = threading.Lock()
        self._known: dict[str, str] = {}  # name -> signature of what the scheduler has
        self._marker: Any = None
        self._next_check = 0.0
        self._next_full_read = 0.0
        self._full_read = False
        self._bad: dict[str, str] = {}
        self._rows: dict[str, RowEntry] = {}  # the last read, for the description
        self._finished: dict[str, RowEntry] = {}  # finished one-offs, described as done
        self._described: Any = None
        self._describe_retry = 0.0
        self._thread = threading.Thread(target=self._run, name="beatleader-django", daemon=True)

    # -- called by the scheduler ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Flush the queued writes (while still leading), then end the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def record(self, run: RunRecord) -> None:
        """Queue a write-back (the newest per row wins); the thread writes it soon."""
        with self._writes_lock:
            queued = self._writes.get(run.pk)
            if queued is None or run.ordinal >= queued.ordinal:
                self._writes[run.pk] = run
        self._wake.set()

    def read_all(self) -> dict[str, RowEntry] | None:
        """At takeover (tick thread): every enabled row; None when the database cannot say."""
        if not self._read_lock.acquire(timeout=self.scheduler.takeover_read_timeout):
            self._full_read = True
            return None
        try:
            from django.db import close_old_connections

            close_old_connections()
            self._create_default_rows()
            marker, entries = self._read()
        except Exception as exc:
            self._failed("reading the schedule at takeover", exc)
            self._full_read = True
            return None
        else:
            self.health.ok()
            self._marker, self._full_read = marker, False
            self._known = {name: e.row.signature for name, e in entries.items() if e.row}
            self._next_check = time.monotonic() + self.scheduler.change_check_interval
            self._next_full_read = time.monotonic() + self.scheduler.full_read_interval
            self._wake.set()  # describe them for status
            return entries
        finally:
            self._read_lock.release()

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(self._timeout())
                self._wake.clear()
                if self._stopping.is_set():
                    break
                self._guarded(self._pass)
            self._guarded(lambda: self._pass(final=True))
        finally:
            _close_connection()

    def _guarded(self, step: Callable[[], None]) -> None:
        """One pass; an unexpected error is logged with its traceback and the loop goes on."""
        from django.db import close_old_connections

        try:
            close_old_connections()  # as Django does around a request (CONN_MAX_AGE)
            step()
        except Exception:
            logger.exception("beatleader: unexpected error in the database thread; going on")
            self._backoff.failed("db", time.monotonic())

    def _timeout(self) -> float:
        waits = [self.scheduler.change_check_interval]
        retry = self._backoff.not_before("db")
        if retry is not None:
            waits.append(retry - time.monotonic())
        return max(min(waits), 0.05)

    def _pass(self, final: bool = False) -> None:
        if not self._leading():
            with self._writes_lock:
                self._writes.clear()  # the next leader writes them from ZooKeeper's state
            self._described = None  # another leader may have described others meanwhile
            return
        if not self._backoff.ready("db", time.monotonic()):
            return
        try:
            self._flush_writes()
            if not final:
                self._check_changes()
        except Exception as exc:
            self._failed("writing run state" if final else "talking to it", exc)
            return
        self._backoff.succeeded("db")
        self.health.ok()
        if not final:
            self._describe()

    def _describe(self) -> None:
        """Publish the rows' descriptions when they changed; after a failure, once per check."""
        rows = {**self._finished, **self._rows}
        moment = datetime.now(timezone.utc)
        key = sorted((name, *_described(e, moment)) for name, e in rows.items())
        now = time.monotonic()
        if key == self._described or now < self._describe_retry:
            return
        if self.scheduler.describe_rows(list(rows.values())):
            self._described = key
        else:
            self._describe_retry = now + self.scheduler.change_check_interval

    def _leading(self) -> bool:
        return self.scheduler.has_taken_over()

    def _failed(self, doing: str, exc: BaseException) -> None:
        retry = self._backoff.failed("db", time.monotonic())
        self.health.failed(doing, exc, retry)
        _close_connection()  # Django opens a new one on the next query

    def _create_default_rows(self) -> None:
        """Create each default row that does not exist (an existing one is left as it is)."""
        host = self.scheduler
        manager = host.Model._default_manager
        for name, fields in host.default_rows.items():
            if manager.filter(name=name).exists():
                continue
            values = host.row_entry_class._unpack_fields(**fields)
            _, created = manager.get_or_create(name=name, defaults=values)
            if created:
                logger.info(
                    "beatleader: created the periodic task %r (celery's default entry, as "
                    "django-celery-beat installs it); edit or disable that row to change it",
                    name,
                )

    def _flush_writes(self) -> None:
        manager = self.scheduler.Model._default_manager
        with self._writes_lock:
            writes = list(self._writes.values())
        disabled = False
        for run in writes:
            if run.entry is not None:
                self._save_through_entry(run)
            rows = manager.filter(pk=run.pk, total_run_count__lt=run.ordinal)
            if run.disable:  # as django-celery-beat's save() of a disabled row: no last run
                updated = rows.update(enabled=False, last_run_at=None, total_run_count=run.ordinal)
                disabled = disabled or updated > 0
            else:
                rows.update(last_run_at=run.last_run_at, total_run_count=run.ordinal)
            with self._writes_lock:
                if self._writes.get(run.pk) == run:
                    del self._writes[run.pk]
            if run.entry is not None and run.disable:  # the entry's save does not disable
                disabled = manager.filter(pk=run.pk).update(enabled=False) > 0 or disabled
        if disabled:
            self.scheduler.Changes.update_changed()  # other readers (an old-style beat) too

    def _save_through_entry(self, run: RunRecord) -> None:
        """The scheduler's ``Entry.save`` writes the run, as django-celery-beat's sync does."""
        model = copy.copy(run.entry.model)  # a Django model copies; a user's Entry may not
        entry = replaced(run.entry, model=model)
        model.last_run_at = None if run.disable else run.last_run_at
        model.total_run_count = run.ordinal
        model.no_changes = True
        entry.last_run_at, entry.total_run_count = model.last_run_at, run.ordinal
        entry._quiet = False
        entry.save()

    def _check_changes(self) -> None:
        now = time.monotonic()
        if now < self._next_check and not self._full_read:
            return
        self._next_check = now + self.scheduler.change_check_interval
        if now >= self._next_full_read:  # changes that bypassed the marker (a queryset update)
            self._full_read = True
        if not self._full_read and self.scheduler.Changes.last_change() == self._marker:
            return
        with self._read_lock:
            marker, entries = self._read()
            changes: dict[str, RowEntry | None] = {
                name: entry
                for name, entry in entries.items()
                if entry.row is not None and self._known.get(name) != entry.row.signature
            }
            changes.update({name: None for name in self._known if name not in entries})
            self._known = {name: e.row.signature for name, e in entries.items() if e.row}
            self._marker, self._full_read = marker, False
            self._next_full_read = now + self.scheduler.full_read_interval
            if changes:
                logger.info("beatleader: database schedule changed: %s", sorted(changes))
                self.scheduler.update_entries(changes)

    def _read(self) -> tuple[Any, dict[str, RowEntry]]:
        host = self.scheduler
        marker = host.Changes.last_change()  # before the rows: a change in between is seen next
        entries, bad = read_rows(host.app, host.static_names, host.Model, host.row_entry_class)
        for name, why in bad.items():
            if self._bad.get(name) != why:
                logger.error("beatleader: periodic task %r is not scheduled: %s", name, why)
        self._bad = bad
        names, model, entry_class = host.static_names, host.Model, host.row_entry_class
        self._finished = finished_rows(host.app, names, model, entry_class)
        self._rows = entries
        return marker, entries


def _described(entry: RowEntry, now: datetime) -> tuple[str, int, bool]:
    """What a row's description depends on: its signature, a one-off's run count, and whether
    it expired (``describe.row_policy``): a row that expires is described again."""
    row = entry.row
    if row is None:
        return "", 0, False
    count = entry.total_run_count if row.one_off else 0
    return row.signature, count, entry.expired(now)


def _close_connection() -> None:
    from django.db import connection

    with contextlib.suppress(Exception):
        connection.close()
