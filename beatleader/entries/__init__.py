"""Change the schedule while beat runs: ``beatleader.entries.add``, ``update``, ``remove``,
``pause``, ``resume``, ``run``, ``backfill``.

The Python API of runtime entries (``api``), their arguments (``spec``) and the listing of every
entry, static and runtime (``listing``). It stands on :mod:`beatleader.ops` (the listing reads
status), :mod:`beatleader.schedules` and :mod:`beatleader.zk`; :mod:`beatleader.cli` stands on it.
"""

from beatleader.entries.api import (
    Backfill,
    DefinitionError,
    EntryInfo,
    EntryStore,
    History,
    add,
    backfill,
    history,
    list_entries,
    pause,
    remove,
    resume,
    run,
    store,
    update,
)

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
