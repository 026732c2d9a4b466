"""The human-readable ``beatleader status``: narrow by default, ``--wide`` for everything.

The default table fits 100 columns: long cells are cut (ending in ``...``), times are UTC
``MM-DD HH:MM:SS``, and only the columns an operator reads first are shown. ``--wide`` adds node
names, versions, apps, task names and ids, who wrote each state, full timestamps, and cuts
nothing. ``--json`` (``Status.as_dict``) has every field, uncut.

Guarantees: any text from ZooKeeper is printed escaped (``repr``) when it is not printable, so
another client's data cannot move the cursor or forge lines. Not guaranteed: 100 columns for
the first line (it names every ZooKeeper host).
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from typing import Any

from beatleader.ops.status import Contender, Entry, Status

#: Widest a cell of the narrow table may be, per column heading. The entries table is then 100
#: columns at most while RUNS has at most 4 digits (OUTCOME "succeeded", DURATION's heading).
NARROW_LIMITS = {
    "IDENTITY": 24, "HOST": 16, "NAME": 20, "SCHEDULE": 17, "WORKER": 20, "ERROR / REASON": 40,
}  # fmt: skip
#: Widest the leader's label may be in the narrow view.
LEADER_LIMIT = 56
#: Width the warnings are wrapped to.
WRAP = 98


def render_status(status: Status, where: str, wide: bool = False) -> str:
    """Leader, queue, entries and warnings of ``status``; ``where`` names the ZooKeeper."""
    sections = [
        f"ZooKeeper {where}  path {status.root}  (times UTC)",
        _leader_line(status.leader, wide),
        *_clock_lines(status, wide),
        "",
        "Contenders (queue order):",
        _indent(contender_table(status.contenders, wide)),
        "",
        "Entries:",
        _indent(entry_table(status.entries, wide)),
    ]
    if status.warnings:
        sections += ["", "Warnings:"]
        for warning in status.warnings:
            lines = textwrap.wrap(cell(warning), WRAP - 4) or [""]
            sections += [f"  ! {lines[0]}", *(f"    {line}" for line in lines[1:])]
    return "\n".join(sections)


def _clock_lines(status: Status, wide: bool) -> list[str]:
    clock = status.clock
    if clock is None:
        return []
    line = f"Clock: {cell(clock.describe())}" + (f" (probe at {clock.at})" if wide else "")
    return [line if wide else _cut(line, WRAP)]


def _leader_line(leader: Contender | None, wide: bool) -> str:
    if leader is None:
        return "Leader: none"
    label = _cut(cell(leader.label()), None if wide else LEADER_LIMIT)
    return f"Leader: {label} since {leader.since or '?'}"


def contender_table(contenders: tuple[Contender, ...], wide: bool) -> str:
    if not contenders:
        return "(none)"
    headers = ["#", "IDENTITY", "HOST", "PID", "SCHEDULE", "SINCE"]
    if wide:
        headers += ["APP", "VERSION", "NODE"]
    rows: list[list[Any]] = []
    for position, c in enumerate(contenders, 1):
        mark = f"{position}*" if position == 1 else str(position)
        info = c.info
        if info is None:
            row: list[Any] = [mark, "?", "?", "?", "?", _time(c.since, wide)]
            rows.append(row + (["?", "?", c.node] if wide else []))
            continue
        row = [mark, info.identity, info.host, info.pid, info.fingerprint, _time(c.since, wide)]
        rows.append(row + ([info.app, info.version, c.node] if wide else []))
    return table(headers, rows, wide)


def entry_table(entries: tuple[Entry, ...], wide: bool) -> str:
    if not entries:
        return "(none)"
    headers = ["NAME", "SCHEDULE", "LAST RUN", "NEXT DUE", "RUNS", "OUTCOME", "DURATION"]
    if wide:
        headers += ["SKIPPED", "TASK", "LAST TASK ID", "WRITTEN BY", "LAST ERROR"]
    rows = [_entry_row(e, wide) for e in entries]
    return table(headers, rows, wide)


def _entry_row(e: Entry, wide: bool) -> list[Any]:
    if e.scheduled is False:
        schedule = "(not scheduled)"
    else:
        schedule = e.plan.schedule if e.plan and e.plan.schedule else "?"
    s = e.state
    if e.unreadable or (e.stored and s is None):
        row: list[Any] = [e.name, schedule, "(unreadable)", _time(e.next_due, wide), "", "", ""]
        return row + (["", e.plan.task if e.plan else None, "", "", ""] if wide else [])
    last = _time(s.last_run_at, wide) if s else "never"
    due = "done" if e.done else _time(e.next_due, wide)
    row = [e.name, schedule, last, due, s.total_run_count if s else 0]
    run = e.last
    row += [run.outcome.value, seconds(run.duration)] if run else [None, None]
    if wide:
        task = e.plan.task if e.plan else None
        row += [s.skipped_count if s else 0, task]
        row += [s.last_task_id, s.written_by] if s else [None, None]
        row += [run.error if run else None]
    return row


def _time(iso: str | None, wide: bool) -> str | None:
    """Full ISO 8601 when wide, else ``MM-DD HH:MM:SS`` (UTC, as the state holds it)."""
    if iso is None or wide:
        return iso
    date, _, clock = iso.partition("T")
    if not clock or len(date) != 10:
        return iso
    return f"{date[5:]} {clock[:8]}"


def epoch_time(epoch: float | None) -> str | None:
    """An epoch time (s) as ``MM-DD HH:MM:SS.mmm`` UTC; None stays None."""
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch, timezone.utc)
    except (OverflowError, OSError, ValueError):  # a hostile number
        return "?"
    return moment.strftime("%m-%d %H:%M:%S.%f")[:-3]


def seconds(value: float | None) -> str | None:
    """A duration: ``0.012s``, ``2.5s``, ``3m04s``."""
    if value is None:
        return None
    if value < 10:
        return f"{value:.3f}s"
    if value < 600:
        return f"{value:.1f}s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes}m{rest:02d}s"


def table(headers: list[str], rows: list[list[Any]], wide: bool = True) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    limits = {} if wide else NARROW_LIMITS
    cells = [headers]
    for row in rows:
        cells.append([_cut(cell(v), limits.get(h)) for h, v in zip(headers, row, strict=True)])
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if text.isprintable() else repr(text)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
