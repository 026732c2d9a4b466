"""Pure decisions of the leader's tick, without ZooKeeper or a broker (fast unit tests).

* :class:`Backoff`: exponential, bounded retry delays per key (an entry, a publish, the tick).
* :class:`Outbox`: runs committed but not known to be published, at most one per entry; which of
  them may be published now (the stale-publish bound) and which must be renewed first.
* :class:`Marks`: runs published whose state still says ``published=false``; when to write that.
* :class:`ServerClock`: this instance's offset to ZooKeeper's server clock, the one clock of the
  schedule.
* :class:`CommitLead`: how long before its due time a run is committed (the commit lead), from
  the latencies of the latest commits.
* :func:`continuation`: what a new leader continues an entry from, given what it read.
* :class:`Run`, :func:`remaining_of`, :func:`utc_iso`: one planned run and its timing.

Guarantees (of the decisions; the scheduler carries them out):

* A run is published only within ``window`` seconds (monotonic clock) of a fenced commit of its
  state by this instance; past it, it must be committed again (renewed: same run, same
  ``published=false``, which proves the fence still holds) before it is published.
* Run ordinals never go backwards within a process, and an unreadable entry continues after a
  floor no committed run can exceed: ``version + 1`` of its znode (each write adds 1 to the
  version and at most 1 to the ordinal) or the largest ordinal this process saw, whichever is
  larger. Its ``last_run_at`` becomes the znode's ``mtime`` (server time of the last write, never
  earlier than the last run): no run is doubled; the run in flight (if any) is not republished.
* A ``last_run_at`` later than its own write (``mtime`` + tolerance) was written by a clock in the
  future; it is replaced by the ``mtime`` and reported, never obeyed.
* A run committed ahead of its due time is not publishable before it (``Pending.due_at``); the
  commit lead is never longer than its ceiling, which the scheduler keeps well inside the publish
  window.

Not guaranteed: a deleted entry znode loses what it knew (ordinals restart unless this process saw
them); a well-formed state written by a foreign client is believed (configure ZooKeeper auth).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.utils.time import maybe_make_aware

from beatleader.beat.state import StoredState


class Backoff:
    """Exponential, bounded delays per key: ``first``, ``first * factor``, ... up to ``maximum``."""

    def __init__(self, first: float, maximum: float, factor: float = 2.0) -> None:
        self.first, self.maximum, self.factor = first, maximum, factor
        self._failures: dict[Hashable, int] = {}
        self._not_before: dict[Hashable, float] = {}

    def failed(self, key: Hashable, now: float) -> float:
        """Count a failure of ``key`` at ``now``; returns the delay before the next attempt."""
        failures = self._failures.get(key, 0)
        delay = min(self.first * self.factor**failures, self.maximum)
        self._failures[key] = failures + 1
        self._not_before[key] = now + delay
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)
        self._not_before.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def ready(self, key: Hashable, now: float) -> bool:
        return self._not_before.get(key, 0.0) <= now

    def not_before(self, key: Hashable) -> float | None:
        return self._not_before.get(key)

    def clear(self) -> None:
        self._failures.clear()
        self._not_before.clear()


@dataclass
class Pending:
    """One committed run that is not known to be published."""

    name: str
    ordinal: int
    #: The run's ``ScheduleEntry`` (its ``total_run_count`` is ``ordinal``).
    entry: Any
    #: Seconds between the moment it fell due and the moment it was planned.
    lateness: float = 0.0
    #: Monotonic time the latest fenced commit of this run was sent; None: not in this leadership.
    committed_at: float | None = None
    #: Seconds from its run to the entry's next one, when known (saves an ``is_due`` call).
    delay: float | None = None
    #: The incarnation of the state that committed it (part of its task id).
    incarnation: str | None = None
    #: Monotonic time it falls due: it is not published before (0: due already). A run committed
    #: ahead of its due time waits here for it.
    due_at: float = 0.0


class Outbox:
    """Committed, unpublished runs by entry name; an entry with a run here is held (not planned).

    Holding the entry (rather than committing its next run while this one is out) keeps one
    unpublished run per entry: runs that fall due meanwhile coalesce into the next one, as celery
    coalesces the runs a stopped beat missed.
    """

    def __init__(self, window: float, retry: Backoff) -> None:
        #: Seconds after a fenced commit during which its run may be published.
        self.window = window
        self.retry = retry
        self._items: dict[str, Pending] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def runs(self) -> list[Pending]:
        return list(self._items.values())

    def get(self, name: str) -> Pending | None:
        return self._items.get(name)

    def add(self, pending: Pending) -> None:
        self._items[pending.name] = pending

    def fresh(self, pending: Pending, now: float) -> bool:
        """Whether ``pending`` was committed by this leader less than ``window`` ago."""
        return pending.committed_at is not None and now - pending.committed_at <= self.window

    def attempts_due(self, now: float) -> list[Pending]:
        """Runs whose (next) publish attempt is due: no backoff pending."""
        return [p for p in self._items.values() if self.retry.ready(p.name, now)]

    def to_renew(self, now: float) -> list[Pending]:
        """Runs due for an attempt that must be committed again first (stale or inherited)."""
        return [p for p in self.attempts_due(now) if not self.fresh(p, now)]

    def publishable(self, now: float) -> list[Pending]:
        """Runs due for an attempt, due themselves, and within the publish window."""
        return [p for p in self.attempts_due(now) if p.due_at <= now and self.fresh(p, now)]

    def renewed(self, name: str, committed_at: float) -> None:
        pending = self._items.get(name)
        if pending is not None:
            pending.committed_at = committed_at

    def published(self, name: str) -> Pending | None:
        self.retry.succeeded(name)
        return self._items.pop(name, None)

    def failed(self, name: str, now: float) -> float:
        """A publish attempt failed: returns the delay before the next one."""
        return self.retry.failed(name, now)

    def next_attempt(self, now: float) -> float | None:
        """Seconds until the earliest due attempt (0 when one is due), None when empty.

        A run committed ahead is attempted at its due time; one that must be renewed first, when
        its backoff allows (renewing early costs nothing: it is published at its due time).
        """
        times = [
            max(self.retry.not_before(p.name) or now, p.due_at if self.fresh(p, now) else now)
            for p in self._items.values()
        ]
        return max(min(times) - now, 0.0) if times else None

    def clear(self) -> None:
        self._items.clear()
        self.retry.clear()


@dataclass
class Marks:
    """Published runs whose state still says ``published=false``, by entry name -> ordinal.

    A mark waits ``delay`` seconds: the entry's next run usually commits before that, and its
    state (a new run) supersedes the mark at no cost. A ripe mark rides along with the next
    commit, or is written on its own.
    """

    delay: float
    _since: dict[str, tuple[int, float]] = field(default_factory=dict)

    def add(self, name: str, ordinal: int, now: float) -> None:
        self._since[name] = (ordinal, now)

    def discard(self, name: str) -> None:
        self._since.pop(name, None)

    def get(self, name: str) -> int | None:
        found = self._since.get(name)
        return found[0] if found else None

    def items(self) -> list[tuple[str, int]]:
        return [(name, ordinal) for name, (ordinal, _) in self._since.items()]

    def ripe(self, now: float) -> list[tuple[str, int]]:
        return [(n, o) for n, (o, since) in self._since.items() if now - since >= self.delay]

    def next_ripe(self, now: float) -> float | None:
        if not self._since:
            return None
        return max(min(since for _, since in self._since.values()) + self.delay - now, 0.0)

    def __len__(self) -> int:
        return len(self._since)


@dataclass
class ServerClock:
    """``offset`` = ZooKeeper server time - local time, from writes whose ``mtime`` is known."""

    #: Samples whose round trip took longer than this are too imprecise and ignored (a sample's
    #: error is at most its round trip, plus the millisecond resolution of ``mtime``).
    max_round_trip: float = 0.05
    offset: float = 0.0
    known: bool = False

    def sample(self, local_before: float, local_after: float, server: float) -> bool:
        """Take one sample: a write sent at ``local_before``, answered at ``local_after``, whose
        ``mtime`` (whole milliseconds of ZooKeeper's time) is ``server``.

        ZooKeeper stamps a write when its leader prepares it, before the log sync and the quorum
        round that take most of the round trip, so the stamp is near the send: the offset taken
        is ``server - local_before``, too high by the one-way delay to the ZooKeeper leader (a
        midpoint would be too low by half the sync and quorum time). The true offset lies in
        ``(server - local_after, server + 1 ms - local_before]``; a sample whose interval holds
        the current offset leaves it alone, so the schedule does not jitter with every probe.
        Returns False when the sample is too imprecise (a round trip over ``max_round_trip``).
        """
        if local_after - local_before > self.max_round_trip:
            return False
        if self.known and server - local_after < self.offset <= server + 0.001 - local_before:
            return True
        self.offset, self.known = server - local_before, True
        return True


class CommitLead:
    """The commit lead: how many seconds before its due time a run's fenced commit is sent.

    A run is committed ahead of its due time and published at it, so that the commit's latency (a
    ZooKeeper write and its log sync) is not added to every run's lateness. The lead follows the
    latency of the latest ``samples`` commits: their ``quantile`` times ``margin``, between
    ``floor`` and ``ceiling`` (``initial`` before the first commit). A commit slower than the
    lead makes its runs late by the difference, no more than before.
    """

    def __init__(
        self,
        ceiling: float,
        initial: float,
        quantile: float = 0.99,
        margin: float = 1.25,
        floor: float = 0.001,
        samples: int = 200,
    ) -> None:
        self.ceiling, self.quantile, self.margin = ceiling, quantile, margin
        self.floor = min(floor, ceiling)
        self._latencies: deque[float] = deque(maxlen=samples)
        #: The current lead, seconds.
        self.seconds = self._bounded(initial)

    def _bounded(self, seconds: float) -> float:
        return min(max(seconds, self.floor), self.ceiling)

    def observe(self, latency: float) -> None:
        """A fenced commit took ``latency`` seconds (monotonic, send to answer)."""
        self._latencies.append(latency)
        ordered = sorted(self._latencies)
        rank = min(int(self.quantile * len(ordered)), len(ordered) - 1)  # nearest rank, at least
        self.seconds = self._bounded(ordered[rank] * self.margin)


@dataclass(frozen=True)
class Continuation:
    """What a new leader continues an entry from."""

    last_run_at: datetime | None
    total_run_count: int
    #: Whether run ``total_run_count`` is known to be published (False: republish it).
    published: bool
    #: What was wrong with the stored state ("" when nothing).
    problem: str = ""
    #: The stored state's incarnation (None: unreadable or written before incarnations).
    incarnation: str | None = None


def continuation(stored: StoredState, max_seen: int, future_tolerance: float) -> Continuation:
    """See the module docstring; ``max_seen``: the largest ordinal this process saw (or 0)."""
    mtime = datetime.fromtimestamp(stored.mtime, timezone.utc)
    state = stored.state
    if state is None:
        floor = max(max_seen, stored.version + 1)
        return Continuation(
            mtime,
            floor,
            True,
            f"unreadable ({stored.problem}); state unknown: continuing after run {floor} "
            f"(znode version {stored.version} + 1) from its last write at {mtime.isoformat()}",
        )
    problems = []
    count, published = state.total_run_count, state.published
    if count < max_seen:
        problems.append(f"run count went back from {max_seen} to {count}; keeping {max_seen}")
        count, published = max_seen, True
    last_run_at = datetime.fromisoformat(state.last_run_at) if state.last_run_at else None
    if last_run_at is not None and (last_run_at - mtime).total_seconds() > future_tolerance:
        problems.append(
            f"last_run_at {state.last_run_at} is {(last_run_at - mtime).total_seconds():.1f} s "
            f"after its own write ({mtime.isoformat()}): a clock in the future; using the write"
        )
        last_run_at = mtime
    return Continuation(last_run_at, count, published, "; ".join(problems), state.incarnation)


@dataclass(frozen=True)
class Run:
    """One due run: the entry as it will be after the run, its next delay, whether to send."""

    entry: Any
    delay: float
    send: bool
    #: Seconds between the moment the run fell due and the moment it was planned.
    lateness: float = 0.0
    #: The run-now request node this run consumes (deleted in its commit), None for a due run.
    request: str | None = None
    #: Why a run that is not sent is skipped (``late``: the misfire grace; ``overlap``).
    reason: str = "late"
    #: Monotonic time the run falls due (committed ahead: published then); 0: due already.
    due_at: float = 0.0
    #: How many scheduled runs a skip stands for (a catch-up skips many in one commit).
    skips: int = 1


def remaining_of(entry: Any) -> float | None:
    """Seconds until the run of ``entry`` falls due, negative once due; None when it cannot be
    told (the schedule has no working ``remaining_estimate``)."""
    try:
        remaining = float(entry.schedule.remaining_estimate(entry.last_run_at).total_seconds())
    except Exception:
        return None
    return remaining if remaining == remaining else None  # NaN: no time at all


def utc_iso(moment: datetime) -> str:
    return str(maybe_make_aware(moment).astimezone(timezone.utc).isoformat())
