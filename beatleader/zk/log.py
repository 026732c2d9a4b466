"""Logging of beatleader's ZooKeeper clients: kazoo quiet by default, state changes told once.

kazoo logs under ``beatleader.kazoo`` (the logger :func:`kazoo_logger` gives every client). Unless
the application sets that logger's level, :class:`KazooLogFilter` keeps it quiet: kazoo's INFO
lines and its per-attempt reconnect warnings are dropped (one a second while ZooKeeper is down),
other warnings pass at most once a minute each, errors always pass. beatleader logs connection
state changes itself (``beatleader.client``, INFO, :func:`log_state`), and the election logs
"waiting for ZooKeeper" with doubling pauses.

Not guaranteed: that nothing of kazoo's reaches the log; errors always do.
"""

from __future__ import annotations

import logging
import time

#: Name of the logger kazoo's own messages go to.
KAZOO_LOGGER = "beatleader.kazoo"

logger = logging.getLogger("beatleader.client")


class KazooLogFilter(logging.Filter):
    """Quiets kazoo's chatter on ``beatleader.kazoo`` while the application left its level unset."""

    #: kazoo's message templates repeated on every reconnect attempt: never shown by default.
    reconnect_chatter = frozenset(
        {
            "Connection dropped: %s",
            "Connection time-out: %s",
            "Transition to CONNECTING",
        }
    )
    #: Seconds before the same other warning (e.g. "Cannot resolve %s: %s") passes again.
    repeat_after = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            logging.getLogger(record.name).level != logging.NOTSET
            or record.levelno >= logging.ERROR
        ):
            return True  # configured by the application, or an error: always shown
        if record.levelno < logging.WARNING or record.msg in self.reconnect_chatter:
            return False
        now, template = time.monotonic(), str(record.msg)
        last = self._last_seen.get(template)
        if last is not None and now - last < self.repeat_after:
            return False
        self._last_seen[template] = now
        return True


def kazoo_logger() -> logging.Logger:
    """The logger every client gets, with one :class:`KazooLogFilter` installed."""
    log = logging.getLogger(KAZOO_LOGGER)
    if not any(isinstance(f, KazooLogFilter) for f in log.filters):
        log.addFilter(KazooLogFilter())
    return log


def log_state(state: str) -> None:
    """One line per connection state change (kazoo calls listeners only on a change)."""
    logger.info("beatleader: ZooKeeper connection %s", state)
