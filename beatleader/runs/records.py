"""The run records: what the worker guard and the leader write about each run, and its JSON.

Three writers, each with its own node and the ACLs of its own identity, and no extra request:

* the **leader**, in the entry's state (``EntryState.recent``), appends ``[ordinal, at, kind]`` for
  each run it commits: ``kind`` ``"sent"`` (``at``: the run's time, ZooKeeper's clock) or
  ``"skipped:<reason>"`` (``ordinal`` null: a skipped run has none); the newest
  ``beatleader_history_size`` are kept;
* a **worker**, in its claim ``dedup/<entry>/r<ordinal>`` (ephemeral): task id, host, pid, attempt;
  the claim's ``ctime`` is when the run started (ZooKeeper's clock);
* the same worker, in the run's marker ``dedup/<entry>/d<ordinal>``, written with the claim's
  deletion: the outcome (``state``), ``started`` (the claim's ``ctime``), ``duration`` (the worker's
  monotonic clock), host, pid, and for a failure ``error``: the exception type and the first line of
  its message, at most :data:`ERROR_LIMIT` characters.

Guarantees: :func:`marker_fields` and :func:`read_marker` bound every string they write or read
(an error at :data:`ERROR_LIMIT`, a host at :data:`TEXT_LIMIT`); a reader ignores unknown keys and
reads a value of the wrong type as absent, so data written by another client or an older version is
never an error.

Not guaranteed: the clocks agree to better than the ZooKeeper servers' (``started`` and the marker's
``mtime`` are server times; ``duration`` is the worker's). A delivery dropped as a duplicate writes
nothing (it is logged by the worker): the history holds runs, not deliveries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: Longest error summary kept in a marker (type, colon, first line of the message).
ERROR_LIMIT = 200
#: Longest host (or other free text) kept from a record.
TEXT_LIMIT = 255
#: Kinds of the leader's records.
SENT = "sent"
SKIPPED = "skipped"


class Outcome(Enum):
    """How a run ended, as a history shows it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    RUNNING = "running"
    #: Published; no worker has recorded it (in the queue, or executed without the guard).
    SENT = "sent"
    #: Not started: a policy (overlap) or the misfire grace skipped it.
    SKIPPED = "skipped"


#: Marker ``state`` values (``worker/markers.py``) as outcomes.
MARKER_OUTCOMES = {
    "done": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED,
    "retrying": Outcome.RETRYING,
}


@dataclass(frozen=True)
class RunRecord:
    """One run of one entry, merged from what the leader and a worker recorded."""

    #: The run's ordinal; None for a skipped run (it has none).
    ordinal: int | None
    outcome: Outcome
    #: ZooKeeper's time (epoch s) the leader gave the run (sent or skipped), None when unknown.
    due_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: Seconds the task body ran (the worker's clock), None while running or unknown.
    duration: float | None = None
    task_id: str | None = None
    host: str | None = None
    pid: int | None = None
    attempt: int | None = None
    #: ``Type: first line`` of a failure (or of the last retry's exception).
    error: str | None = None
    #: Why a skipped run was skipped (``overlap``, ``late``, ...).
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ordinal": self.ordinal,
            "outcome": self.outcome.value,
            "due_at": self.due_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "task_id": self.task_id,
            "host": self.host,
            "pid": self.pid,
            "attempt": self.attempt,
            "error": self.error,
            "reason": self.reason,
        }


def error_summary(exc: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`ERROR_LIMIT` characters."""
    try:
        message = str(exc)
    except Exception:  # a user exception whose __str__ raises
        message = "<unprintable>"
    first = message.strip().splitlines()[0] if message.strip() else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return _bounded(text, ERROR_LIMIT)


def marker_fields(
    started: float | None, duration: float, host: str, pid: int, error: str | None
) -> dict[str, Any]:
    """The record fields a finishing worker adds to its marker."""
    fields: dict[str, Any] = {
        "duration": round(duration, 6),
        "host": _bounded(host, TEXT_LIMIT),
        "pid": pid,
    }
    if started is not None:
        fields["started"] = round(started, 3)
    if error:
        fields["error"] = _bounded(error, ERROR_LIMIT)
    return fields


def read_marker(ordinal: int, marker: dict[str, Any], mtime: float) -> RunRecord:
    """The record of a finished (or retrying) run from its decoded marker and its ``mtime``."""
    outcome = MARKER_OUTCOMES.get(text_or_none(marker.get("state")) or "", Outcome.SUCCEEDED)
    return RunRecord(
        ordinal=ordinal,
        outcome=outcome,
        started_at=number_or_none(marker.get("started")),
        finished_at=mtime,
        duration=number_or_none(marker.get("duration")),
        task_id=text_or_none(marker.get("task_id")),
        host=text_or_none(marker.get("host")),
        pid=int_or_none(marker.get("pid")),
        attempt=int_or_none(marker.get("attempt")),
        error=text_or_none(marker.get("error"), ERROR_LIMIT),
    )


def read_claim(ordinal: int, claim: dict[str, Any], ctime: float) -> RunRecord:
    """The record of a running run from its decoded claim and its ``ctime``."""
    return RunRecord(
        ordinal=ordinal,
        outcome=Outcome.RUNNING,
        started_at=ctime,
        task_id=text_or_none(claim.get("task_id")),
        host=text_or_none(claim.get("host")),
        pid=int_or_none(claim.get("pid")),
        attempt=int_or_none(claim.get("attempt")),
    )


def leader_record(item: Any) -> RunRecord | None:
    """One ``[ordinal, at, kind]`` of ``EntryState.recent`` as a record (None: malformed)."""
    if not isinstance(item, list) or len(item) != 3:
        return None
    ordinal, at, kind = item
    kind = text_or_none(kind, 64)
    when = number_or_none(at)
    if kind == SENT and int_or_none(ordinal) is not None:
        return RunRecord(ordinal=ordinal, outcome=Outcome.SENT, due_at=when)
    if kind is not None and kind.startswith(SKIPPED) and ordinal is None:
        reason = kind.partition(":")[2] or None
        return RunRecord(ordinal=None, outcome=Outcome.SKIPPED, due_at=when, reason=reason)
    return None


def pause_reason(note: dict[str, Any]) -> str | None:
    """What a ``paused/<entry>`` note says: why (a pause after failures) and by whom, when."""
    reason = text_or_none(note.get("reason"), 400)
    by, when = text_or_none(note.get("changed_by")), text_or_none(note.get("changed_at"), 64)
    parts = [reason] if reason else []
    if by:
        parts.append(f"paused by {by}" + (f" at {when}" if when else ""))
    return "; ".join(parts) or None


def run_ordinals(children: list[str]) -> tuple[set[int], set[int]]:
    """The ordinals of the claims (``r<ordinal>``) and of the markers (``d<ordinal>``) among a
    ``dedup/`` folder's children; any other name (another client's) is left out."""
    claims, markers = set(), set()
    for child in children:
        digits = child[1:]
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
            continue  # 30: past Python's int() digit limit a hostile name would raise
        if child[0] == "r":
            claims.add(int(digits))
        elif child[0] == "d":
            markers.add(int(digits))
    return claims, markers


def text_or_none(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    return _bounded(value, limit) if isinstance(value, str) else None


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
