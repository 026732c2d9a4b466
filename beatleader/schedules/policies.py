"""Run policies of one entry: what happens to a run that falls due while the last one still runs,
after how many failed runs in a row the entry pauses itself, what happens to the runs it missed
(catch-up), how its runs spread (jitter) and when it may run at all (start, end, limited runs).

Set in three places, one shape (``{"overlap": ..., "pause_after_failures": N, "catchup": ...,
"catchup_window": s, "max_catchup": N, "jitter": s, "start_at": iso, "end_at": iso,
"max_runs": N}``, each optional):

* a runtime entry: ``entries.add(app, name, ..., overlap="skip", pause_after_failures=3)``,
  ``beatleader entry add NAME ... --overlap skip --pause-after-failures 3`` (stored in the
  definition's ``options`` under ``"beatleader"``);
* a static ``beat_schedule`` entry: ``"options": {"beatleader": {"overlap": "skip"}}``;
* a django-celery-beat row: its ``headers`` JSON ``{"beatleader": {"overlap": "skip"}}`` (the
  model has no field for it; ``headers`` reach the entry's options untouched).

The ``beatleader`` key is removed before a run is published (:func:`publish_options`): it never
reaches the broker or the task.

Overlap policies (Temporal's names; Kubernetes CronJob's ``concurrencyPolicy``):

``allow``       every run is sent when due (celery's behaviour; Kubernetes ``Allow``, Temporal
                ``ALLOW_ALL``). The default. Costs the leader nothing.
``skip``        a run that falls due while the entry's previous run is still running is not sent;
                it is recorded as skipped (``skipped:overlap``), logged and counted (Kubernetes
                ``Forbid``, Temporal ``SKIP``, Quartz ``@DisallowConcurrentExecution``).
``buffer-one``  one such run waits and is sent when the running one ends; further ones are
                skipped (Temporal ``BUFFER_ONE``).

"Running" is the worker guard's claim (``dedup/<entry>/r<ordinal>``, ephemeral): a run is
running from the moment a worker starts it until it ends or its worker's ZooKeeper session ends.
A run sent but not started (in the queue), or between two attempts of a retry, does not block.

Catch-up (what the leader does with the runs an entry missed while no beat ran; Temporal's
catch-up window, APScheduler's ``coalesce``/``misfire_grace_time``):

``once``        the missed runs coalesce into one run, sent at once (celery's behaviour).
``skip``        the missed runs due more than ``catchup_window`` seconds ago are skipped (recorded
                ``skipped:late``, each counted); the latest one, when it is within the window,
                is sent (the ones within it coalesce into it).
``all``         every missed run is sent, oldest first, each with its own ordinal and task id and
                its scheduled time as ``last_run_at``; past ``max_catchup`` (default 100) missed
                runs, the older ones are skipped and one ERROR says how many.
(unset)         the global ``beatleader_misfire_grace``: unset, ``once``; set, every missed run is
                skipped once the first of them is later than the grace.

``jitter``: each run is due ``offset`` seconds after its scheduled time, ``offset`` in
``[0, jitter)`` a deterministic function of the entry's name and the run's ordinal
(``schedules/jitter.py``): every leader computes the same one, a failover never re-jitters a run.
``start_at``/``end_at`` (ISO 8601 with a UTC offset): no run is due before ``start_at`` or
scheduled after ``end_at``; ``max_runs``: the entry is *done* once its run count reaches it.

Guarantees: :func:`parse_policy` accepts only the shape above and raises
:class:`~beatleader.schedules.checks.DefinitionError` with one line naming the field and what
would be valid; :func:`policy_of` never raises (a bad static or django policy is reported by the
scheduler once and the entry runs with :data:`DEFAULT`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beatleader.schedules.checks import DefinitionError, duration, parse_at, shown

__all__ = [
    "CATCHUP_MODES",
    "DEFAULT",
    "OPTIONS_KEY",
    "OVERLAP_POLICIES",
    "RunPolicy",
    "parse_policy",
    "policy_of",
    "publish_options",
]

#: The key of an entry's ``options`` (and of a django row's ``headers``) that holds its policy.
OPTIONS_KEY = "beatleader"
ALLOW, SKIP, BUFFER_ONE = "allow", "skip", "buffer-one"
OVERLAP_POLICIES = (ALLOW, SKIP, BUFFER_ONE)
#: Most consecutive failures ``pause_after_failures`` may count.
MAX_FAILURES = 1000
ONCE, ALL = "once", "all"
CATCHUP_MODES = (ONCE, SKIP, ALL)
#: Missed runs ``catchup: all`` sends at most (unless ``max_catchup`` says otherwise).
DEFAULT_MAX_CATCHUP = 100
#: Largest ``max_catchup`` and ``max_runs``.
MAX_COUNT = 1_000_000
_FIELDS = (
    "overlap", "pause_after_failures", "catchup", "catchup_window", "max_catchup", "jitter",
    "start_at", "end_at", "max_runs",
)  # fmt: skip


@dataclass(frozen=True)
class RunPolicy:
    """One entry's run policies."""

    #: ``allow``, ``skip`` or ``buffer-one`` (see the module docstring).
    overlap: str = ALLOW
    #: Pause the entry after this many failed runs in a row; None: never.
    pause_after_failures: int | None = None
    #: ``once``, ``skip`` or ``all``; None: the global ``misfire_grace`` decides.
    catchup: str | None = None
    #: Seconds: under ``skip``, a missed run due longer ago than this is skipped.
    catchup_window: float | None = None
    #: Under ``all``: most missed runs sent; the older ones are skipped.
    max_catchup: int = DEFAULT_MAX_CATCHUP
    #: Seconds: each run is due up to this much after its scheduled time; None: on time.
    jitter: float | None = None
    #: No run is due before this instant (aware); None: from now.
    start_at: datetime | None = None
    #: No run scheduled after this instant is sent; past it the entry is done. None: never.
    end_at: datetime | None = None
    #: The entry is done once its run count reaches this; None: no limit.
    max_runs: int | None = None

    @property
    def watches_runs(self) -> bool:
        """Whether the leader looks at the entry's runs (a policy other than the default)."""
        return self.overlap != ALLOW or self.pause_after_failures is not None

    @property
    def shapes_times(self) -> bool:
        """Whether the policy changes when the entry is due (jitter, start, end, limited runs)."""
        return (self.jitter, self.start_at, self.end_at, self.max_runs) != (None,) * 4

    def done(self, run_count: int, next_scheduled: datetime | None) -> bool:
        """Whether an entry with ``run_count`` runs, next scheduled at ``next_scheduled``, is
        done."""
        if self.max_runs is not None and run_count >= self.max_runs:
            return True
        return bool(self.end_at and next_scheduled and next_scheduled > self.end_at)

    def as_options(self) -> dict[str, Any]:
        """The non-default fields, as stored under ``options["beatleader"]``."""
        fields: dict[str, Any] = {}
        if self.overlap != ALLOW:
            fields["overlap"] = self.overlap
        if self.pause_after_failures is not None:
            fields["pause_after_failures"] = self.pause_after_failures
        if self.catchup is not None:
            fields["catchup"] = self.catchup
        if self.catchup_window is not None:
            fields["catchup_window"] = self.catchup_window
        if self.max_catchup != DEFAULT_MAX_CATCHUP:
            fields["max_catchup"] = self.max_catchup
        if self.jitter is not None:
            fields["jitter"] = self.jitter
        for key in ("start_at", "end_at"):
            moment = getattr(self, key)
            if moment is not None:
                fields[key] = moment.isoformat()
        if self.max_runs is not None:
            fields["max_runs"] = self.max_runs
        return fields

    def describe(self) -> str:
        parts = [f"overlap {self.overlap}"] if self.overlap != ALLOW else []
        if self.pause_after_failures is not None:
            parts.append(f"pause after {self.pause_after_failures} failures")
        if self.catchup == SKIP:
            parts.append(f"catch-up skip past {self.catchup_window:g} s")
        elif self.catchup is not None:
            parts.append(f"catch-up {self.catchup}")
        if self.jitter is not None:
            parts.append(f"jitter {self.jitter:g} s")
        if self.start_at is not None:
            parts.append(f"from {self.start_at.isoformat()}")
        if self.end_at is not None:
            parts.append(f"until {self.end_at.isoformat()}")
        if self.max_runs is not None:
            parts.append(f"{self.max_runs} runs")
        return ", ".join(parts)


DEFAULT = RunPolicy()


def parse_policy(
    value: Any, where: str = "options.beatleader", names: Mapping[str, str] | None = None
) -> RunPolicy:
    """The policy of a stored or given ``{"overlap": ..., "pause_after_failures": N}``.

    An error names a field ``<where>.<field>``, or with ``names`` as the caller calls it (a
    command-line flag, a keyword argument): ``names[field]``, the field itself if not listed.
    """

    def at(field: str) -> str:
        return f"{where}.{field}" if names is None else names.get(field, field)

    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where} must be a mapping like {{'overlap': 'skip'}}")
    unknown = sorted(str(key) for key in value if key not in _FIELDS)
    if unknown:
        raise DefinitionError(
            f"{where} has unknown field(s) {', '.join(map(shown, unknown))}; "
            f"known: {', '.join(_FIELDS)}"
        )
    window = check_seconds(value.get("catchup_window"), at("catchup_window"))
    catchup = check_catchup(value.get("catchup"), at("catchup"))
    if window is not None and catchup is None:
        catchup = SKIP  # a window says what to skip
    if catchup == SKIP and window is None:
        raise DefinitionError(
            f"{at('catchup')} skip needs {at('catchup_window')} (seconds, e.g. 30s)"
        )
    if window is not None and catchup != SKIP:
        raise DefinitionError(
            f"{at('catchup_window')} applies to {at('catchup')} skip, not {catchup}"
        )
    start_at = check_time(value.get("start_at"), at("start_at"))
    end_at = check_time(value.get("end_at"), at("end_at"))
    if start_at is not None and end_at is not None and start_at >= end_at:
        raise DefinitionError(
            f"{at('start_at')} {start_at.isoformat()} is not before {at('end_at')} "
            f"{end_at.isoformat()}"
        )
    max_catchup = check_count(value.get("max_catchup"), at("max_catchup"))
    return RunPolicy(
        overlap=check_overlap(value.get("overlap", ALLOW), at("overlap")),
        pause_after_failures=check_failures(
            value.get("pause_after_failures"), at("pause_after_failures")
        ),
        catchup=catchup,
        catchup_window=window,
        max_catchup=DEFAULT_MAX_CATCHUP if max_catchup is None else max_catchup,
        jitter=check_seconds(value.get("jitter"), at("jitter")),
        start_at=start_at,
        end_at=end_at,
        max_runs=check_count(value.get("max_runs"), at("max_runs")),
    )


def check_catchup(value: Any, what: str = "catchup") -> str | None:
    if value is None:
        return None
    if value not in CATCHUP_MODES or not isinstance(value, str):
        raise DefinitionError(f"{what} {shown(value)} is not one of {', '.join(CATCHUP_MODES)}")
    return value


def check_seconds(value: Any, what: str) -> float | None:
    """Seconds > 0 from a number or ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``; None stays None."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, str):
        seconds = duration(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise DefinitionError(
            f"{what} {shown(value)} is not a duration: give seconds > 0, or a number with a "
            "unit s, m, h or d (30s, 5m, 2h)"
        )
    return seconds


def check_time(value: Any, what: str) -> datetime | None:
    """An aware datetime from ISO 8601 with a UTC offset (or an aware datetime)."""
    return None if value is None else parse_at(value, what)


def check_count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise DefinitionError(f"{what} {shown(value)} is not a whole number in 1..{MAX_COUNT}")
    return value


def check_overlap(value: Any, what: str = "overlap") -> str:
    if value not in OVERLAP_POLICIES or not isinstance(value, str):
        raise DefinitionError(f"{what} {shown(value)} is not one of {', '.join(OVERLAP_POLICIES)}")
    return value


def check_failures(value: Any, what: str = "pause_after_failures") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FAILURES:
        raise DefinitionError(
            f"{what} {shown(value)} is not a whole number of failed runs in 1..{MAX_FAILURES}"
        )
    return value


def policy_of(options: Mapping[str, Any]) -> tuple[RunPolicy, str | None]:
    """An entry's policy from its ``options`` (or its ``headers``), and the problem, if any.

    Never raises: a bad policy is ``(DEFAULT, problem)``.
    """
    found: Any = options.get(OPTIONS_KEY)
    where = f"options.{OPTIONS_KEY}"
    headers = options.get("headers")
    if found is None and isinstance(headers, Mapping):
        found, where = headers.get(OPTIONS_KEY), f"headers.{OPTIONS_KEY}"
    if found is None:
        return DEFAULT, None
    try:
        return parse_policy(found, where), None
    except DefinitionError as exc:
        return DEFAULT, str(exc)
    except Exception as exc:  # a user's mapping whose methods raise
        return DEFAULT, f"{where} is unreadable ({type(exc).__name__})"


def publish_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the policy (neither the key nor its ``headers`` twin is published)."""
    published = {key: value for key, value in options.items() if key != OPTIONS_KEY}
    headers = published.get("headers")
    if isinstance(headers, Mapping) and OPTIONS_KEY in headers:
        published["headers"] = {k: v for k, v in headers.items() if k != OPTIONS_KEY}
    return published
