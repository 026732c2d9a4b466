"""What ``beatleader status`` warns about, from what :mod:`beatleader.ops.status` read.

Pure functions over the contenders and entries already read: no ZooKeeper access, never raise.
They warn; they decide nothing (``prune`` refuses on its own terms, ``prune.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from beatleader.ops.model import Contender, Entry


def status_warnings(
    root: str,
    contenders: list[Contender],
    entries: list[Entry],
    scheduled: frozenset[str] | None,
) -> list[str]:
    warnings = []
    if not contenders:
        warnings.append(f"no leader: no instance is contending under {root}")
    warnings.extend(_unreadable_warnings(contenders, entries))
    warnings += [w for w in (app_mismatch(contenders), fingerprint_mismatch(contenders)) if w]
    orphans = orphaned_entries(entries, scheduled)
    if orphans:
        listed = ", ".join(repr(name) for name in orphans)
        warnings.append(f"state kept for entries that no running instance schedules: {listed}")
    return warnings


def _unreadable_warnings(contenders: list[Contender], entries: list[Entry]) -> list[str]:
    found = [
        f"contender node {c.node} holds no readable ContenderInfo"
        for c in contenders
        if c.info is None
    ]
    found += [
        f"contender node {c.node} was rewritten by another client (data version {c.data_version})"
        for c in contenders
        if c.data_version != 0
    ]
    found += [f"entry {e.name!r} has unreadable state" for e in entries if e.unreadable]
    return found


def fingerprint_mismatch(contenders: list[Contender]) -> str | None:
    """A warning when the instances run different schedules (e.g. during a rolling deploy)."""
    groups: dict[str, list[str]] = {}
    for contender in contenders:
        if contender.info is not None:
            groups.setdefault(contender.info.fingerprint, []).append(contender.info.identity)
    if len(groups) < 2:
        return None
    parts = "; ".join(f"{fp}: {', '.join(ids)}" for fp, ids in groups.items())
    return f"instances run different schedules (rolling deploy?): {parts}"


def app_mismatch(contenders: list[Contender]) -> str | None:
    """A warning when instances of different apps contend on one path (``peers.py``)."""
    groups: dict[str, list[str]] = {}
    for contender in contenders:
        if contender.info is not None and contender.info.app is not None:
            groups.setdefault(contender.info.app, []).append(contender.info.identity)
    if len(groups) < 2:
        return None
    parts = "; ".join(f"app {app!r}: {', '.join(ids)}" for app, ids in groups.items())
    return (
        f"instances of different apps contend on one path (only the leader's schedule runs; "
        f"give each app its own beatleader_path): {parts}"
    )


def orphaned_entries(entries: list[Entry], scheduled: frozenset[str] | None) -> list[str]:
    """Names with state that no running schedule contains ([] when schedules are unknown)."""
    if scheduled is None:
        return []
    return [e.name for e in entries if e.stored and e.name not in scheduled]
