"""Change the schedule while beat runs: add, update, remove, pause, resume and run entries.

The write side of runtime entries (the leader applies them; ``runtime.py``). Each operation is a
function taking a Celery app (or, without one, :class:`~beatleader.config.Settings`)::

    from beatleader import entries
    entries.add(app, "report", task="proj.tasks.report", every="30s", kwargs={"to": "ops"})
    entries.pause(app, "report")
    entries.run(app, "nightly")          # a static beat_schedule entry: one extra run now
    for item in entries.list_entries(app): print(item.name, item.state, item.next_due)
    for run in entries.history(app, "report").records: print(run.ordinal, run.outcome.value)

Each call connects, acts and disconnects (one client, made by
:func:`beatleader.zk.client.make_client`, so auth, TLS and ACLs are the scheduler's). A web app that
changes many entries may keep one :class:`EntryStore` on its own started client instead.

Guarantees:

* Every input is validated before anything is written (:mod:`beatleader.schedules.definitions`); a
bad one raises :class:`~beatleader.schedules.definitions.DefinitionError` with one line naming the
  argument: an unknown entry, an unparsable schedule, a name taken by a static entry (the app's
  ``beat_schedule``, or a running instance's published schedule), a task the app does not know
  (unless ``force=True``), an ``update`` of a static entry, ``pause`` of something unknown.
* Every node is created with the client's default ACL (with auth set, only its identity may
  write); an update is a versioned write, so two concurrent updates do not lose one silently
  (the second is retried on the fresh definition, :attr:`EntryPolicy.update_attempts` times).
* ``run`` creates one sequential request node and returns its path; the leader consumes it once
  (in the fenced commit of that run).
* ``backfill`` checks the range (and, when the schedule can be computed here, refuses more runs
  than ``max_runs`` and lists the times) before it writes one request node; the leader computes
  the times again with the entry's own schedule and publishes them (``beat/backfill.py``).

Not guaranteed: that the leader has applied a change when the call returns (it does within about
a second, when one leads); ZooKeeper errors (unreachable, ``NoAuthError``) propagate as kazoo's
exceptions; the static names known without an app are only those published by running
instances.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import beat
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from beatleader.config import Settings
from beatleader.entries.listing import EntryInfo, published_names, published_plans, read_entries
from beatleader.entries.spec import (
    changed_by,
    json_list,
    json_object,
    note,
    options_of,
    schedule_of,
    utc_now,
)
from beatleader.runs.history import DEFAULT_LIMIT, History, read_history
from beatleader.schedules.backfill import DEFAULT_MAX, BackfillRequest, parse_request, times_in
from beatleader.schedules.definitions import Definition, DefinitionError, check_name, parse_timezone
from beatleader.schedules.describe import plan_schedule
from beatleader.schedules.types import cron_rules
from beatleader.zk import layout
from beatleader.zk.client import make_client
from beatleader.zk.trust import start_client

__all__ = [
    "Backfill",
    "DefinitionError",
    "EntryInfo",
    "EntryStore",
    "History",
    "add",
    "backfill",
    "history",
    "list_entries",
    "pause",
    "remove",
    "resume",
    "run",
    "store",
    "update",
]


class EntryPolicy:
    """Tunables of the API."""

    #: Seconds to reach ZooKeeper before giving up (``KazooTimeoutError``).
    connect_timeout = 10.0
    #: Versioned writes tried before a concurrently changed definition is an error.
    update_attempts = 5


class EntryStore:
    """The operations on one app's root, on a started client (see the module docstring)."""

    #: What an error calls each schedule-policy option: the keyword arguments here; the command
    #: line sets its flags (``--catchup-window``).
    option_names: Mapping[str, str] = {}

    def __init__(self, client: Any, root: str, app: Any = None, actor: str | None = None) -> None:
        self.client = client
        self.root = root
        self.app = app
        #: What each write records as ``changed_by``; None: this process's ``user@host``
        #: (:func:`beatleader.entries.spec.changed_by`). The web dashboard names its user here.
        self.actor = actor

    def _by(self) -> str:
        return self.actor or changed_by()

    # -- what exists --------------------------------------------------------------------------

    def static_names(self) -> frozenset[str]:
        """The app's ``beat_schedule`` names and those every running instance published.

        (Instances publish their static schedule only, so a runtime definition that has one of
        these names is ignored by the leader: the static entry wins.)
        """
        names = set(_beat_schedule(self.app)) | published_names(self.client, self.root)
        return frozenset(names)

    def get(self, name: str) -> tuple[Definition, int] | None:
        """The runtime definition of ``name`` and its node version; None when there is none.

        A node whose data is not a valid definition raises DefinitionError (``remove`` it).
        """
        try:
            data, stat = self.client.get(layout.definition_path(self.root, name))
        except NoNodeError:
            return None
        definition, problem = Definition.parse(bytes(data or b""))
        if definition is None:
            raise DefinitionError(f"runtime entry {name!r} is invalid ({problem}); remove it")
        return definition, int(stat.version)

    def _check_schedule(self, definition: Definition) -> None:
        """With an app: the schedule can be built (a solar one needs ``ephem``)."""
        if self.app is not None:
            definition.celery_schedule(self.app)  # DefinitionError when it cannot

    def _check_task(self, task: str, force: bool) -> None:
        if force or self.app is None:
            return
        if task not in _known_tasks(self.app):
            raise DefinitionError(
                f"task {task!r} is not registered in app {self.app.main!r}; "
                "check the name, or pass force=True (--force) to add it anyway"
            )

    def _unknown(self, name: str, verb: str) -> DefinitionError:
        if name in self.static_names():
            return DefinitionError(
                f"cannot {verb} {name!r}: it is a static beat_schedule entry "
                "(change it in the code; pause, resume and run work on it)"
            )
        return DefinitionError(f"cannot {verb} {name!r}: no such entry (see 'entry list')")

    # -- operations -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        task: str,
        every: str | float | None = None,
        cron: str | None = None,
        at: str | datetime | None = None,
        solar: tuple[str, float, float] | None = None,
        timezone: str | None = None,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | None = None,
        overlap: str | None = None,
        pause_after_failures: int | None = None,
        catchup: str | None = None,
        catchup_window: str | float | None = None,
        max_catchup: int | None = None,
        jitter: str | float | None = None,
        start_at: str | datetime | None = None,
        end_at: str | datetime | None = None,
        max_runs: int | None = None,
        enabled: bool = True,
        force: bool = False,
    ) -> Definition:
        """Define a new runtime entry; DefinitionError if ``name`` exists or clashes."""
        name = check_name(name)
        schedule = schedule_of(every, cron, at, solar, timezone)
        if schedule is None:
            raise DefinitionError("give a schedule: --every, --cron or --at")
        definition = Definition(
            task=task,
            schedule=schedule,
            args=tuple(json_list(args)),
            kwargs=dict(json_object(kwargs or {})),
            options=options_of(
                queue,
                priority,
                expires,
                {},
                overlap,
                pause_after_failures,
                _policy(catchup, catchup_window, max_catchup, jitter, start_at, end_at, max_runs),
                self.option_names,
            ),
            enabled=enabled,
            changed_by=self._by(),
            changed_at=utc_now(),
        ).validated()
        if name in self.static_names():
            raise DefinitionError(
                f"cannot add {name!r}: a static beat_schedule entry has that name "
                "(static entries win; choose another name)"
            )
        self._check_task(definition.task, force)
        self._check_schedule(definition)
        path = layout.definition_path(self.root, name)
        try:
            self.client.create(path, definition.encode(), makepath=True)
        except NodeExistsError:
            raise DefinitionError(
                f"cannot add {name!r}: a runtime entry of that name exists (use update)"
            ) from None
        return definition

    def update(
        self,
        name: str,
        *,
        task: str | None = None,
        every: str | float | None = None,
        cron: str | None = None,
        at: str | datetime | None = None,
        solar: tuple[str, float, float] | None = None,
        timezone: str | None = None,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | None = None,
        overlap: str | None = None,
        pause_after_failures: int | None = None,
        catchup: str | None = None,
        catchup_window: str | float | None = None,
        max_catchup: int | None = None,
        jitter: str | float | None = None,
        start_at: str | datetime | None = None,
        end_at: str | datetime | None = None,
        max_runs: int | None = None,
        force: bool = False,
    ) -> Definition:
        """Change the given fields of a runtime entry (None: unchanged)."""
        rezone = timezone is not None and (every, cron, at, solar) == (None, None, None, None)
        schedule = None if rezone else schedule_of(every, cron, at, solar, timezone)
        if task is not None:
            self._check_task(task, force)

        def change(old: Definition) -> Definition:
            new_schedule = old.schedule if schedule is None else schedule
            if rezone:
                new_schedule = _rezoned(name, old, str(timezone))
            return Definition(
                task=old.task if task is None else task,
                schedule=new_schedule,
                args=old.args if args is None else tuple(json_list(args)),
                kwargs=old.kwargs if kwargs is None else dict(json_object(kwargs)),
                options=options_of(
                    queue,
                    priority,
                    expires,
                    old.options,
                    overlap,
                    pause_after_failures,
                    _policy(
                        catchup, catchup_window, max_catchup, jitter, start_at, end_at, max_runs
                    ),
                    self.option_names,
                ),
                enabled=old.enabled,
                changed_by=self._by(),
                changed_at=utc_now(),
            )

        return self._rewrite(name, "update", change)

    def remove(self, name: str) -> None:
        """Delete a runtime entry's definition (its run state stays until ``prune``)."""
        name = check_name(name)
        try:
            self.client.delete(layout.definition_path(self.root, name))
        except NoNodeError:
            raise self._unknown(name, "remove") from None

    def pause(self, name: str) -> str:
        """Stop scheduling ``name`` (runtime: enabled false; static: a paused/ marker)."""
        return self._set_enabled(name, False)

    def resume(self, name: str) -> str:
        """Schedule ``name`` again."""
        return self._set_enabled(name, True)

    def _set_enabled(self, name: str, enabled: bool) -> str:
        verb = "resume" if enabled else "pause"
        name = check_name(name)
        if name in self.static_names():  # a static entry wins its name: it is what runs
            self._mark_paused(name, not enabled)
            return "static"
        if not self._exists(layout.definition_path(self.root, name)):
            raise DefinitionError(f"cannot {verb} {name!r}: no such entry (see 'entry list')")
        self._rewrite(name, verb, lambda old: _with_enabled(old, enabled, self._by()))
        if enabled:  # the note of a pause after failures (``beat/failures.py``) goes with it
            self._mark_paused(name, False)
        return "runtime"

    def _mark_paused(self, name: str, paused: bool) -> None:
        marker = layout.paused_entry_path(self.root, name)
        if paused:
            with suppress(NodeExistsError):  # already paused
                self.client.create(marker, note(self._by()), makepath=True)
        else:
            with suppress(NoNodeError):  # not paused: nothing to do
                self.client.delete(marker)

    def run(self, name: str) -> str:
        """Request one extra run of ``name`` now; returns the request node's path."""
        name = check_name(name)
        runtime = self._exists(layout.definition_path(self.root, name))
        if not runtime and name not in self.static_names():
            raise DefinitionError(f"cannot run {name!r}: no such entry (see 'entry list')")
        prefix = layout.request_prefix(self.root, name)
        return str(self.client.create(prefix, note(self._by()), sequence=True, makepath=True))

    def backfill(
        self,
        name: str,
        start: str | datetime,
        end: str | datetime,
        max_runs: int = DEFAULT_MAX,
        dry_run: bool = False,
    ) -> Backfill:
        """Ask the leader for every run ``name``'s schedule has from ``start`` to ``end``.

        The times are listed here when this process can compute them (a runtime entry, an
        interval or crontab the instances published); a range of more than ``max_runs`` runs
        raises :class:`DefinitionError`. ``dry_run``: list them, write nothing.
        """
        name = check_name(name)
        wanted = parse_request(start, end, max_runs)
        sched = self._schedule_for_backfill(name)
        times = None
        if sched is not None:
            times = times_in(sched, wanted.start, wanted.end, wanted.limit)
            if len(times) > wanted.limit:
                raise DefinitionError(
                    f"--max {wanted.limit:,}: {name!r} has more runs than that from "
                    f"{wanted.start.isoformat()} to {wanted.end.isoformat()}; raise --max or "
                    "split the range"
                )
        if dry_run:
            if times is None:
                raise DefinitionError(
                    f"cannot list the runs of {name!r} here: its schedule is neither an interval "
                    "nor a crontab this process can compute (the leader can: drop --dry-run)"
                )
            return Backfill(name, times, None)
        request = BackfillRequest(wanted.start, wanted.end, wanted.limit, self._by(), utc_now())
        prefix = layout.backfill_prefix(self.root, name)
        path = self.client.create(prefix, request.encode(), sequence=True, makepath=True)
        return Backfill(name, times, str(path))

    def _schedule_for_backfill(self, name: str) -> Any | None:
        """The schedule of ``name`` as this process can build it; DefinitionError if no entry."""
        found = self.get(name)
        if found is not None:
            try:
                return found[0].celery_schedule(self.app or _utc_app())
            except DefinitionError:
                return None  # e.g. solar without ephem here: the leader computes the times
        static = _beat_schedule(self.app)
        if name in static:
            return _static_schedule(self.app, name, static[name])
        plan = published_plans(self.client, self.root).get(name)
        if plan is not None:
            return plan_schedule(plan)
        raise DefinitionError(f"cannot backfill {name!r}: no such entry (see 'entry list')")

    def history(self, name: str, limit: int | None = None) -> History:
        """The last ``limit`` runs of ``name`` (default 20), newest
        first (:func:`beatleader.runs.history.read_history`)."""
        name = check_name(name)
        size = DEFAULT_LIMIT if limit is None else limit
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DefinitionError(f"limit must be a whole number of runs >= 1, not {limit!r}")
        found = read_history(self.client, self.root, name, size)
        if not found.exists and not self._known(name):
            raise DefinitionError(f"no history of {name!r}: no such entry (see 'entry list')")
        return found

    def _known(self, name: str) -> bool:
        """Whether ``name`` is a runtime or static entry (or a paused one)."""
        return self._exists(layout.definition_path(self.root, name)) or name in self.static_names()

    def list_entries(self) -> list[EntryInfo]:
        """Every static and runtime entry (see :func:`beatleader.entries.listing.read_entries`)."""
        return read_entries(self.client, self.root, _beat_schedule(self.app), self.app)

    # -- helpers --------------------------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        return self.client.exists(path) is not None

    def _rewrite(
        self, name: str, verb: str, change: Callable[[Definition], Definition]
    ) -> Definition:
        name = check_name(name)
        path = layout.definition_path(self.root, name)
        for _attempt in range(EntryPolicy.update_attempts):
            found = self.get(name)
            if found is None:
                raise self._unknown(name, verb)
            new = change(found[0]).validated()
            self._check_schedule(new)
            try:
                self.client.set(path, new.encode(), version=found[1])
            except BadVersionError:
                continue  # changed meanwhile: apply the change to the new definition
            except NoNodeError:
                raise self._unknown(name, verb) from None
            return new
        raise DefinitionError(f"cannot {verb} {name!r}: it kept changing meanwhile; try again")


def _rezoned(name: str, old: Definition, zone: str) -> dict[str, Any]:
    if "crontab" not in old.schedule:
        raise DefinitionError(f"--timezone applies to --cron only; {name!r} is {old.describe()}")
    return {"crontab": old.schedule["crontab"], "timezone": parse_timezone(zone)}


def _with_enabled(old: Definition, enabled: bool, by: str) -> Definition:
    return Definition(
        old.task,
        old.schedule,
        old.args,
        old.kwargs,
        old.options,
        enabled,
        by,
        utc_now(),
    )


def _beat_schedule(app: Any) -> dict[str, Any]:
    if app is None:
        return {}
    schedule = app.conf.beat_schedule or {}
    return dict(schedule) if isinstance(schedule, Mapping) else {}


def _known_tasks(app: Any) -> frozenset[str]:
    """The task names ``app`` registers, its ``imports``/``include`` modules loaded."""
    with suppress(Exception):  # an import error is the app's own business, not this check's
        app.loader.import_default_modules()
    return frozenset(app.tasks.keys())


# -- the functions: one connection per call --------------------------------------------------


@contextmanager
def store(app_or_settings: Any, timeout: float | None = None) -> Iterator[EntryStore]:
    """An :class:`EntryStore` on a new started client, stopped on exit."""
    if isinstance(app_or_settings, Settings):
        settings, app = app_or_settings, None
    else:
        settings, app = Settings.from_app(app_or_settings), app_or_settings
    client = make_client(settings)
    try:
        start_client(client, settings, timeout or EntryPolicy.connect_timeout)
        yield EntryStore(client, settings.path, app)
    finally:
        client.stop()
        client.close()


def add(app: Any, name: str, **spec: Any) -> Definition:
    """Define runtime entry ``name`` (``task=``, one of ``every=``/``cron=``/``at=``, ...)."""
    with store(app) as entries:
        return entries.add(name, **spec)


def update(app: Any, name: str, **changes: Any) -> Definition:
    with store(app) as entries:
        return entries.update(name, **changes)


def remove(app: Any, name: str) -> None:
    with store(app) as entries:
        entries.remove(name)


def pause(app: Any, name: str) -> str:
    with store(app) as entries:
        return entries.pause(name)


def resume(app: Any, name: str) -> str:
    with store(app) as entries:
        return entries.resume(name)


def run(app: Any, name: str) -> str:
    with store(app) as entries:
        return entries.run(name)


def backfill(
    app: Any,
    name: str,
    start: str | datetime,
    end: str | datetime,
    max_runs: int = DEFAULT_MAX,
    dry_run: bool = False,
) -> Backfill:
    """Backfill ``name`` from ``start`` to ``end`` (see :meth:`EntryStore.backfill`)."""
    with store(app) as entries:
        return entries.backfill(name, start, end, max_runs, dry_run)


@dataclass(frozen=True)
class Backfill:
    """What :meth:`EntryStore.backfill` did: the entry, its runs' scheduled times (UTC; None when
    only the leader can compute them), and the request node (None for a dry run)."""

    name: str
    times: list[datetime] | None
    request: str | None


def _static_schedule(app: Any, name: str, spec: Any) -> Any | None:
    """The schedule of the app's ``beat_schedule`` entry ``name`` as the scheduler runs it
    (with cron's DST rules unless ``beatleader_crontab_rules`` is "celery"); None if it cannot
    be built here (the leader reports it)."""
    try:
        entry = beat.ScheduleEntry(name=name, app=app, **{"schedule": spec["schedule"]})
        if Settings.from_app(app).crontab_rules == "cron":
            cron_rules([entry])
    except Exception:  # a user's schedule or settings: the leader computes the times
        return None
    return entry.schedule


@functools.lru_cache(maxsize=1)
def _utc_app() -> Any:
    from celery import Celery

    app = Celery("beatleader-entries", set_as_current=False)
    app.conf.timezone = "UTC"
    return app


def list_entries(app: Any) -> list[EntryInfo]:
    with store(app) as entries:
        return entries.list_entries()


def history(app: Any, name: str, limit: int | None = None) -> History:
    """The last runs of entry ``name``, newest first (see :meth:`EntryStore.history`)."""
    with store(app) as entries:
        return entries.history(name, limit)


def _policy(
    catchup: str | None,
    catchup_window: str | float | None,
    max_catchup: int | None,
    jitter: str | float | None,
    start_at: str | datetime | None,
    end_at: str | datetime | None,
    max_runs: int | None,
) -> dict[str, Any]:
    """The schedule-policy keyword arguments as ``options["beatleader"]`` fields (None: not
    given; checked whole by ``parse_policy`` in ``options_of``)."""
    moments = {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in (("start_at", start_at), ("end_at", end_at))
    }
    return {
        "catchup": catchup,
        "catchup_window": catchup_window,
        "max_catchup": max_catchup,
        "jitter": jitter,
        **moments,
        "max_runs": max_runs,
    }
