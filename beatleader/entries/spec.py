"""The arguments of ``entries.add``/``update`` (and ``entry add``/``update``), made definition
parts: one schedule from ``every``/``cron``/``at``/``solar``, options, args and kwargs, and who
changed it when.

Every function raises :class:`~beatleader.schedules.definitions.DefinitionError` with one line
naming the argument (as the CLI spells it) on bad input; the result is validated again, whole, by
``Definition.validated`` before anything is written. Nothing here talks to ZooKeeper.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from beatleader.schedules.definitions import (
    DefinitionError,
    check_expires,
    check_priority,
    parse_at,
    parse_cron,
    parse_every,
    parse_timezone,
)
from beatleader.schedules.policies import (
    OPTIONS_KEY,
    check_failures,
    check_overlap,
    parse_policy,
)


def changed_by() -> str:
    """``user@host`` of this process (``?`` for what cannot be told)."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for the uid (containers): KeyError / OSError
        user = "?"
    return f"{user}@{socket.gethostname() or '?'}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def schedule_of(
    every: str | float | None = None,
    cron: str | None = None,
    at: str | datetime | None = None,
    solar: tuple[str, float, float] | None = None,
    timezone_name: str | None = None,
) -> dict[str, Any] | None:
    """The definition's ``schedule`` from exactly one of the forms (None: none given)."""
    forms = (("every", every), ("cron", cron), ("at", at), ("solar", solar))
    given = [k for k, v in forms if v is not None and v != ""]
    if len(given) > 1:
        raise DefinitionError(f"give one schedule, not {' and '.join('--' + g for g in given)}")
    if timezone_name is not None and given != ["cron"]:
        raise DefinitionError("--timezone applies to --cron only")
    if given == ["every"]:
        assert every is not None
        seconds = parse_every(every) if isinstance(every, str) else parse_every(f"{every}")
        return {"every": seconds}
    if given == ["cron"]:
        assert cron is not None
        zone = {"timezone": parse_timezone(timezone_name)} if timezone_name else {}
        return {"crontab": parse_cron(cron), **zone}
    if given == ["at"]:
        assert at is not None
        text = at.isoformat() if isinstance(at, datetime) else at
        parse_at(text)
        return {"at": text}
    if given == ["solar"]:
        assert solar is not None
        event, lat, lon = solar
        return {"solar": event, "lat": lat, "lon": lon}
    return None


def options_of(
    queue: str | None,
    priority: int | None,
    expires: float | None,
    base: Mapping[str, Any],
    overlap: str | None = None,
    pause_after_failures: int | None = None,
    schedule_policy: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``base`` with the given options replaced (None: unchanged; ``pause_after_failures`` 0:
    never pause); ``schedule_policy``: policy fields (``catchup``, ``jitter``, ...) to set, a
    value of ``""`` removes one; ``names``: what an error calls each field (``parse_policy``)."""
    options = dict(base)
    changes = {k: v for k, v in (schedule_policy or {}).items() if v is not None}
    if overlap is not None or pause_after_failures is not None or changes:
        policy = dict(options.get(OPTIONS_KEY) or {})
        for key, value in changes.items():
            if value == "":
                policy.pop(key, None)
            else:
                policy[key] = value
        if changes.get("catchup") not in (None, "skip"):
            policy.pop("catchup_window", None)
        label = dict(names or {})
        if overlap is not None:
            policy["overlap"] = check_overlap(overlap, label.get("overlap", "overlap"))
        if pause_after_failures == 0:
            policy.pop("pause_after_failures", None)
        elif pause_after_failures is not None:
            what = label.get("pause_after_failures", "pause_after_failures")
            policy["pause_after_failures"] = check_failures(pause_after_failures, what)
        fields = parse_policy(policy, names=label).as_options()
        if fields:
            options[OPTIONS_KEY] = fields
        else:
            options.pop(OPTIONS_KEY, None)
    if queue is not None:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = check_priority(priority)
    if expires is not None:
        options["expires"] = check_expires(expires)
    return options


def note(by: str | None = None) -> bytes:
    """A pause marker's or run request's note: who (``by``, else :func:`changed_by`) and when."""
    return json.dumps({"changed_by": by or changed_by(), "changed_at": utc_now()}).encode()


def json_list(args: Any) -> list[Any]:
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
        raise DefinitionError(f"args must be a list, not {type(args).__name__}")
    return list(args)


def json_object(kwargs: Any) -> Mapping[str, Any]:
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise DefinitionError("kwargs must be a mapping with string keys")
    return kwargs
