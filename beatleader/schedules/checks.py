"""What a runtime entry definition may hold, checked: its limits, fields and argument forms.

The checks :mod:`beatleader.schedules.definitions` builds its strict codec from, and the parsers of
the forms an operator types (``--every 90m``, ``--cron '*/5 * * * *'``, ``--at <ISO 8601>``,
``--timezone``, ``--priority``, ``--expires``, entry names) that :mod:`beatleader.entries.spec`
and :mod:`beatleader.entries.api` use. :mod:`beatleader.schedules.definitions` re-exports every
public name of the API (``DefinitionError``, ``Limits``, ``parse_*``, ``check_priority``,
``check_expires``,
``check_name``): import them from there.

Guarantees: each function returns the checked value (``parse_every`` and ``parse_cron`` a
normalised one) or raises :class:`DefinitionError` with one line naming the argument and what
would be valid, for a value of any type, not only a string. Bounds are :class:`Limits`'s, the same
for writers and readers. Nothing here talks to ZooKeeper or needs an app.

Not guaranteed: that a valid crontab or time zone means the same on every instance (celery and
each host's tz database read them); that a check sees more than its own value (a crontab's
``timezone`` is checked apart from its spec).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab


class DefinitionError(ValueError):
    """A definition or an argument beatleader cannot use; the message is one line."""


class Limits:
    """Bounds every definition is checked against (write and read)."""

    #: Largest encoded definition, bytes (ZooKeeper's own limit is 1 MiB per node).
    max_bytes = 64 * 1024
    #: Longest entry name, task name, queue name, changed_by; characters.
    max_name = 200
    #: Longest interval, seconds (ten years).
    max_every = 10 * 366 * 86400.0
    #: Shortest interval, seconds.
    min_every = 0.1
    #: Message priorities accepted (AMQP's range; Redis uses 0-9 of it).
    priority_range = (0, 255)


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_EVERY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", re.IGNORECASE)


def duration(text: str) -> float | None:
    """Seconds of ``"30s"``, ``"90m"``, ``"2h"``, ``"1d"``, ``"45"``; None when it is none."""
    match = _EVERY.fullmatch(text) if isinstance(text, str) else None
    return float(match.group(1)) * _UNITS[match.group(2).lower()] if match else None


def parse_every(text: str) -> float:
    """Seconds of ``"30s"``, ``"90m"``, ``"2h"``, ``"1d"``, ``"45"`` (seconds)."""
    match = _EVERY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise DefinitionError(
            f"--every {shown(text)} is not an interval: give a number with an optional unit "
            "s, m, h or d (30s, 90m, 2h, 1d)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    return check_every(seconds, f"--every {shown(text)}")


def parse_cron(text: str) -> str:
    """``"m h dom mon dow"``, checked by celery's crontab parser; whitespace normalised."""
    parts = text.split() if isinstance(text, str) else []
    if len(parts) != 5:
        raise DefinitionError(
            f"--cron {shown(text)} is not a crontab: give 5 fields 'minute hour day-of-month "
            "month day-of-week', e.g. '*/5 * * * *'"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    try:
        crontab(minute, hour, day_of_week, day_of_month, month_of_year)
    except Exception as exc:  # celery raises ValueError or its ParseException
        raise DefinitionError(
            f"--cron {shown(text)} is not a valid crontab: {exc_line(exc)}"
        ) from None
    return " ".join(parts)


def parse_at(text: Any, what: str = "--at") -> datetime:
    """An aware datetime from ISO 8601 with a UTC offset (``2026-12-01T09:00:00+01:00``), or an
    aware ``datetime``; else a one-line error naming ``what``."""
    moment = text if isinstance(text, datetime) else None
    if isinstance(text, str):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
        raise DefinitionError(
            f"{what} {shown(text)} is not an ISO 8601 time with a UTC offset, "
            "e.g. 2026-12-01T09:00:00+01:00"
        )
    return moment


def parse_timezone(text: str) -> str:
    """``text`` when it names an IANA time zone (``Europe/Paris``, ``UTC``)."""
    try:
        ZoneInfo(text)
    except Exception:  # ValueError, ZoneInfoNotFoundError (a KeyError), TypeError
        raise DefinitionError(
            f"--timezone {shown(text)} is not a known IANA time zone, e.g. UTC or Europe/Paris"
        ) from None
    return text


def check_priority(priority: Any) -> int:
    low, high = Limits.priority_range
    if type(priority) is not int or not low <= priority <= high:
        raise DefinitionError(f"--priority {shown(priority)} is not an integer in [{low}, {high}]")
    return priority


def check_expires(expires: Any) -> float:
    # compared, not converted: an integer beyond a float's range is refused, never an OverflowError
    good = type(expires) in (int, float) and 0 < expires <= sys.float_info.max
    if not good:
        raise DefinitionError(f"--expires {shown(expires)} is not a positive number of seconds")
    return float(expires)


def check_name(name: Any) -> str:
    """An entry name: 1 to :attr:`Limits.max_name` printable characters."""
    text = check_text(name, "entry name")
    return text


def check_every(seconds: float, what: str) -> float:
    """``seconds`` (an int or a float, compared exactly: NaN, infinities and integers beyond a
    float's range are refused) as a float within :class:`Limits`."""
    if not Limits.min_every <= seconds <= Limits.max_every:
        raise DefinitionError(
            f"{what} must be between {Limits.min_every:g} s and {Limits.max_every:g} s"
        )
    return float(seconds)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters (hostile data can be long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_text(value: Any, what: str, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DefinitionError(f"{what} must be a string, not {json_kind(value)}")
    if not value and not empty:
        raise DefinitionError(f"{what} must not be empty")
    if len(value) > Limits.max_name:
        raise DefinitionError(f"{what} is longer than {Limits.max_name} characters")
    if not value.isprintable():
        raise DefinitionError(f"{what} {shown(value)} contains control characters")
    return value


def json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def exc_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
