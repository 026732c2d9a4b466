"""``beatleader prune``: remove the state of entries that no running instance schedules.

An entry removed from ``beat_schedule`` keeps its node ``entries/<name>`` (its run count, so a
re-added entry would continue its task ids). :func:`plan_prune` finds those nodes by comparing
the entries with state against the schedules the running instances published
(``schedules/<fingerprint>``); :func:`prune` deletes them.

Guarantees:

* Refuses (:class:`PruneRefused`) while no instance contends (nothing to compare against), while
  the instances run different schedules (a rolling deploy: an entry may be coming or going), or
  while some instance's schedule is unknown (unreadable contender data, a schedule node missing
  or unreadable), unless ``force``. Forced, the union of the known schedules is kept.
* Deletes each node with the data version it read: a node a leader wrote since then is kept and
  reported, never deleted under it. A node already gone counts as pruned.
* Never touches ``election/``, ``schedules/`` or a scheduled entry's state; the state of an
  entry that has a runtime definition (``definitions/``) or a pause marker (``paused/``) is kept
  too, whatever the schedules say.

A pruned entry that is added again starts over at run 1 in a new *incarnation*
(``EntryState.incarnation``): its task ids and its worker-guard claims (``dedup/``, kept here:
workers may still hold claims under it) are those of the new life, so nothing of the old one is
repeated or dropped as a duplicate.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import BadVersionError, NoNodeError

from beatleader.ops.diagnose import fingerprint_mismatch
from beatleader.ops.status import read_election, read_schedules, scheduled_names
from beatleader.zk.layout import definitions_path, entries_path, paused_path, unquote_entry_name


class PruneRefused(Exception):
    """Pruning is unsafe now; the message (one line) says why and what would allow it."""


@dataclass(frozen=True)
class Stale:
    """The state node of an entry no running schedule holds, as read."""

    name: str
    node: str  # the child's name under entries/, as found
    version: int


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    #: Written by a leader since it was read: kept.
    kept: list[str] = field(default_factory=list)


def plan_prune(client: Any, root: str, *, force: bool = False) -> list[Stale]:
    """The stale entry state under ``root``, by name; raises :class:`PruneRefused`."""
    if client.exists(root) is None:
        raise PruneRefused(f"{root} does not exist")
    contenders, _ignored = read_election(client, root)
    schedules = read_schedules(client, root, contenders)
    keep: set[str] = set()
    for listed in schedules.values():
        keep.update(listed or ())
    keep.update(_defined_names(client, root))
    if not force:
        _refuse_if_unsafe(root, contenders, schedules)
    stale = []
    base = entries_path(root)
    try:
        children = client.get_children(base)
    except NoNodeError:
        return []
    for quoted in sorted(children):
        name = unquote_entry_name(quoted)
        if name in keep:
            continue
        stat = client.exists(f"{base}/{quoted}")
        if stat is not None:
            stale.append(Stale(name, quoted, int(stat.version)))
    return stale


def _defined_names(client: Any, root: str) -> set[str]:
    """Names with a runtime definition or a pause marker: their state is not orphaned."""
    names: set[str] = set()
    for parent in (definitions_path(root), paused_path(root)):
        with suppress(NoNodeError):
            names.update(unquote_entry_name(c) for c in client.get_children(parent))
    return names


def _refuse_if_unsafe(root: str, contenders: list[Any], schedules: dict[str, Any]) -> None:
    if not contenders:
        raise PruneRefused(
            f"no instance contends under {root}: nothing to compare the entries against "
            "(--force prunes every entry's state)"
        )
    mismatch = fingerprint_mismatch(contenders)
    if mismatch:
        raise PruneRefused(f"{mismatch}; prune once they agree (or --force)")
    if scheduled_names(contenders, schedules) is None:
        raise PruneRefused(
            "the schedule of some instance is unknown (unreadable contender data or schedule "
            "node; an instance of an older version?); --force keeps only the known ones"
        )


def prune(client: Any, root: str, stale: list[Stale]) -> PruneResult:
    """Delete each stale node at the version it was read at."""
    result = PruneResult()
    for item in stale:
        try:
            client.delete(f"{entries_path(root)}/{item.node}", version=item.version)
        except BadVersionError:
            result.kept.append(item.name)
            continue
        except NoNodeError:
            pass
        result.deleted.append(item.name)
    return result
