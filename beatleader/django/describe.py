"""``sources/django``: what the database schedule holds, for ``beatleader status`` and ``prune``.

The static schedule is published per fingerprint under ``schedules/`` by every instance; the
database entries change while beat runs, so the leader publishes them in the same format
(``schedules.encode_schedule``) under ``sources/django`` whenever the set it schedules changed,
in a transaction with the fence (``check`` of its own contender node), so an ex-leader cannot
overwrite a newer description. ``status`` reads every ``sources/*`` node as one more schedule.

A row's policy in the description (``status`` and ``entry list`` compute *done* and the next
due time from it) is its ``headers`` ``{"beatleader": {...}}`` plus what the model has fields
for (:func:`row_policy`): ``start_time`` as ``start_at``, ``expires`` as ``end_at``, ``one_off``
as ``max_runs`` (the run count when it was armed, plus one); a row past its ``expires`` that
ran, also as ``max_runs`` (the leader's run count: nothing more is sent). A one-off row that ran
and was disabled since is described too, as done: it is a finished entry, not an orphan (the
``rows.FINISHED_LIMIT`` last changed of them). The node is written again when a row expires.

Guarantees: written only by the leader, only when the content changed, fenced; a failure is
logged (once per change) and retried with the next change check, never raised; a row whose
fields make no valid policy (``start_time`` not before ``expires``) is described with its
``headers``' policy alone.

Not guaranteed: that the node is current between a change and the next check of the change
marker, or after the last leader stopped (it then shows the last schedule a leader had); a
one-off row edited after its run and before the leader wrote that run back (armed again,
``scheduler.py``) is described as done until it runs again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

from beatleader.django.rows import RowEntry
from beatleader.schedules.checks import DefinitionError
from beatleader.schedules.describe import PlannedEntry, describe_entry, encode_schedule
from beatleader.schedules.policies import parse_policy
from beatleader.zk import layout

logger = logging.getLogger("beatleader.django")

#: The source name under ``sources/``.
SOURCE = "django"


def publish_rows(
    client: Any, root: str, fence: str, entries: list[Any], counts: Mapping[str, int] | None = None
) -> None:
    """Write ``sources/django`` describing ``entries``, fenced by the contender node ``fence``.

    ``counts``: the leader's run count of each entry it schedules (see :func:`row_policy`).
    """
    path = layout.source_path(root, SOURCE)
    now = datetime.now(timezone.utc)
    found = counts or {}
    data = encode_schedule([describe_row(e, found.get(e.name), now) for e in entries])
    for _ in range(2):
        try:
            _, stat = client.get(path)
        except NoNodeError:
            client.ensure_path(f"{root}/{layout.SOURCES}")
            transaction = client.transaction()
            transaction.check(fence, 0)
            transaction.create(path, data)
        else:
            transaction = client.transaction()
            transaction.check(fence, 0)
            transaction.set_data(path, data, version=stat.version)
        results = transaction.commit()
        if not any(isinstance(r, KazooException) for r in results):
            return
        if not any(isinstance(r, NodeExistsError | BadVersionError) for r in results):
            raise RuntimeError(f"the fenced write of {path} failed: {results!r}")
    raise RuntimeError(f"{path} changed under the leader twice in a row")


def describe_row(entry: Any, count: int | None = None, now: datetime | None = None) -> PlannedEntry:
    """``describe_entry``, with the policy of :func:`row_policy` for a row's entry."""
    plan = describe_entry(entry)
    if not isinstance(entry, RowEntry) or entry.row is None:
        return plan
    return replace(plan, policy=row_policy(entry, plan.policy, count, now) or None)


def row_policy(
    entry: RowEntry,
    policy: dict[str, Any] | None,
    count: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``policy`` (the row's ``headers`` one, as stored) with the row's own fields: the later
    start, the earlier end, the fewer runs; ``policy`` as it is when they make no valid one.

    A row past its ``expires`` at ``now`` that ran (``count``: the leader's run count) is also
    limited to the runs it had: its ``is_due`` sends nothing after ``expires``, even a run
    scheduled before it that was not sent in time (a beat down at that moment), which ``end_at``
    alone would show as due.
    """
    row = entry.row
    assert row is not None
    fields = dict(policy or {})
    limits = [fields["max_runs"]] if isinstance(fields.get("max_runs"), int) else []
    if row.expires is not None and now is not None and now >= row.expires and count:
        limits.append(count)
    if row.start_time is not None:
        start = _later(fields.get("start_at"), row.start_time)
        fields["start_at"] = start.isoformat()
    if row.expires is not None:
        end = _earlier(fields.get("end_at"), row.expires)
        fields["end_at"] = end.isoformat()
    if row.one_off:
        limits.append((entry.base if entry.base is not None else row.db_count) + 1)
    if limits:
        fields["max_runs"] = min(limits)
    try:
        return parse_policy(fields).as_options()
    except DefinitionError:
        return dict(policy or {})


def _later(text: Any, moment: datetime) -> datetime:
    other = _time(text)
    return moment if other is None or moment >= other else other


def _earlier(text: Any, moment: datetime) -> datetime:
    other = _time(text)
    return moment if other is None or moment <= other else other


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
