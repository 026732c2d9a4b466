"""django-celery-beat's ``PeriodicTask`` rows as beatleader schedule entries.

A row becomes a :class:`RowEntry`: a celery ``ScheduleEntry`` whose schedule, arguments and
options come from django-celery-beat's own ``ModelEntry`` (interval, crontab, solar, clocked;
``queue``/``exchange``/``routing_key``/``priority``, ``headers`` with ``periodic_task_name``,
``expires``/``expire_seconds``), plus :class:`RowInfo`: what ``ModelEntry.is_due`` reads from the
row (``one_off``, ``start_time``, ``expires``) and the row's own run count and change time.

Guarantees: reading never writes (``ModelEntry`` disables a broken row with a ``save()``; here a
broken row raises :class:`BadRow`, and the caller reports it); :meth:`RowEntry.is_due` never
touches the database (the scheduler queues the writes it implies); a row's
:attr:`RowInfo.signature` changes exactly when something that shapes its sends changes (not when
its run state is written back).

Not guaranteed: ``start_time`` of a crontab row is honoured as a plain "not before" time
(django-celery-beat aligns the first run to the crontab; here the crontab does that by itself).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import beat, schedules
from celery.utils.time import maybe_make_aware

#: django-celery-beat's "do not ask again" delay (seconds), for a finished or expired row.
NEVER = 100_000_000.0

#: Most finished one-off rows described for ``status`` (the last changed): an app that makes a
#: one-off row per job keeps thousands, and the description must stay under ZooKeeper's 1 MB.
FINISHED_LIMIT = 1000

#: What a row is read with: its schedule rows in the same query.
SCHEDULE_FIELDS = ("interval", "crontab", "solar", "clocked")


class BadRow(ValueError):
    """A row that cannot be scheduled (no schedule, arguments that are not JSON, ...)."""


@dataclass(frozen=True)
class RowInfo:
    """The parts of a ``PeriodicTask`` row that beatleader needs besides the celery entry."""

    pk: Any
    one_off: bool
    start_time: datetime | None
    expires: datetime | None
    #: ``total_run_count`` in the row when it was read (the leader writes it back after runs).
    db_count: int
    #: ``date_changed``: the last ``save()`` (an edit, an enable); write-backs do not move it.
    date_changed: datetime | None
    #: A digest of everything an edit can change; equal signatures need no update.
    signature: str


class RowEntry(beat.ScheduleEntry):  # type: ignore[misc]
    """A schedule entry that may come from a row (``row``); without one, a plain celery entry.

    ``base``: for a ``one_off`` row, the run count when it was (re)armed; it is finished once
    ``total_run_count`` passed it. Both survive ``next(entry)`` (celery copies every attribute).
    """

    def __init__(
        self,
        *args: Any,
        row: RowInfo | None = None,
        base: int | None = None,
        model_entry: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.row = row
        self.base = base
        #: The row converted by the scheduler's own ``Entry`` class (a ``ModelEntry`` subclass)
        #: when that class overrides ``is_due`` or ``save``; else None. See :meth:`is_due`.
        self.model_entry = model_entry

    @property
    def finished(self) -> bool:
        """A one-off row that ran since it was armed."""
        return bool(
            self.row is not None
            and self.row.one_off
            and self.base is not None
            and self.total_run_count > self.base
        )

    def expired(self, now: datetime) -> bool:
        return bool(self.row is not None and self.row.expires and now >= self.row.expires)

    def is_due(self) -> Any:
        """``ModelEntry.is_due`` without its database writes (see the module docstring).

        With a ``model_entry`` whose class overrides ``is_due``, that override decides: it sees
        this entry's run state (``last_run_at``; ``total_run_count`` counted from the last arming
        for a one-off row, as django-celery-beat resets it), and its database writes (a
        ``_disable`` or ``save`` from within ``is_due``) stay in memory: the leader writes the
        row itself, from the database thread.
        """
        row = self.row
        if row is None:
            return super().is_due()
        if self.model_entry is not None and overrides(type(self.model_entry), "is_due"):
            return self._model_is_due(row)
        now = maybe_make_aware(self.default_now())
        if self.finished or self.expired(now):
            return schedules.schedstate(False, NEVER)
        if row.start_time is not None and now < row.start_time:
            wait = math.ceil((row.start_time - now).total_seconds())
            return schedules.schedstate(False, max(wait, 1))
        last = maybe_make_aware(self.last_run_at).astimezone(self.app.timezone)
        return self.schedule.is_due(last)

    def _model_is_due(self, row: RowInfo) -> Any:
        entry = self.model_entry
        model = entry.model
        runs = self.total_run_count - (self.base or 0) if row.one_off else self.total_run_count
        entry.last_run_at = model.last_run_at = self.last_run_at
        entry.total_run_count = model.total_run_count = runs
        model.enabled = True  # read enabled; a disable by an earlier call stayed in memory
        entry._quiet = True
        try:
            return entry.is_due()
        finally:
            entry._quiet = False


def overrides(cls: type, name: str) -> bool:
    """``cls`` (a ``ModelEntry`` subclass) has its own ``name``, not django-celery-beat's."""
    from django_celery_beat.schedulers import ModelEntry

    own = getattr(cls, "converted_class", cls)  # a converter: the class it converts with
    return getattr(own, name, None) is not getattr(ModelEntry, name)


def enabled_rows(model_class: Any = None) -> Any:
    """The enabled ``PeriodicTask`` rows (of ``model_class``), schedules in the same query."""
    if model_class is None:
        from django_celery_beat.models import PeriodicTask

        model_class = PeriodicTask
    return model_class._default_manager.filter(enabled=True).select_related(*SCHEDULE_FIELDS)


def read_rows(
    app: Any, skip: frozenset[str], model_class: Any = None, entry_class: Any = None
) -> tuple[dict[str, RowEntry], dict[str, str]]:
    """Every enabled row not named in ``skip``: (name -> entry, name -> why it is unusable).

    ``model_class`` is the scheduler's ``Model`` (default ``PeriodicTask``), ``entry_class`` its
    row ``Entry`` (default django-celery-beat's ``ModelEntry``).
    """
    entries: dict[str, RowEntry] = {}
    bad: dict[str, str] = {}
    for model in enabled_rows(model_class):
        if model.name in skip:
            continue
        try:
            entries[model.name] = row_entry(model, app, entry_class)
        except Exception as exc:  # one unusable row must not hide the others
            bad[model.name] = str(exc) or type(exc).__name__
    return entries, bad


def finished_rows(
    app: Any,
    skip: frozenset[str],
    model_class: Any = None,
    entry_class: Any = None,
    limit: int = FINISHED_LIMIT,
) -> dict[str, RowEntry]:
    """The one-off rows that ran and were disabled since (name -> entry), for ``status`` only:
    the ``limit`` last changed (``date_changed``, then the newest row).

    They are not scheduled; :mod:`beatleader.django.describe` lists them as done. A row that
    cannot be converted is left out (nothing is logged: it does not run either way).
    """
    if model_class is None:
        from django_celery_beat.models import PeriodicTask

        model_class = PeriodicTask
    rows = (
        model_class._default_manager.filter(enabled=False, one_off=True, total_run_count__gt=0)
        .select_related(*SCHEDULE_FIELDS)
        .order_by("-date_changed", "-pk")[:limit]
    )
    found: dict[str, RowEntry] = {}
    for model in rows:
        if model.name in skip:
            continue
        try:
            entry = row_entry(model, app, entry_class)
        except Exception:  # unusable: it would not run if enabled either
            continue
        entry.base = entry.total_run_count - 1  # armed before its last run: finished
        found[model.name] = entry
    return found


def model_entry(model: Any, app: Any, entry_class: Any = None) -> Any:
    """One row converted by ``entry_class`` (a ``ModelEntry``), refusing instead of writing.

    :class:`BadRow` when it cannot run (django-celery-beat would disable it).
    """
    if model.scheduler is None:
        raise BadRow("it has no interval, crontab, solar or clocked schedule")
    for field in ("args", "kwargs", "headers"):
        try:
            value = json.loads(getattr(model, field) or ("[]" if field == "args" else "{}"))
        except ValueError as exc:
            raise BadRow(f"its {field} are not JSON ({exc})") from None
        if field == "headers" and not isinstance(value, dict):
            raise BadRow('its headers are not a JSON object like {"x-origin": "admin"}')
    return converter(entry_class)(model, app=app)


def row_entry(model: Any, app: Any, entry_class: Any = None) -> RowEntry:
    """The :class:`RowEntry` of one ``PeriodicTask``; :class:`BadRow` when it cannot run."""
    converted = model_entry(model, app, entry_class)
    custom = overrides(type(converted), "is_due") or overrides(type(converted), "save")
    info = RowInfo(
        pk=model.pk,
        one_off=bool(model.one_off),
        start_time=_aware(model.start_time),
        expires=_aware(model.expires),
        db_count=int(model.total_run_count or 0),
        date_changed=model.date_changed,
        signature=_signature(model, converted),
    )
    return RowEntry(
        name=model.name,
        task=model.task,
        schedule=converted.schedule,
        args=converted.args,
        kwargs=converted.kwargs,
        options=converted.options,
        last_run_at=converted.last_run_at,  # the row's, else date_changed (as ModelEntry counts)
        total_run_count=info.db_count,
        app=app,
        row=info,
        model_entry=converted if custom else None,
    )


def _aware(moment: datetime | None) -> datetime | None:
    """A naive time (``USE_TZ = False``) read as UTC, as celery's ``maybe_make_aware`` does."""
    return None if moment is None else maybe_make_aware(moment)


def _signature(model: Any, converted: Any) -> str:
    parts = (
        model.pk,
        model.task,
        model.args,
        model.kwargs,
        model.queue,
        model.exchange,
        model.routing_key,
        model.priority,
        model.headers,
        model.expires,
        model.expire_seconds,
        model.one_off,
        model.start_time,
        model.date_changed,
        repr(converted.schedule),
    )
    return repr(parts)


def converter(entry_class: Any = None) -> type:
    """``entry_class`` (default ``ModelEntry``), made to refuse a row instead of disabling it.

    Built once per class. After conversion, ``_disable`` only changes the model in memory, and
    ``save`` does nothing while ``_quiet`` (inside :meth:`RowEntry.is_due`, on the beat thread).
    """
    if entry_class is None:
        from django_celery_beat.schedulers import ModelEntry

        entry_class = ModelEntry
    found = _CONVERTERS.get(entry_class)
    if found is not None:
        return found

    class _Converter(entry_class):  # type: ignore[misc]
        converted_class = entry_class
        _reading = True
        _quiet = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._reading = False

        def _disable(self, model: Any) -> None:
            if self._reading:
                raise BadRow("django-celery-beat would disable it")
            model.no_changes = True
            model.enabled = False

        def save(self, *args: Any, **kwargs: Any) -> None:
            if not self._quiet:
                super().save(*args, **kwargs)

    _Converter.__name__ = _Converter.__qualname__ = entry_class.__name__
    _Converter.__module__ = entry_class.__module__
    _CONVERTERS[entry_class] = _Converter
    return _Converter


_CONVERTERS: dict[type, type] = {}
