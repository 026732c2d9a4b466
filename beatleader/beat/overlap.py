"""The leader's overlap policies: ``skip`` and ``buffer-one`` (``schedules/policies.py``).

A part of :class:`beatleader.Scheduler`, composed into it (``Scheduler.overlap``). In each pass,
:meth:`OverlapGate.gate` takes the planned runs; for each due run of an entry whose policy is not
``allow``, it asks ZooKeeper whether the entry's previous run is running: whether the worker
guard's claim ``dedup/<entry>/r<previous ordinal>`` exists (one ``exists`` per such run, all sent
at once). A blocked run is

* under ``skip``: committed as a skip (``skipped:overlap`` in the entry's history; the entry's
  ``last_run_at`` moves on, as for a run later than the misfire grace), logged, counted;
* under ``buffer-one``: held in this leader's memory, not committed; each pass asks again whether
  its blocker still runs (:attr:`OverlapGate.poll_interval`) and :meth:`released` gives it back to
  be sent when it does not. A run of the entry that falls due while one is held is skipped.

Guarantees: an ``allow`` entry costs nothing (no read); a ``skip`` entry one ``exists`` per due
run; the decision is the claim's, so a new leader honours a run started under the old one, and a
run whose worker died stops blocking when that worker's session ends (one session timeout). A
read that fails (connection loss) blocks nothing: the run is planned as under ``allow``, and the
commit that follows meets the same connection.

Not guaranteed: a held ``buffer-one`` run lives in the leader's memory: a failover or restart
loses it (the next due run is planned as usual). A run in the queue but not started yet, or
between two attempts of a retry, holds no claim and blocks nothing. A worker whose
``beatleader_path`` differs from the beat's claims under its own root: it blocks nothing. A
run-now request is never blocked (it is an operator's explicit run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from beatleader.beat.planning import Run
from beatleader.beat.publishing import replaced
from beatleader.beat.state import StoredState
from beatleader.schedules.policies import ALLOW, BUFFER_ONE, DEFAULT, RunPolicy, policy_of
from beatleader.zk import layout

logger = logging.getLogger("beatleader")

__all__ = ["OverlapGate"]


@dataclass
class Held:
    """A ``buffer-one`` run waiting for the entry's running run to end."""

    #: The claim that blocks it.
    blocker: str
    #: Seconds it was late when it fell due (its lateness when sent adds the wait).
    lateness: float
    #: Monotonic time it fell due.
    since: float


class OverlapGate:
    """The overlap decisions of one scheduler (see the module docstring)."""

    #: Seconds between two checks of a held run's blocker (the beat sleeps no longer).
    poll_interval = 0.5

    def __init__(self, root: str, report: Callable[[str, str, str], None]) -> None:
        self.root = root
        #: ``report(key, kind, detail)``: the scheduler's once-per-change problem report.
        self.report = report
        self._held: dict[str, Held] = {}
        self._next_poll = 0.0

    # -- what an entry asks for ------------------------------------------------------------------

    def policy(self, entry: Any) -> RunPolicy:
        """The entry's policy; a bad one is reported once and read as the default (``allow``)."""
        options = getattr(entry, "options", None)
        if not isinstance(options, dict) or not options:
            return DEFAULT
        policy, problem = policy_of(options)
        name = getattr(entry, "name", "?")
        if problem is not None:
            self.report(
                f"policy:{name}", "entry-policy", f"entry {name!r}: {problem}; running it as allow"
            )
        return policy

    # -- the pass ----------------------------------------------------------------------------------

    def gate(
        self, client: Any, runs: list[Run], stored: dict[str, StoredState]
    ) -> tuple[list[Run], list[Run]]:
        """``runs`` with each blocked run skipped or taken out, and the runs taken out: held
        (``buffer-one``; the caller puts their entries back on its heap)."""
        checks: list[tuple[int, str, str]] = []  # (index in runs, policy, blocker path)
        for index, run in enumerate(runs):
            if not run.send or run.request is not None:
                continue
            overlap = self.policy(run.entry).overlap
            if overlap == ALLOW:
                continue
            name = run.entry.name
            if name in self._held:
                checks.append((index, overlap, ""))  # one is held already: this one is skipped
                continue
            blocker = self._blocker(name, stored.get(name))
            if blocker is not None:
                checks.append((index, overlap, blocker))
        if not checks:
            return runs, []
        running = self._running(client, [path for _, _, path in checks if path])
        result = list(runs)
        dropped: set[int] = set()
        for index, overlap, path in checks:
            run = runs[index]
            if path and path not in running:
                continue  # its previous run is not running: sent
            if overlap == BUFFER_ONE and path:
                self._held[run.entry.name] = Held(path, run.lateness, time.monotonic())
                logger.info(
                    "beatleader: holding the run of %r (buffer-one) until its previous run ends",
                    run.entry.name,
                )
                dropped.add(index)
                continue
            result[index] = skipped(run)
            logger.warning(
                "beatleader: skipping the run of %r: its previous run is still running "
                "(overlap %s)",
                run.entry.name,
                overlap,
            )
        kept = [run for index, run in enumerate(result) if index not in dropped]
        return kept, [runs[index] for index in sorted(dropped)]

    def released(self, client: Any, planned: set[str]) -> list[tuple[str, Held]]:
        """The held runs whose blocker ended (taken out); checks at most every poll interval.

        An entry in ``planned`` (it has a due run in this pass) is left held: its due run goes
        through :meth:`gate` first.
        """
        now = time.monotonic()
        if not self._held or now < self._next_poll:
            return []
        self._next_poll = now + self.poll_interval
        waiting = {name: held for name, held in self._held.items() if name not in planned}
        running = self._running(client, [held.blocker for held in waiting.values()])
        done = [(name, held) for name, held in waiting.items() if held.blocker not in running]
        for name, _held in done:
            del self._held[name]
        return done

    def next_check(self) -> float | None:
        """Seconds until held runs are checked again; None when none is held."""
        if not self._held:
            return None
        return max(self._next_poll - time.monotonic(), 0.0)

    def forget(self, name: str | None = None) -> None:
        """Drop the held run of ``name`` (removed, paused), or every one (leadership lost)."""
        if name is None:
            self._held.clear()
        else:
            self._held.pop(name, None)

    # -- ZooKeeper --------------------------------------------------------------------------------

    def _blocker(self, name: str, stored: StoredState | None) -> str | None:
        """The claim path of the entry's previous run; None when it never ran."""
        state = stored.state if stored is not None else None
        if state is None or state.total_run_count < 1:
            return None
        folder = layout.dedup_folder(name, state.incarnation)
        return f"{layout.dedup_path(self.root)}/{folder}/r{state.total_run_count:020d}"

    def _running(self, client: Any, paths: list[str]) -> set[str]:
        """Which of ``paths`` exist (pipelined); a failed read counts as not running."""
        if client is None or not paths:
            return set()
        pending = [(path, client.exists_async(path)) for path in paths]
        found: set[str] = set()
        for path, result in pending:
            try:
                if result.get(timeout=10.0) is not None:
                    found.add(path)
            except Exception as exc:  # connection loss, timeout: the commit meets it too
                logger.debug("beatleader: overlap check of %s failed: %r", path, exc)
        return found


def skipped(run: Run, reason: str = "overlap") -> Run:
    """The skip of a planned run: the entry's time moves on, its run count does not."""
    before = replaced(run.entry, total_run_count=run.entry.total_run_count - 1)
    return Run(before, run.delay, False, run.lateness, reason=reason)
