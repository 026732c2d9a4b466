"""What ``beatleader status`` shows, as data: the contenders, entries and snapshot it reads.

The frozen dataclasses :func:`beatleader.ops.status.read_status` and
:func:`beatleader.ops.status.resign_leader` return, and that :mod:`beatleader.ops.diagnose`,
:mod:`beatleader.ops.render` and the CLI consume. Nothing here talks to ZooKeeper, prints or reads
settings; import them from :mod:`beatleader.ops.status`, which re-exports every one.

Guarantees:

* Every class is frozen; ``as_dict()`` returns plain JSON values with every field present, an
  unreadable contender's ``info`` or entry's ``state`` spelled as each of its fields None (the
  keys do not depend on what was readable).
* :meth:`Status.leader_problem` is None only for a leader whose node holds readable, unrewritten
  ContenderInfo (data version 0): what ``status --check`` requires.
* :meth:`Contender.same_instance` tells a re-queued leader (same identity, host and pid) from
  another instance; :attr:`ResignResult.moved` is true only when another instance heads the queue.

Not guaranteed: that the values are current or were read at one moment (the reader reads node by
node); strings as stored, not escaped for a terminal (:mod:`beatleader.ops.render` escapes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from beatleader.runs.records import Outcome, RunRecord
from beatleader.schedules.describe import PlannedEntry
from beatleader.zk.clocknode import ClockReading
from beatleader.zk.layout import ContenderInfo, EntryState


@dataclass(frozen=True)
class Contender:
    """One running instance waiting in (or heading) the election queue."""

    node: str
    sequence: int
    since: str | None  # ctime of the node, UTC ISO 8601
    info: ContenderInfo | None  # None when the node holds no readable ContenderInfo
    #: The node's data version: contender data is written once, so anything but 0 is foreign.
    data_version: int = 0

    @property
    def identity(self) -> str | None:
        return self.info.identity if self.info else None

    @property
    def fingerprint(self) -> str | None:
        return self.info.fingerprint if self.info else None

    def same_instance(self, other: Contender) -> bool:
        """True when both nodes were published by the same process (a re-queued leader)."""
        if self.info is None or other.info is None:
            return self.node == other.node
        mine = (self.info.identity, self.info.host, self.info.pid)
        return mine == (other.info.identity, other.info.host, other.info.pid)

    def label(self) -> str:
        """``identity (host, pid N)`` for messages, or the node name when unreadable."""
        if self.info is None:
            return f"<unreadable contender {self.node}>"
        return f"{self.info.identity} (host {self.info.host}, pid {self.info.pid})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "sequence": self.sequence,
            "since": self.since,
            "data_version": self.data_version,
            **_fields_or_none(self.info, ContenderInfo),
        }


@dataclass(frozen=True)
class IgnoredNode:
    """A child of ``election/`` that takes no part in the election, and why."""

    node: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class Entry:
    """One schedule entry: its shared state as the leaders wrote it, and how it is scheduled."""

    name: str
    state: EntryState | None  # None when there is no state node or its data is unreadable
    #: False for an entry that a running schedule holds but that never ran (no state node).
    stored: bool = True
    #: How a running instance schedules it (``schedules.py``); None when no schedule names it.
    plan: PlannedEntry | None = None
    #: When it is next due (UTC ISO 8601), when the reader can tell (``schedules.next_due``).
    next_due: str | None = None
    #: Whether a running schedule holds it; None when some schedule is unknown.
    scheduled: bool | None = None
    #: Its newest run a worker guard recorded (``beatleader.runs``); None: none recorded.
    last: RunRecord | None = None
    #: Why and by whom it is paused (its ``paused/`` note); None when it is not paused.
    paused: str | None = None
    #: Its policy says it runs no more (``max_runs`` reached, past ``end_at``): not overdue.
    done: bool = False

    @property
    def unreadable(self) -> bool:
        return self.stored and self.state is None

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "name": self.name,
            "scheduled": self.scheduled,
            "schedule": plan.schedule if plan else None,
            "task": plan.task if plan else None,
            "next_due": self.next_due,
            "every": plan.every if plan else None,
            "crontab": plan.crontab if plan else None,
            "timezone": plan.timezone if plan else None,
            "stored": self.stored,
            **_fields_or_none(self.state, EntryState),
            "last_outcome": self.last.outcome.value if self.last else None,
            "running": self.last is not None and self.last.outcome is Outcome.RUNNING,
            "last_record": self.last.as_json() if self.last else None,
            "paused": self.paused,
            "done": self.done,
        }


def _fields_or_none(value: Any, cls: type) -> dict[str, Any]:
    """``value``'s dataclass fields, or every field of ``cls`` as None when ``value`` is None."""
    return asdict(value) if value is not None else dict.fromkeys(f.name for f in fields(cls))


@dataclass(frozen=True)
class Status:
    """A snapshot of one app's election queue and schedule state."""

    root: str
    contenders: tuple[Contender, ...]
    entries: tuple[Entry, ...]
    #: Entry names of every running schedule, when every contender published them; else None.
    scheduled_names: frozenset[str] | None = None
    warnings: tuple[str, ...] = field(default=())
    #: Children of ``election/`` that are not well-formed ephemeral contenders.
    ignored: tuple[IgnoredNode, ...] = field(default=())
    #: False when ``root`` itself does not exist (a typo in --path, or nothing ever ran there).
    exists: bool = True
    #: The last leader's clock probe (its skew to ZooKeeper's clock), when there is one.
    clock: ClockReading | None = None

    @property
    def leader(self) -> Contender | None:
        return self.contenders[0] if self.contenders else None

    def leader_problem(self) -> str | None:
        """Why there is no sound leader (one line), or None when there is one."""
        leader = self.leader
        if leader is None:
            return "no leader: no instance is contending"
        if leader.info is None:
            return f"the leader's node {leader.node} holds no readable ContenderInfo"
        if leader.data_version != 0:
            return (
                f"the leader's node {leader.node} was rewritten by another client "
                f"(data version {leader.data_version})"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        leader, names = self.leader, self.scheduled_names
        return {
            "path": self.root,
            "exists": self.exists,
            "leader": leader.as_dict() if leader else None,
            "leader_problem": self.leader_problem(),
            "contenders": [c.as_dict() for c in self.contenders],
            "ignored": [i.as_dict() for i in self.ignored],
            "entries": [e.as_dict() for e in self.entries],
            "scheduled_names": None if names is None else sorted(names),
            "warnings": list(self.warnings),
            "clock": self.clock.as_dict() if self.clock else None,
        }


@dataclass(frozen=True)
class ResignResult:
    """What :func:`resign_leader` did: who led, who leads now, whether leadership moved."""

    previous: Contender | None  # None: there was no leader, nothing was deleted
    current: Contender | None  # first in the queue when the wait ended
    other_contenders: int  # contenders besides the resigned leader when it resigned

    @property
    def moved(self) -> bool:
        """A different instance now heads the queue."""
        if self.previous is None or self.current is None:
            return False
        return not self.current.same_instance(self.previous)
