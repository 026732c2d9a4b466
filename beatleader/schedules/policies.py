"""Run policies of one entry: what happens to a run that falls due while the last one still runs,
and after how many failed runs in a row the entry pauses itself.

Set in three places, one shape (``{"overlap": ..., "pause_after_failures": N}``, each optional):

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

Guarantees: :func:`parse_policy` accepts only the shape above and raises
:class:`~beatleader.schedules.checks.DefinitionError` with one line naming the field and what
would be valid; :func:`policy_of` never raises (a bad static or django policy is reported by the
scheduler once and the entry runs with :data:`DEFAULT`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from beatleader.schedules.checks import DefinitionError, shown

__all__ = [
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
_FIELDS = ("overlap", "pause_after_failures")


@dataclass(frozen=True)
class RunPolicy:
    """One entry's run policies."""

    #: ``allow``, ``skip`` or ``buffer-one`` (see the module docstring).
    overlap: str = ALLOW
    #: Pause the entry after this many failed runs in a row; None: never.
    pause_after_failures: int | None = None

    @property
    def watches_runs(self) -> bool:
        """Whether the leader looks at the entry's runs (a policy other than the default)."""
        return self.overlap != ALLOW or self.pause_after_failures is not None

    def as_options(self) -> dict[str, Any]:
        """The non-default fields, as stored under ``options["beatleader"]``."""
        fields: dict[str, Any] = {}
        if self.overlap != ALLOW:
            fields["overlap"] = self.overlap
        if self.pause_after_failures is not None:
            fields["pause_after_failures"] = self.pause_after_failures
        return fields

    def describe(self) -> str:
        parts = [f"overlap {self.overlap}"] if self.overlap != ALLOW else []
        if self.pause_after_failures is not None:
            parts.append(f"pause after {self.pause_after_failures} failures")
        return ", ".join(parts)


DEFAULT = RunPolicy()


def parse_policy(value: Any, where: str = "options.beatleader") -> RunPolicy:
    """The policy of a stored or given ``{"overlap": ..., "pause_after_failures": N}``."""
    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where} must be a mapping like {{'overlap': 'skip'}}")
    unknown = sorted(str(key) for key in value if key not in _FIELDS)
    if unknown:
        raise DefinitionError(
            f"{where} has unknown field(s) {', '.join(map(shown, unknown))}; "
            f"known: {', '.join(_FIELDS)}"
        )
    return RunPolicy(
        overlap=check_overlap(value.get("overlap", ALLOW), f"{where}.overlap"),
        pause_after_failures=check_failures(
            value.get("pause_after_failures"), f"{where}.pause_after_failures"
        ),
    )


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
