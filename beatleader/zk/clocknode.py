"""The leader's wall clock as ZooKeeper saw it: what ``status`` shows about clock skew.

To read ZooKeeper's server time the leader writes ``<root>/clock`` and takes the write's
``mtime`` (``planning.ServerClock``). It puts in that write its identity and its own wall clock
at the moment it sent it (:func:`clock_note`), so anyone can read how far the leader's clock was
from ZooKeeper's at that moment: ``skew = local_time - mtime``.

Guarantees: the skew's error is at most the write's round trip (plus mtime's millisecond
resolution); garbage in the node (a foreign client) reads as None, never an exception.
Not guaranteed: the followers' clocks (they make no requests), nor a reading newer than the
leader's last clock probe (``Scheduler.clock_probe_interval``, 60 s).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import NoNodeError

from beatleader.zk.layout import clock_path

#: Skew beyond this many seconds is a warning in ``status`` (as in the scheduler's log).
SKEW_WARNING = 30.0


@dataclass(frozen=True)
class ClockReading:
    """One clock probe of a leader, as stored."""

    identity: str
    #: Seconds the writer's wall clock was ahead of ZooKeeper's (negative: behind).
    skew: float
    #: When the probe was written, ZooKeeper time, UTC ISO 8601.
    at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        direction = "ahead of" if self.skew >= 0 else "behind"
        return f"{self.identity}'s clock is {abs(self.skew):.3f} s {direction} ZooKeeper's"


def clock_note(identity: str, local_time: float) -> bytes:
    """The data of a clock probe written at ``local_time`` (epoch seconds) by ``identity``."""
    return json.dumps({"identity": identity, "local_time": local_time}).encode()


def read_clock(client: Any, root: str) -> ClockReading | None:
    """The last clock probe under ``root``, or None (never probed, or not our data)."""
    try:
        data, stat = client.get(clock_path(root))
    except NoNodeError:
        return None
    try:
        note = json.loads(bytes(data or b"").decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(note, dict):
        return None
    identity, local_time = note.get("identity"), note.get("local_time")
    if not isinstance(identity, str) or isinstance(local_time, bool):
        return None
    if not isinstance(local_time, int | float):
        return None
    if not -sys.float_info.max <= local_time <= sys.float_info.max:  # compared, not converted
        return None
    server = stat.mtime / 1000.0
    at = datetime.fromtimestamp(server, timezone.utc).isoformat(timespec="milliseconds")
    return ClockReading(identity, float(local_time) - server, at)


def clock_warnings(reading: ClockReading | None, limit: float = SKEW_WARNING) -> list[str]:
    """A warning when the leader's clock was more than ``limit`` seconds off."""
    if reading is None or abs(reading.skew) <= limit:
        return []
    return [
        f"{reading.describe()} (probe at {reading.at}); more than {limit:g} s: the schedule runs "
        "on ZooKeeper's time, but fix the machine's clock (NTP)"
    ]
