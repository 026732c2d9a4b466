"""Entries that change while beat runs: what the seam promises, and its change queue.

The static schedule is the app's ``beat_schedule`` (plus celery's default entries), fixed when
the scheduler starts; its fingerprint is what instances compare (``peers.py``). *Dynamic* entries
come from the scheduler's **sources** (``beat/sources/``: runtime definitions in ZooKeeper, a
database), one object each, built from :attr:`beatleader.Scheduler.source_classes`:

- at each takeover the leader asks each source to ``prefetch`` (before the run state is read),
  then :meth:`~beatleader.Scheduler.dynamic_entries` gathers every source's ``read_all`` (a
  subclass may override it: what it returns is the dynamic schedule), and
- later changes are reported with :meth:`beatleader.Scheduler.update_entries` (from any thread: a
  ZooKeeper watch read by a source's ``poll`` on the tick, a poller thread); the leader's tick
  applies them, at most ``change_poll_interval`` seconds later, without a ZooKeeper read except
  the run state of an entry it did not have.

Guarantees: a changed entry keeps its run state (``last_run_at``, ``total_run_count``), so a
change does not re-run it or restart its ordinals; an entry added while leading continues from
its stored run state (one read); a run committed before a change is published as it was planned
(the outbox keeps the entry it was committed with); a dynamic entry cannot replace a static one
(reported once, ignored); removing an entry keeps its run state in ZooKeeper (``prune`` removes it).
Changes reported before a takeover are superseded by the takeover's full read.

Static entries cannot be replaced, but they can be **paused**:
:meth:`~beatleader.Scheduler.pause_static` reports the whole set of paused static names (from any
thread; the source calls it from ``dynamic_entries`` too, at each takeover). A paused static entry
leaves the schedule (its run state is kept, a run it already committed is still published) and is
put back as it was, with the run state of its latest run, when it is no longer in the set. A paused
name that is not static is ignored (dynamic entries pause by leaving the schedule:
``update_entries(None)``).

Not guaranteed: a follower applies nothing (it reads everything when it takes over); changes are
applied in the order the source reported them, last one wins per name.

The scheduler applies changes itself (``scheduler.py``, section "entries that change"); this
module holds :class:`EntryChanges`, the queue any thread puts changes in and the tick takes.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from celery import beat


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
