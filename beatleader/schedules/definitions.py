"""Runtime entry definitions: the JSON stored under ``definitions/<quoted name>``, validated.

A definition is one schedule entry defined while beat runs (``beatleader entry add``,
:mod:`beatleader.entries.api`)::

    {"task": "proj.tasks.x",
     "schedule": {"every": 30.0}
               | {"crontab": "*/5 * * * *", "timezone": "Europe/Paris"}   (timezone optional)
               | {"at": "2026-12-01T09:00:00+01:00"}                      (one-off)
               | {"solar": "sunrise", "lat": 52.1, "lon": 4.3},
     "args": [...], "kwargs": {...},
     "options": {"queue": "q", "priority": 5, "expires": 60.0,           (each optional)
                 "beatleader": {"overlap": "skip", "pause_after_failures": 3}},  (policies.py)
     "enabled": true, "changed_by": "user@host", "changed_at": "<ISO 8601 UTC>"}

Guarantees: :meth:`Definition.parse` never raises on any bytes; it accepts only what
:meth:`Definition.encode` can write (every field, its JSON type, its range, no unknown key, at most
:attr:`Limits.max_bytes`), so a hostile or malformed node is a ``(None, problem)`` and never
reaches a scheduler. Every writer validates before writing (:meth:`Definition.validated`), every
reader validates again. A ``DefinitionError`` message is one line naming the argument and what
would be valid. Nothing here talks to ZooKeeper. The argument parsers and field checks
(``parse_every``, ``check_priority``, ``Limits``, ``DefinitionError``, ...) live in
:mod:`beatleader.schedules.checks` and are re-exported here: import them from this module.

Not guaranteed: that ``task`` names a task some worker knows (only the API with an app checks
that); that a solar schedule can run (celery needs the ``ephem`` package, checked when the
schedule is built, not when the definition is parsed). A crontab without ``timezone`` runs in the
app's timezone. Every runtime crontab is a :class:`ZonedCrontab`: cron's daylight-saving rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from celery import beat
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab, schedule, solar

from beatleader.schedules.checks import (
    DefinitionError,
    Limits,
    check_every,
    check_expires,
    check_name,
    check_priority,
    check_text,
    exc_line,
    json_kind,
    parse_at,
    parse_cron,
    parse_every,
    parse_timezone,
    shown,
)
from beatleader.schedules.policies import OPTIONS_KEY, parse_policy
from beatleader.schedules.types import OneOff, ZonedCrontab

__all__ = [
    "SCHEDULE_KINDS",
    "Definition",
    "DefinitionError",
    "Limits",
    "OneOff",
    "ZonedCrontab",
    "check_expires",
    "check_name",
    "check_priority",
    "parse_at",
    "parse_cron",
    "parse_every",
    "parse_timezone",
]

SCHEDULE_KINDS = ("every", "crontab", "at", "solar")
_FIELDS = frozenset(
    ("task", "schedule", "args", "kwargs", "options", "enabled", "changed_by", "changed_at")
)
_OPTION_NAMES = ("queue", "priority", "expires", OPTIONS_KEY)
_SCHEDULE_KEYS = {
    "every": frozenset(("every",)),
    "crontab": frozenset(("crontab", "timezone")),
    "at": frozenset(("at",)),
    "solar": frozenset(("solar", "lat", "lon")),
}


@dataclass(frozen=True)
class Definition:
    """One runtime entry; build it with :meth:`validated` or :meth:`parse`, never unchecked."""

    task: str
    schedule: dict[str, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    changed_by: str = ""
    changed_at: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "schedule": dict(self.schedule),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "enabled": self.enabled,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_json(), sort_keys=True, allow_nan=False).encode()

    def validated(self) -> Definition:
        """This definition, checked as :meth:`parse` would check it; else DefinitionError."""
        try:
            data = self.encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise DefinitionError(f"args/kwargs must be JSON values: {exc_line(exc)}") from None
        found, problem = Definition.parse(data)
        if found is None:
            raise DefinitionError(problem or "invalid definition")
        policy = found.options.get("beatleader")
        every = found.schedule.get("every")
        if isinstance(policy, dict) and every is not None:
            jitter = policy.get("jitter")
            if isinstance(jitter, (int, float)) and jitter >= every:
                raise DefinitionError(
                    f"--jitter {jitter:g} s is not shorter than the interval --every {every:g} s"
                )
        return found

    @classmethod
    def parse(cls, data: bytes) -> tuple[Definition | None, str | None]:
        """``(definition, None)``, or ``(None, why)`` for any data that is not a valid one."""
        if len(data) > Limits.max_bytes:
            return None, f"definition is {len(data)} bytes, more than {Limits.max_bytes}"
        try:
            value = json.loads(data.decode() if data else "null", parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return None, f"definition is not JSON ({type(exc).__name__})"
        try:
            return _from_json(value), None
        except DefinitionError as exc:
            return None, str(exc)

    def with_changes(self, **changes: Any) -> Definition:
        return replace(self, **changes).validated()

    @property
    def kind(self) -> str:
        return next(k for k in SCHEDULE_KINDS if k in self.schedule)

    def at(self) -> datetime | None:
        """The moment of a one-off definition (None for the other kinds)."""
        text = self.schedule.get("at")
        return parse_at(text) if isinstance(text, str) else None

    def describe(self) -> str:
        sched = self.schedule
        if "every" in sched:
            return f"every {sched['every']:g}s"
        if "crontab" in sched:
            zone = sched.get("timezone")
            return f"crontab {sched['crontab']}" + (f" ({zone})" if zone else "")
        if "at" in sched:
            return f"at {sched['at']}"
        return f"solar {sched['solar']} ({sched['lat']:g}, {sched['lon']:g})"

    def celery_schedule(self, app: Any) -> Any:
        """The celery schedule object of this definition, bound to ``app``."""
        sched = self.schedule
        if "every" in sched:
            return schedule(timedelta(seconds=sched["every"]), app=app)
        if "crontab" in sched:
            return _crontab(sched["crontab"], sched.get("timezone"), app)
        if "at" in sched:
            return OneOff(parse_at(sched["at"]), app=app)
        try:
            return solar(sched["solar"], sched["lat"], sched["lon"], app=app)
        except ImproperlyConfigured:  # celery's "install ephem"
            raise DefinitionError(
                "a solar schedule needs the ephem package (pip install 'celery[solar]')"
            ) from None

    def to_entry(self, app: Any, name: str) -> beat.ScheduleEntry:
        """The celery entry named ``name``; a one-off's ``last_run_at`` is just before ``at``.

        (celery fills an absent ``last_run_at`` with now, which would make a one-off whose
        moment has passed never due; stored run state, when the leader has some, replaces it.)
        """
        moment = self.at()
        last_run_at = moment - timedelta(seconds=1) if moment is not None else None
        return beat.ScheduleEntry(
            name=name,
            task=self.task,
            schedule=self.celery_schedule(app),
            args=list(self.args),
            kwargs=dict(self.kwargs),
            options=dict(self.options),
            last_run_at=last_run_at,
            app=app,
        )


def _crontab(spec: str, zone: str | None, app: Any) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = spec.split()
    fields = (minute, hour, day_of_week, day_of_month, month_of_year)
    return ZonedCrontab(zone or None, *fields, app=app)  # no zone: the app's, cron's DST rules


# -- validating the JSON -------------------------------------------------------------------


def _from_json(value: Any) -> Definition:
    if not isinstance(value, dict):
        raise DefinitionError("definition is not a JSON object")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise DefinitionError(f"definition has unknown field(s) {', '.join(map(str, unknown))}")
    if "task" not in value or "schedule" not in value:
        raise DefinitionError("definition needs 'task' and 'schedule'")
    args = value.get("args", [])
    kwargs = value.get("kwargs", {})
    if not isinstance(args, list):
        raise DefinitionError(f"args must be a JSON list, not {json_kind(args)}")
    if not isinstance(kwargs, dict):
        raise DefinitionError(f"kwargs must be a JSON object, not {json_kind(kwargs)}")
    enabled = value.get("enabled", True)
    if type(enabled) is not bool:
        raise DefinitionError(f"enabled must be true or false, not {shown(enabled)}")
    changed_at = check_text(value.get("changed_at", ""), "changed_at", empty=True)
    if changed_at:
        _check_time(changed_at, "changed_at")
    return Definition(
        task=_task(value["task"]),
        schedule=_schedule(value["schedule"]),
        args=tuple(args),
        kwargs=kwargs,
        options=_options(value.get("options", {})),
        enabled=enabled,
        changed_by=check_text(value.get("changed_by", ""), "changed_by", empty=True),
        changed_at=changed_at,
    )


def _task(task: Any) -> str:
    text = check_text(task, "task")
    if any(c.isspace() for c in text):
        raise DefinitionError(f"task {shown(text)} is not a task name (no whitespace allowed)")
    return text


def _schedule(sched: Any) -> dict[str, Any]:
    if not isinstance(sched, dict):
        raise DefinitionError("schedule must be a JSON object")
    kinds = [k for k in SCHEDULE_KINDS if k in sched]
    if len(kinds) != 1:
        raise DefinitionError("schedule must have exactly one of 'every', 'crontab', 'at', 'solar'")
    kind = kinds[0]
    unknown = sorted(set(sched) - _SCHEDULE_KEYS[kind])
    if unknown:
        raise DefinitionError(f"{kind} schedule has unknown field(s) {', '.join(unknown)}")
    if kind == "every":
        every = sched["every"]
        if type(every) not in (int, float):
            raise DefinitionError(f"schedule every must be a number of seconds, not {shown(every)}")
        return {"every": check_every(every, "schedule every")}
    if kind == "crontab":
        spec = parse_cron(check_text(sched["crontab"], "schedule crontab"))
        zone = sched.get("timezone")
        if zone is None:
            return {"crontab": spec}
        return {"crontab": spec, "timezone": parse_timezone(check_text(zone, "schedule timezone"))}
    if kind == "at":
        text = check_text(sched["at"], "schedule at")
        parse_at(text)
        return {"at": text}
    return _solar(sched)


def _solar(sched: dict[str, Any]) -> dict[str, Any]:
    event = sched["solar"]
    events = sorted(solar._all_events)
    if event not in events:
        raise DefinitionError(f"solar event {shown(event)} is not one of {', '.join(events)}")
    place = {}
    for name, bound in (("lat", 90.0), ("lon", 180.0)):
        number: Any = sched.get(name)
        if type(number) not in (int, float) or not -bound <= number <= bound:
            raise DefinitionError(f"solar {name} must be a number in [-{bound:g}, {bound:g}]")
        place[name] = float(number)
    return {"solar": event, **place}


def _options(options: Any) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise DefinitionError(f"options must be a JSON object, not {json_kind(options)}")
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise DefinitionError(
            f"options has unknown field(s) {', '.join(unknown)}; known: {', '.join(_OPTION_NAMES)}"
        )
    checked: dict[str, Any] = {}
    if "queue" in options:
        checked["queue"] = check_text(options["queue"], "queue")
    if "priority" in options:
        checked["priority"] = check_priority(options["priority"])
    if "expires" in options:
        checked["expires"] = check_expires(options["expires"])
    if OPTIONS_KEY in options:
        policy = parse_policy(options[OPTIONS_KEY]).as_options()
        if policy:
            checked[OPTIONS_KEY] = policy
    return checked


def _check_time(text: str, what: str) -> None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise DefinitionError(f"{what} {shown(text)} is not an ISO 8601 time with a zone")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
