"""Entry sources: where the entries that change while beat runs come from.

The static schedule (``beat_schedule`` and celery's default entries) is fixed when the scheduler
starts and lives in the scheduler itself. Every other entry comes from a *source* that all
instances share and only the leader reads, behind one small protocol (:class:`EntrySource`):

* :meth:`~EntrySource.prefetch` at each takeover, before the run state is read (a source may
  start its reads so that both share one round trip);
* :meth:`~EntrySource.read_all` at each takeover, after the run state: every entry of the source
  now, by name, or None when the source cannot say (its entries are then kept as they were, and
  read again at the next takeover);
* :meth:`~EntrySource.poll` on every tick while leading: a source that learns of changes on the
  tick's thread (ZooKeeper watches) reads what changed and reports it with the host's
  ``update_entries``; a source with a thread of its own (a database poller) reports from that
  thread and does nothing here. ``poll`` must not block and makes no request when nothing changed.

The sources of a scheduler are its class's :attr:`beatleader.Scheduler.source_classes`, each
built with the scheduler as its host: ``runtime.RuntimeSource`` (definitions, pauses and run-now
requests in ZooKeeper) for every scheduler, ``beatleader.django``'s rows beside it for
``beatleader.django.DatabaseScheduler``. When two sources define one name, the later one wins.

Guarantees: a source only reads and reports; the scheduler alone decides, commits and publishes
(``beat/dynamic.py`` applies what sources report, keeping each entry's run state). A source's
problem is reported through the host (once per change), never raised into the tick.

May import what :mod:`beatleader.beat` may.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from celery import beat


class SourceHost(Protocol):
    """What a source may use of the scheduler that holds it."""

    app: Any

    def update_entries(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None: ...

    def pause_static(self, names: Collection[str]) -> None: ...


class EntrySource(Protocol):
    """One source of entries; see the module docstring."""

    def prefetch(self, generation: int) -> None:
        """At takeover, before the run state is read: start reading (optional)."""

    def read_all(self) -> Mapping[str, beat.ScheduleEntry] | None:
        """At takeover: every entry of this source now (None: cannot say, keep them)."""

    def poll(self) -> None:
        """Each leading tick: report what changed since (``update_entries``); must not block."""
