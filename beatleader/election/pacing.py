"""When an election contender may queue or lead again: back-off, orphan delay, takeover settle.

:class:`Pacing` belongs to one :class:`~beatleader.election.leader.LeaderElection` and is used only
by its worker thread. Its waits end early when the election stops.

Guarantees:

* Losses of leadership the instance could repeat by itself (a failed fence, a damaged own node)
  back off: the first in a quiet period (``hold_reset_after``) costs nothing, then ``hold_first``
  doubling up to ``hold_max``. Nothing in the election can loop faster than that.
* A follower whose node was deleted from outside waits ``orphan_delay`` before queueing again, so
  an ex-leader whose whole tree was deleted usually queues first. A contender may be made to stay
  first for ``takeover_settle`` (and look again) before it leads; the default is 0: a follower
  that takes over from a deleted tree starts a new incarnation of each entry's state
  (``layout.EntryState.incarnation``), so no task id is reused, and a crash failover is not
  delayed.

Not guaranteed: these are timings, not consensus; see the election's module docstring.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("beatleader.election")


class Pacing:
    """Holds and settles for one election worker; every method returns at once or after a wait."""

    #: Hold after the second loss of leadership in a quiet period (doubled per further loss), s.
    hold_first = 0.25
    #: Longest hold between losing leadership and leading or queueing again, seconds.
    hold_max = 8.0
    #: Seconds without a loss of leadership after which holds start from nothing again.
    hold_reset_after = 30.0
    #: Seconds a follower whose node was deleted from outside waits before queueing again.
    orphan_delay = 2.0
    #: Seconds a contender must stay first (looked at again) before it leads; > 0 keeps a tree
    #: being deleted, predecessor first, from being taken for a handover (0: lead at once).
    takeover_settle = 0.0

    def __init__(self, stopped: threading.Event, wake: threading.Event) -> None:
        self._stopped = stopped
        self._wake = wake
        self._hold_until = 0.0
        self._losses = 0
        self._last_loss = -float("inf")
        self._first_since: float | None = None

    def loss(self) -> None:
        """Count a loss of leadership; from the second in a quiet period on, hold back."""
        now = time.monotonic()
        if now - self._last_loss > self.hold_reset_after:
            self._losses = 0
        self._last_loss = now
        self._losses += 1
        if self._losses < 2:
            return
        delay = min(self.hold_first * 2 ** (self._losses - 2), self.hold_max)
        self._hold_until = max(self._hold_until, now + delay)
        logger.warning(
            "beatleader: leadership lost %d times in a row; holding back %.2f s",
            self._losses,
            delay,
        )

    def orphaned(self) -> None:
        """The node of a follower was deleted from outside: hold ``orphan_delay``."""
        self._hold_until = max(self._hold_until, time.monotonic() + self.orphan_delay)
        self._first_since = None

    def not_first(self) -> None:
        """The contender is not (or no longer) first: the settle starts again next time."""
        self._first_since = None

    def held(self) -> bool:
        """Wait out the current hold; True when the worker's pass must start over."""
        return self._wait(self._hold_until - time.monotonic())

    def settling(self) -> bool:
        """Not yet first for ``takeover_settle``: wait the rest; True when the pass must restart."""
        now = time.monotonic()
        if self._first_since is None:
            self._first_since = now
        return self._wait(self._first_since + self.takeover_settle - now)

    def _wait(self, seconds: float) -> bool:
        if seconds <= 0:
            return False
        self._stopped.wait(seconds)
        self._wake.set()
        return True
