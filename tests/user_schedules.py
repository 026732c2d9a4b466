"""Schedule classes as users of celery beat write them: each works with celery's own schedulers.

``TEST_SCHEDULE`` names one with ``{"custom": "ClassName", "custom_args": [...]}`` (``tests.app``);
the contract tests (``test_scheduler_contract.py``) build them in-process too. None of them is
broken for celery: a schedule class may take its own constructor arguments, have a
``__reduce__`` that does not match them, return any ``is_due`` form celery accepts, or have a
``__repr__`` or ``remaining_estimate`` that fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule


class Gate(schedule):  # type: ignore[misc]
    """Due every ``every`` seconds while ``open_``; a closed gate is never due.

    Its constructor is not the one celery's ``schedule.__reduce__`` names: ``copy.copy`` of a
    closed gate calls ``Gate(run_every, relative, nowfun)``, which opens it with a 0 s interval.
    """

    def __init__(self, open_: bool, every: float = 1.0) -> None:
        self.open = open_
        super().__init__(timedelta(seconds=every))

    def is_due(self, last_run_at: datetime) -> schedstate:
        if not self.open:
            return schedstate(False, 5.0)
        return super().is_due(last_run_at)


class KeywordOnly(schedule):  # type: ignore[misc]
    """Every ``seconds``; keyword-only arguments, so ``copy.copy`` raises ``TypeError``."""

    def __init__(self, *, seconds: float) -> None:
        super().__init__(timedelta(seconds=seconds))


class ReturnForm(schedule):  # type: ignore[misc]
    """Every ``every`` seconds, answering ``is_due`` in one of the forms celery accepts.

    ``form``: ``schedstate`` | ``tuple-float`` | ``tuple-int`` | ``int-flags`` (``(1, 2)`` /
    ``(0, 2)``) | ``none-delay`` (``(False, None)`` while not due: "ask again at max_interval").
    """

    def __init__(self, form: str, every: float = 1.0) -> None:
        self.form = form
        super().__init__(timedelta(seconds=every))

    def is_due(self, last_run_at: datetime) -> Any:
        due, delay = super().is_due(last_run_at)
        if self.form == "schedstate":
            return schedstate(due, delay)
        if self.form == "tuple-float":
            return (bool(due), float(delay))
        if self.form == "tuple-int":
            return (bool(due), max(int(delay), 1))
        if self.form == "int-flags":
            return (1 if due else 0, max(int(delay), 1))
        if self.form == "none-delay":
            return (True, delay) if due else (False, None)
        raise ValueError(f"unknown form {self.form!r}")

    def __reduce__(self) -> Any:
        return self.__class__, (self.form, self.run_every.total_seconds())


class BadRepr(schedule):  # type: ignore[misc]
    """Every ``every`` seconds; its ``__repr__`` raises (a bug, harmless to celery's beat)."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(timedelta(seconds=every))

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class BadRemaining(schedule):  # type: ignore[misc]
    """Every ``every`` seconds by its own ``is_due``; ``remaining_estimate`` raises (celery's
    beat never calls it then; beatleader's lateness and metrics do)."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(timedelta(seconds=every))

    def is_due(self, last_run_at: datetime) -> schedstate:
        every = self.run_every.total_seconds()
        waited = (self.now() - self.maybe_make_aware(last_run_at)).total_seconds()
        return schedstate(True, every) if waited >= every else schedstate(False, every - waited)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise RuntimeError("remaining_estimate is broken")


class Odd(schedule):  # type: ignore[misc]
    """``is_due`` answers something celery cannot use either (``mode``: ``three`` | ``text``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__(timedelta(seconds=1))

    def is_due(self, last_run_at: datetime) -> Any:
        if self.mode == "three":
            return (True, 1.0, "extra")
        return "soon"

    def __reduce__(self) -> Any:
        return self.__class__, (self.mode,)


class Zoned(schedule):  # type: ignore[misc]
    """Every ``every`` seconds on its own ``nowfun`` (a clock of its own time zone)."""

    def __init__(self, nowfun: Any, every: float = 1.0) -> None:
        super().__init__(timedelta(seconds=every), nowfun=nowfun)


def make(name: str, args: list[Any]) -> Any:
    """The schedule ``name`` of this module built with ``args`` (``tests.app``)."""
    classes = {c.__name__: c for c in (Gate, KeywordOnly, ReturnForm, BadRepr, BadRemaining, Odd)}
    if name == "KeywordOnly":
        return KeywordOnly(seconds=float(args[0]))
    return classes[name](*args)
