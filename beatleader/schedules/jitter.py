"""Jitter: the deterministic offset of one run of an entry, in ``[0, jitter)`` seconds.

A run of an entry with ``jitter: J`` is due ``offset(name, ordinal, J)`` seconds after its
scheduled time. The offset is a hash of the entry's name and the run's ordinal (its
``total_run_count`` once sent), so every instance computes the same one: a new leader continues
a run with the offset its predecessor used (a failover never re-jitters a run), ``status`` and
``entry list`` show the same next due time as the leader, and 500 entries on ``0 * * * *`` spread
their runs evenly over ``[:00, :00 + J)``.

Guarantees: the offset depends on the name, the ordinal and ``J`` only (no clock, no process
state); it is uniform over ``[0, J)`` to within 2**-53 (a SHA-256 of both, its first 8 bytes).
Not guaranteed: two entries' offsets are independent draws: two may be equal or close.
"""

from __future__ import annotations

import hashlib

__all__ = ["offset"]


def offset(name: str, ordinal: int, jitter: float | None) -> float:
    """Seconds run ``ordinal`` of entry ``name`` is due after its scheduled time (0 without)."""
    if not jitter:
        return 0.0
    digest = hashlib.sha256(f"{name}\0{ordinal}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * jitter
