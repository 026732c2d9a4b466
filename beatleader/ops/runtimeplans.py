"""Runtime entries (``definitions/``) as ``status`` shows them: one plan per definition.

``beatleader status`` lists the runtime entries beside the static ones: each definition becomes
a :class:`~beatleader.schedules.describe.PlannedEntry` (schedule text prefixed ``runtime``,
``(paused)`` when disabled) so that ``status`` computes its next due time like a static entry's.

Guarantees: only reads; a definition that is not valid reads as the plan "(invalid
definition)", never an error; a node vanishing while read is skipped. Not guaranteed: a next
due time for a one-off or solar definition (none is computed), or for a paused one.
"""

from __future__ import annotations

from typing import Any

from beatleader.schedules.definitions import Definition
from beatleader.schedules.describe import PlannedEntry
from beatleader.schedules.policies import policy_of
from beatleader.zk.layout import definitions_path, unquote_entry_name
from beatleader.zk.multiread import read_children

#: The key of the runtime definitions among the fingerprints (sorts after every hex one).
RUNTIME_SCHEDULE = "~runtime"


def read_runtime_plans(client: Any, root: str) -> dict[str, PlannedEntry]:
    """The runtime entries (``definitions/``) as plans; an invalid one as "(invalid definition)"."""
    plans = {}
    for quoted, (data, _stat) in read_children(client, definitions_path(root)).items():
        name = unquote_entry_name(quoted)
        plans[name] = runtime_plan(name, Definition.parse(data)[0])
    return plans


def runtime_plan(name: str, definition: Definition | None) -> PlannedEntry:
    if definition is None:
        return PlannedEntry(name, schedule="(invalid definition)")
    sched = definition.schedule
    text = "runtime " + definition.describe() + ("" if definition.enabled else " (paused)")
    every = sched.get("every") if definition.enabled else None
    cron = sched.get("crontab") if definition.enabled else None
    zone = sched.get("timezone")
    found = policy_of(definition.options)[0].as_options() or None
    return PlannedEntry(name, definition.task, text, every, cron, zone, True, found)
