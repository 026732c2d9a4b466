"""Observer hooks: the seam for metrics and logs, instead of calls sprinkled through the code.

The election and the scheduler tell an :class:`Observer` what happened; they never depend on what
it does. Subclass :class:`Observer` and override the methods you need (all are no-ops)::

    class Counting(Observer):
        def sent(self, entry, task_id, lateness): ...

    scheduler.observers.add(Counting())

Guarantees: an observer that raises cannot break scheduling or leadership: :class:`Observers`
logs the exception (once per hook and observer) and goes on. Hooks are called from beatleader's
own threads (election worker, connection listener, beat loop): keep them quick and non-blocking.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("beatleader.observe")

#: Makes the WSGI dashboard a beat serves beside ``/metrics`` when ``beatleader_web`` is true:
#: ``web_factory(settings)``. Set by :mod:`beatleader` (the public face, which may import
#: :mod:`beatleader.web`), so that this low layer and the scheduler need not import it.
web_factory: Callable[[Any], Any] | None = None


class Observer:
    """No-op hooks; override any of them."""

    def leadership_changed(self, leading: bool, reason: str) -> None:
        """This instance started (``leading``) or stopped leading, and why."""

    def connection_changed(self, state: str) -> None:
        """kazoo's connection state changed: ``CONNECTED``, ``SUSPENDED`` or ``LOST``; or
        ``CLOSED`` (the scheduler closed its session)."""

    def committed(self, runs: int, seconds: float) -> None:
        """A fenced commit of ``runs`` entry states succeeded after ``seconds``."""

    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        """Run ``task_id`` of ``entry`` was published, ``lateness`` seconds after it fell due."""

    def skipped(self, entry: str, lateness: float) -> None:
        """A run of ``entry`` was skipped (later than the misfire grace)."""

    def problem(self, kind: str, detail: str) -> None:
        """Something an operator must see (foreign data, misconfiguration), ``kind`` is a tag."""


class Observers(Observer):
    """Fans every hook out to the registered observers; an observer's exception is only logged."""

    def __init__(self, *observers: Observer) -> None:
        self._observers: list[Observer] = list(observers)
        self._lock = threading.Lock()
        self._reported: set[tuple[int, str]] = set()

    def add(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def remove(self, observer: Observer) -> None:
        with self._lock:
            if observer in self._observers:
                self._observers.remove(observer)

    def __contains__(self, observer: object) -> bool:
        with self._lock:
            return observer in self._observers

    def _call(self, hook: str, *args: Any) -> None:
        with self._lock:
            observers = list(self._observers)
        for observer in observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                key = (id(observer), hook)
                if key not in self._reported:
                    self._reported.add(key)
                    logger.exception("beatleader: observer %r failed in %s", observer, hook)

    def leadership_changed(self, leading: bool, reason: str) -> None:
        self._call("leadership_changed", leading, reason)

    def connection_changed(self, state: str) -> None:
        self._call("connection_changed", state)

    def committed(self, runs: int, seconds: float) -> None:
        self._call("committed", runs, seconds)

    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        self._call("sent", entry, task_id, lateness)

    def skipped(self, entry: str, lateness: float) -> None:
        self._call("skipped", entry, lateness)

    def problem(self, kind: str, detail: str) -> None:
        self._call("problem", kind, detail)
