"""Entries that change while beat runs: the seam for runtime definitions and database schedules.

The static schedule is the app's ``beat_schedule`` (plus celery's default entries), fixed when
the scheduler starts; its fingerprint is what instances compare (``peers.py``). *Dynamic* entries
come from the scheduler's **sources** (``beat/sources/``: runtime definitions in ZooKeeper, a
database), one object each, built from :attr:`DynamicScheduler.source_classes`:

- at each takeover the leader asks each source to ``prefetch`` (before the run state is read),
  then :meth:`DynamicScheduler.dynamic_entries` gathers every source's ``read_all`` (a subclass may
  override it: what it returns is the dynamic schedule), and
- later changes are reported with :meth:`DynamicScheduler.update_entries` (from any thread: a
  ZooKeeper watch read by a source's ``poll`` on the tick, a poller thread); the leader's tick
  applies them, at most ``change_poll_interval`` seconds later, without a ZooKeeper read except
  the run state of an entry it did not have.

Guarantees: a changed entry keeps its run state (``last_run_at``, ``total_run_count``), so a
change does not re-run it or restart its ordinals; an entry added while leading continues from
its stored run state (one read); a run committed before a change is published as it was planned
(the outbox keeps the entry it was committed with); a dynamic entry cannot replace a static one
(reported once, ignored); removing an entry keeps its run state in ZooKeeper (``prune`` removes it).
Changes reported before a takeover are superseded by the takeover's full read.

Static entries cannot be replaced, but they can be **paused**: :meth:`DynamicScheduler.pause_static`
reports the whole set of paused static names (from any thread; the source calls it from
``dynamic_entries`` too, at each takeover). A paused static entry leaves the schedule (its run
state is kept, a run it already committed is still published) and is put back as it was, with the
run state of its latest run, when it is no longer in the set. A paused name that is not static is
ignored (dynamic entries pause by leaving the schedule: ``update_entries(None)``).

Not guaranteed: a follower applies nothing (it reads everything when it takes over); changes are
applied in the order the source reported them, last one wins per name.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar

from celery import beat

from beatleader.beat.leading import LeadingScheduler
from beatleader.beat.sources import EntrySource
from beatleader.beat.sources.runtime import RuntimeSource
from beatleader.beat.state import StoredState

logger = logging.getLogger("beatleader.scheduler")


class EntryChanges:
    """Changes queued by any thread (name -> new entry, or None to remove), taken by the tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, beat.ScheduleEntry | None] = {}
        self._paused: frozenset[str] | None = None

    def put(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None:
        with self._lock:
            self._pending.update(changes)

    def take(self) -> dict[str, beat.ScheduleEntry | None]:
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def put_paused(self, names: Collection[str]) -> None:
        with self._lock:
            self._paused = frozenset(names)

    def take_paused(self) -> frozenset[str] | None:
        """The latest paused set reported since the last take (None: none reported)."""
        with self._lock:
            taken, self._paused = self._paused, None
        return taken

    def __len__(self) -> int:
        return len(self._pending)


class DynamicScheduler(LeadingScheduler):
    """Adds dynamic entries to :class:`LeadingScheduler`; see the module docstring."""

    #: Longest sleep of a leader's tick, so that changes reported by :meth:`update_entries` apply
    #: within it (a local check: no ZooKeeper request).
    change_poll_interval = 1.0
    #: The entry sources, each built with the scheduler (``beat/sources/``); later ones win a
    #: name both define. A subclass adds its own: ``(*Scheduler.source_classes, MySource)``.
    source_classes: ClassVar[tuple[Callable[[Any], EntrySource], ...]] = (RuntimeSource,)

    _static_names: frozenset[str]
    _dynamic_names: set[str]
    #: Paused static entries, out of the schedule, by name (the object put back on resume).
    _paused_static: dict[str, beat.ScheduleEntry]

    def _init_dynamic(self) -> None:
        self._changes = EntryChanges()
        self._static_names = frozenset()
        self._dynamic_names = set()
        self._paused_static = {}
        #: Which source each dynamic entry came from (a source that cannot say keeps its own).
        self._source_of: dict[str, int] = {}
        self.sources: list[EntrySource] = [make(self) for make in self.source_classes]
        runtime = [s for s in self.sources if isinstance(s, RuntimeSource)]
        #: The runtime entries' source (None in a subclass without one).
        self.runtime: RuntimeSource | None = runtime[0] if runtime else None

    # -- the hooks ----------------------------------------------------------------------------

    def dynamic_entries(self) -> Mapping[str, beat.ScheduleEntry]:
        """Every dynamic entry now, by name; read by the leader at each takeover.

        Each source's ``read_all``, later sources winning a name; a source that cannot say
        (None) keeps the entries it gave before.
        """
        found: dict[str, beat.ScheduleEntry] = {}
        owners: dict[str, int] = {}
        for number, source in enumerate(self.sources):
            entries = source.read_all()
            if entries is None:
                kept = [n for n, o in self._source_of.items() if o == number]
                entries = {n: self.schedule[n] for n in kept if n in self.schedule}
            found.update(entries)
            owners.update(dict.fromkeys(entries, number))
        self._source_of = owners
        return found

    def update_entries(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None:
        """Report changed entries (an entry: add or replace; None: remove); thread-safe."""
        self._changes.put(changes)

    def pause_static(self, names: Collection[str]) -> None:
        """Report the static entries paused now: the whole set (the others run); thread-safe."""
        self._changes.put_paused(names)

    @property
    def dynamic_names(self) -> frozenset[str]:
        """Names of the dynamic entries this leader schedules now."""
        return frozenset(self._dynamic_names)

    @property
    def static_names(self) -> frozenset[str]:
        """Names of the static (``beat_schedule``) entries, fixed at setup."""
        return self._static_names

    @property
    def runtime_definitions(self) -> dict[str, Any]:
        """The valid runtime definitions this leader knows now, by entry name (a copy)."""
        return dict(self.runtime.definitions) if self.runtime is not None else {}

    @property
    def run_requests(self) -> list[Any]:
        """The run-now requests this leader has not consumed yet, oldest first (a copy)."""
        return list(self.runtime.requests) if self.runtime is not None else []

    @property
    def paused_names(self) -> frozenset[str]:
        """Names of the static entries this leader holds paused now."""
        return frozenset(self._paused_static)

    # -- applied by the leader's tick -----------------------------------------------------------

    def _freeze_static(self) -> None:
        """Called once the static schedule is set up: these names are not dynamic."""
        self._static_names = frozenset(self.schedule)

    def _prefetch_dynamic(self, generation: int) -> None:
        """At takeover, before the run state is read: each source may start its reads here."""
        for source in self.sources:
            source.prefetch(generation)

    def _load_dynamic(self, stored: dict[str, StoredState]) -> None:
        """At takeover: the full read replaces every dynamic entry and every queued change."""
        self._changes.take()
        self._changes.take_paused()
        for name, entry in self._paused_static.items():  # continued as the scheduled ones are
            if name in stored:
                self._continue(entry, stored[name])
        entries = dict(self.dynamic_entries())
        removed = {name: None for name in self._dynamic_names - set(entries)}
        self._apply({**removed, **entries}, stored)
        self._apply_paused()
        if entries or removed:
            logger.info(
                "beatleader: %d dynamic entries read at takeover (%d no longer defined)",
                len(entries),
                len(removed),
            )

    def _apply_changes(self) -> None:
        """Between takeovers: each source polls, then what :meth:`update_entries` queued applies."""
        for source in self.sources:
            source.poll()
        changes = self._changes.take()
        if changes:
            self._apply(changes, None)
        self._apply_paused()

    def _apply_paused(self) -> None:
        paused = self._changes.take_paused()
        if paused is None:
            return
        for name in sorted((paused & self._static_names) - set(self._paused_static)):
            entry = self.schedule.pop(name, None)  # its events on the heap are stale now
            if entry is None:
                continue
            self._paused_static[name] = entry
            if self.old_schedulers is not None:
                self.old_schedulers.pop(name, None)
            logger.info("beatleader: static entry %r paused (its run state is kept)", name)
        for name in sorted(set(self._paused_static) - paused):
            self._resume(name, self._paused_static.pop(name))

    def _resume(self, name: str, entry: beat.ScheduleEntry) -> None:
        found = self._stored.get(name)  # this leader's view of its latest run (a run-now's too)
        if found is not None:
            self._continue(entry, found)
        self._schedule(name, entry)
        logger.info("beatleader: static entry %r resumed", name)

    def _apply(
        self,
        changes: Mapping[str, beat.ScheduleEntry | None],
        stored: dict[str, StoredState] | None,
    ) -> None:
        # a takeover's full read logs one line (``_load_dynamic``), not one per entry
        level = logging.DEBUG if stored is not None else logging.INFO
        for name, entry in changes.items():
            if name in self._static_names:
                self._report(
                    f"dynamic:{name}",
                    "entry-clash",
                    f"a dynamic entry named {name!r} clashes with the static beat_schedule "
                    "entry of that name; the static entry is kept",
                )
            elif entry is None:
                self._remove_entry(name, level)
            else:
                self._put_entry(name, entry, stored, level)

    def _remove_entry(self, name: str, level: int = logging.INFO) -> None:
        self._dynamic_names.discard(name)
        self.schedule.pop(name, None)  # its events on the heap are stale now (identity check)
        if self.old_schedulers is not None:
            self.old_schedulers.pop(name, None)
        logger.log(level, "beatleader: entry %r removed (its run state is kept)", name)

    def _put_entry(
        self,
        name: str,
        entry: beat.ScheduleEntry,
        stored: dict[str, StoredState] | None,
        level: int = logging.INFO,
    ) -> None:
        entry.name = name
        current = self.schedule.get(name)
        if current is not None:  # a new object keeps the run state; old heap events go stale
            entry.last_run_at = current.last_run_at
            entry.total_run_count = current.total_run_count
        else:
            found = stored.get(name) if stored is not None else self._load_one(name)
            if found is not None:
                self._continue(entry, found)
        self._dynamic_names.add(name)
        self._schedule(name, entry)
        logger.log(level, "beatleader: entry %r %s", name, "changed" if current else "added")

    def _schedule(self, name: str, entry: beat.ScheduleEntry) -> None:
        """Put ``entry`` in the schedule and on the heap (its run state already set)."""
        self._on_server_clock(entry)
        self.schedule[name] = entry
        if self.old_schedulers is not None:
            self.old_schedulers[name] = entry
        if self._heap is not None:
            is_due, delay = self.safe_is_due(entry)
            when = self._when(entry, 0 if is_due else delay)
            heapq.heappush(self._heap, beat.event_t(when, 5, entry))

    def _load_one(self, name: str) -> StoredState | None:
        """The stored run state of one entry (one read), adopted."""
        assert self._store is not None
        found = self._store.load_one(name)
        if found is not None:
            self._stored[name] = found
        return found

    def _capped(self, delay: float) -> float:
        return min(delay, self.change_poll_interval)
