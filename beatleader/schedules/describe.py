"""What each schedule version holds, published under ``schedules/<fingerprint>`` for operators.

Every instance publishes, before each new contender node, one node per schedule version (its
fingerprint, ``Scheduler.fingerprint``)::

    {"<entry name>": {"task": "proj.tasks.x", "schedule": "every 30s", "every": 30.0},
     "<entry name>": {"task": "...", "schedule": "crontab */5 * * * *",
                      "crontab": "*/5 * * * *", "timezone": "UTC"},
     "<entry name>": {"task": "...", "schedule": "<solar: ...>"}, ...}

``schedule`` is human text; ``every`` (seconds) or ``crontab`` + ``timezone`` are there only for
celery's interval and crontab schedules, so that ``beatleader status`` can compute the next due
time from the entry's ``last_run_at`` without the app's code. Versions before this format
published a JSON list of the entry names; :func:`decode_schedule` reads both.

Guarantees:

* The node is content-addressed and created only when absent: a follower writing it cannot
  overwrite anything, and it is not schedule state (the leader never reads it).
* :func:`decode_schedule` never raises on any data: unreadable data reads as None, a malformed
  entry description as a :class:`PlannedEntry` with only its name.
* Publishing costs one request per new contender node, none while an instance waits.

Not guaranteed: that :func:`next_due` is what the leader will do. It is computed by the reader
from the published description and the shared state; an entry that never ran has no next due
time for an interval schedule (the leader counts from its own start, which is not published),
and other schedule types (solar, custom) have none at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from beatleader.schedules import jitter
from beatleader.schedules.checks import DefinitionError
from beatleader.schedules.policies import DEFAULT, RunPolicy, parse_policy, policy_of
from beatleader.zk import layout


@dataclass(frozen=True)
class PlannedEntry:
    """One entry of a published schedule; every field but ``name`` may be unknown."""

    name: str
    task: str | None = None
    schedule: str | None = None  # human text: "every 30s", "crontab */5 * * * *", repr
    every: float | None = None  # seconds, celery interval schedules only
    crontab: str | None = None  # "m h dom mon dow", celery crontab schedules only
    timezone: str | None = None  # the crontab's timezone name
    #: True: the crontab keeps cron's DST rules (``ZonedCrontab``: a runtime entry's, a static
    #: one's under ``beatleader_crontab_rules = "cron"``); False: celery's crontab.
    cron_rules: bool = False
    #: The entry's run policy (``RunPolicy.as_options()``), None when it has the default one.
    policy: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        fields = {
            "task": self.task,
            "schedule": self.schedule,
            "every": self.every,
            "crontab": self.crontab,
            "timezone": self.timezone,
            "policy": self.policy or None,
            "cron_rules": self.cron_rules or None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def run_policy(self) -> RunPolicy:
        if not self.policy:
            return DEFAULT
        try:
            return parse_policy(self.policy)
        except DefinitionError:
            return DEFAULT


def describe_entry(entry: Any) -> PlannedEntry:
    """The :class:`PlannedEntry` of a celery ``ScheduleEntry``."""
    from celery.schedules import crontab, schedule

    from beatleader.schedules.types import ZonedCrontab

    sched = entry.schedule
    task = str(entry.task) if entry.task is not None else None
    options = getattr(entry, "options", None)
    found = policy_of(options)[0] if isinstance(options, dict) else DEFAULT
    policy = found.as_options() or None
    if isinstance(sched, crontab):
        spec = " ".join(
            str(part)
            for part in (
                sched._orig_minute,
                sched._orig_hour,
                sched._orig_day_of_month,
                sched._orig_month_of_year,
                sched._orig_day_of_week,
            )
        )
        rules = isinstance(sched, ZonedCrontab)
        text = f"crontab {spec}"
        return PlannedEntry(entry.name, task, text, None, spec, str(sched.tz), rules, policy)
    if type(sched) is schedule:  # a subclass may override is_due: no promise about it
        seconds = sched.run_every.total_seconds()
        text = f"every {_seconds_text(seconds)}"
        return PlannedEntry(entry.name, task, text, seconds, policy=policy)
    try:
        text = repr(sched)
    except Exception:  # a user's schedule class whose __repr__ fails
        text = f"<{type(sched).__qualname__}>"
    return PlannedEntry(entry.name, task, _one_line(text), policy=policy)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_schedule(entries: list[PlannedEntry]) -> bytes:
    return json.dumps({e.name: e.as_json() for e in entries}, sort_keys=True).encode()


def decode_schedule(data: bytes) -> dict[str, PlannedEntry] | None:
    """Entry name -> description; the old list-of-names format too; None when unreadable."""
    try:
        value = json.loads(data.decode() if data else "null")
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(value, list):
        if not all(isinstance(n, str) for n in value):
            return None
        return {n: PlannedEntry(n) for n in value}
    if not isinstance(value, dict):
        return None
    return {name: _planned(name, fields) for name, fields in value.items()}


def _planned(name: str, fields: Any) -> PlannedEntry:
    if not isinstance(fields, dict):
        return PlannedEntry(name)
    every: Any = fields.get("every")
    # compared, not converted: an integer beyond a float's range is no interval, not an error
    good_every = type(every) in (int, float) and 0 < every <= sys.float_info.max
    policy: Any = fields.get("policy")
    try:
        policy = parse_policy(policy).as_options() or None if isinstance(policy, dict) else None
    except (DefinitionError, RecursionError, TypeError):
        policy = None
    return PlannedEntry(
        name,
        _str_or_none(fields.get("task")),
        _str_or_none(fields.get("schedule")),
        float(every) if good_every else None,
        _str_or_none(fields.get("crontab")),
        _str_or_none(fields.get("timezone")),
        fields.get("cron_rules") is True,
        policy,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def publish_schedule(client: KazooClient, root: str, fingerprint: str, entries: list[Any]) -> None:
    """Create ``schedules/<fingerprint>`` describing ``entries`` (celery entries) if absent."""
    data = encode_schedule([_describe_or_name(e) for e in entries])
    with contextlib.suppress(NodeExistsError):
        client.create(layout.schedule_path(root, fingerprint), data, makepath=True)


def _describe_or_name(entry: Any) -> PlannedEntry:
    """:func:`describe_entry`, or only the name should some custom schedule's repr raise."""
    try:
        return describe_entry(entry)
    except Exception:
        return PlannedEntry(str(entry.name))


def next_due(
    plan: PlannedEntry, last_run_at: str | None, now: datetime, run_count: int | None = None
) -> datetime | None:
    """When ``plan`` is next due after ``last_run_at`` (UTC ISO 8601), or None when unknown or
    done; under its policy: not before ``start_at``, plus the jitter of run ``run_count + 1``
    (the leader's offset: ``schedules/jitter.py``)."""
    scheduled = _scheduled(plan, last_run_at, now)
    policy = plan.run_policy
    if scheduled is None or policy is DEFAULT:
        return scheduled
    if policy.done(run_count or 0, scheduled):
        return None
    if policy.start_at is not None and scheduled < policy.start_at:
        scheduled = policy.start_at
    if run_count is not None and policy.jitter:
        scheduled += timedelta(seconds=jitter.offset(plan.name, run_count + 1, policy.jitter))
    return scheduled


def is_done(plan: PlannedEntry | None, last_run_at: str | None, run_count: int) -> bool:
    """Whether the entry's policy says it runs no more (``max_runs`` reached, past ``end_at``)."""
    if plan is None or plan.run_policy is DEFAULT:
        return False
    policy = plan.run_policy
    if policy.max_runs is not None and run_count >= policy.max_runs:
        return True
    if policy.end_at is None:
        return False
    now = datetime.now(timezone.utc)
    scheduled = _scheduled(plan, last_run_at, now)
    return policy.done(run_count, scheduled or (now if now > policy.end_at else None))


def _scheduled(plan: PlannedEntry, last_run_at: str | None, now: datetime) -> datetime | None:
    last = parse_time(last_run_at)
    if plan.every is not None:
        return None if last is None else last + timedelta(seconds=plan.every)
    if plan.crontab is not None:
        return _crontab_next(plan.crontab, plan.timezone or "UTC", last or now, plan.cron_rules)
    return None


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from ZooKeeper data (naive = UTC), or None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _crontab_next(spec: str, tz: str, after: datetime, cron_rules: bool = False) -> datetime | None:
    """The first run after ``after`` of crontab ``spec`` in ``tz``: celery's arithmetic, or with
    ``cron_rules`` a runtime entry's (``ZonedCrontab``: cron's DST rules); None for a spec or
    zone celery refuses."""
    from celery.schedules import crontab

    from beatleader.schedules.types import ZonedCrontab

    parts = spec.split()
    if len(parts) != 5:
        return None
    app = _zone_app(tz)
    fields = (*parts[:2], parts[4], parts[2], parts[3])
    try:
        if cron_rules:
            start = after.astimezone(timezone.utc)
            zoned = ZonedCrontab(tz, *fields, nowfun=lambda: start, app=app)
            return start + zoned.remaining_estimate(start)
        cron = crontab(*fields, app=app)
        last_run, delta, _now = cron.remaining_delta(cron.maybe_make_aware(after))
        return (last_run + delta).astimezone(timezone.utc)  # type: ignore[no-any-return]
    except Exception:  # a spec or timezone celery refuses: no next due time
        return None


def plan_schedule(plan: PlannedEntry) -> Any | None:
    """A celery schedule with the arithmetic of ``plan``'s (an interval or a crontab, with cron's
    DST rules when it keeps them), for times computed outside the beat (a backfill's dry run);
    None when the plan does not tell (another kind of schedule, a spec celery refuses)."""
    from celery.schedules import crontab, schedule

    from beatleader.schedules.types import ZonedCrontab

    tz = plan.timezone or "UTC"
    if plan.every is not None:
        return schedule(timedelta(seconds=plan.every), app=_zone_app("UTC"))
    parts = (plan.crontab or "").split()
    if len(parts) != 5:
        return None
    fields = (*parts[:2], parts[4], parts[2], parts[3])
    try:
        if plan.cron_rules:
            return ZonedCrontab(tz, *fields, app=_zone_app(tz))
        return crontab(*fields, app=_zone_app(tz))
    except Exception:  # a spec or timezone celery refuses
        return None


@functools.lru_cache(maxsize=64)
def _zone_app(tz: str) -> Any:
    """A celery app whose timezone is ``tz``, for crontab arithmetic only (one per zone: making
    an app per entry cost half a millisecond, seconds for a status of thousands of entries)."""
    from celery import Celery

    app = Celery("beatleader-status", set_as_current=False)
    app.conf.timezone = tz
    app.conf.enable_utc = True
    return app
