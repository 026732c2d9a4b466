"""Runtime entries as an entry source: definitions, pauses and run-now requests from ZooKeeper.

What operators write with ``beatleader entry ...`` or :mod:`beatleader.entries.api` (the layout is
in ``zk/layout.py``, the codec in ``schedules/definitions.py``), the leader reads here and
reports to its scheduler through the source protocol (``beat/sources/__init__.py``):

* **Definitions** (``definitions/<name>``): at each takeover every one is read and validated
  (:class:`~beatleader.beat.sources.runtimewatch.DefinitionWatch`: one listing and multi-reads
  of 500 nodes, sent by :meth:`RuntimeSource.prefetch` before the run state is read so that both
  share one pipeline); while leading, ZooKeeper watches report changes and :meth:`poll` reads
  only what changed, then hands the entries to the host's ``update_entries``. A disabled
  definition is not scheduled; its run state is kept, as a removed one's is (``prune`` removes
  it). One-off definitions (``{"at": ...}``) run once, then their run state says they ran.
* **Pauses** of static (``beat_schedule``) entries (``paused/<name>``) go to the host's
  ``pause_static``.
* **Run-now requests** (``requests/<name>__run__<seq>``) are kept in :attr:`RuntimeSource.requests`
  for the scheduler, which plans one extra run each and consumes the request in that run's fenced
  commit (``beat/scheduler.py``).
* **Backfill requests** (``backfills/<name>__run__<seq>``, with their data) are kept in
  :attr:`RuntimeSource.backfills` for ``beat/backfill.py``.

Guarantees: a malformed, hostile or unreadable definition node is reported once (kind
``definition``, ``Observer.problem``) and ignored: the entry it would define is not scheduled, as a
takeover would not schedule it; it stops nothing else. Changes apply within the host's
``change_poll_interval`` of their watch firing; a change made while no instance leads is read by
the next takeover. Followers make no request for any of this. A host whose ``dynamic_entries``
does not call :meth:`read_all` at a takeover follows no definitions for that leadership.

Not guaranteed: the order in which changes of different entries apply.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from celery import beat
from kazoo.client import KazooClient

from beatleader.beat.sources.runtimewatch import DefinitionWatch, Reading, RunRequest
from beatleader.config import Settings
from beatleader.schedules.definitions import Definition


class RuntimeHost(Protocol):
    """What :class:`RuntimeSource` uses of its scheduler."""

    app: Any
    settings: Settings

    @property
    def zk_client(self) -> KazooClient | None: ...

    @property
    def static_names(self) -> frozenset[str]: ...

    def leading_generation(self) -> int | None: ...

    def update_entries(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None: ...

    def pause_static(self, names: Collection[str]) -> None: ...

    def _report(self, key: str, kind: str, detail: str, level: int = ...) -> None: ...

    def _resolved(self, key: str) -> None: ...


class RuntimeSource:
    """The runtime entries of the host's ZooKeeper path; see the module docstring."""

    def __init__(self, host: RuntimeHost) -> None:
        self.host = host
        self._watch: DefinitionWatch | None = None
        self._prefetched: Callable[[], Reading] | None = None
        #: Whether this leadership's takeover read the definitions (see the module docstring).
        self.following = False
        #: The valid definitions known now, by entry name.
        self.definitions: dict[str, Definition] = {}
        #: The run-now requests not consumed yet, oldest first.
        self.requests: list[RunRequest] = []
        #: The backfill requests not done yet, oldest first, with their data.
        self.backfills: list[RunRequest] = []

    # -- the source protocol --------------------------------------------------------------------

    def prefetch(self, generation: int) -> None:
        self.following = False
        self._prefetched = self._definition_watch().start_load(generation)

    def read_all(self) -> Mapping[str, beat.ScheduleEntry]:
        """Every enabled, valid runtime definition (read from ZooKeeper, watches armed)."""
        finish, self._prefetched = self._prefetched, None
        if finish is None:  # not prefetched by this takeover
            generation = self.host.leading_generation()
            assert generation is not None
            finish = self._definition_watch().start_load(generation)
        reading = finish()
        self.definitions = {}
        self.requests = []
        self.backfills = []
        changes = self._take_reading(reading)
        self.following = True
        return {name: entry for name, entry in changes.items() if entry is not None}

    def poll(self) -> None:
        watch = self._watch
        if watch is None or not self.following:
            return
        reading = watch.refresh()
        if reading:
            changes = self._take_reading(reading)
            if changes:
                self.host.update_entries(changes)

    # -- for the scheduler ----------------------------------------------------------------------

    def make_entry(self, name: str, definition: Definition) -> beat.ScheduleEntry | None:
        """The entry of ``definition`` (enabled or not); None, reported, when it cannot be."""
        try:
            entry = definition.to_entry(self.host.app, name)
        except Exception as exc:  # e.g. a solar schedule without ephem: this one only
            self.host._report(
                f"definition:{name}", "definition", f"runtime entry {name!r} ignored: {exc}"
            )
            return None
        return entry

    def forget_requests(self, paths: Collection[str]) -> None:
        """Requests consumed or deleted (by their paths): no longer pending here."""
        if paths:
            self.requests = [r for r in self.requests if r.path not in paths]
            self.backfills = [r for r in self.backfills if r.path not in paths]

    # -- reading --------------------------------------------------------------------------------

    def _definition_watch(self) -> DefinitionWatch:
        client = self.host.zk_client
        assert client is not None
        if self._watch is None or self._watch.client is not client:  # a new session: a new watch
            path = self.host.settings.path
            self._watch = DefinitionWatch(client, path, self.host.leading_generation)
        return self._watch

    def _take_reading(self, reading: Reading) -> dict[str, beat.ScheduleEntry | None]:
        """Adopt what was read; returns the entry changes it makes (None: not scheduled)."""
        host = self.host
        for path, why in reading.unlisted.items():
            host._report(f"folder:{path}", "definition", f"{path} ignored: {why}")
        changes: dict[str, beat.ScheduleEntry | None] = {}
        static = host.static_names
        for name, definition in reading.definitions.items():
            entry = self._take_definition(name, definition, reading.problems.get(name))
            if entry is not None or name not in static:
                changes[name] = entry  # a static name is refused (and reported) by the seam
        if reading.paused is not None:
            host.pause_static(reading.paused)
        if reading.requests is not None:
            self.requests = reading.requests
        if reading.backfills is not None:
            self.backfills = reading.backfills
        return changes

    def _take_definition(
        self, name: str, definition: Definition | None, problem: str | None
    ) -> beat.ScheduleEntry | None:
        key = f"definition:{name}"
        if problem is not None:
            self.host._report(key, "definition", f"runtime entry {name!r} ignored: {problem}")
        else:
            self.host._resolved(key)  # reported again if it breaks again
        if definition is None:
            self.definitions.pop(name, None)
            return None
        self.definitions[name] = definition
        if not definition.enabled:
            return None
        return self.make_entry(name, definition)
