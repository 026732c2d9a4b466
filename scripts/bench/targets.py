"""Issue 19's targets, checked on the figures of one run: pure, nothing measured here.

Each target is computed from the values passed in (never a hard-coded result) and answers PASS,
FAIL or n/a (a figure is missing, e.g. a phase was skipped):

* steady lateness of the 1 s entry: after's p99 <= ``LATENESS_P99_FACTOR`` x
  PersistentScheduler's p99, and after's p50 <= ``LATENESS_P50_MS``;
* throughput after / PersistentScheduler >= ``THROUGHPUT_FACTORS[entries]`` at the entry counts
  that have a target (1,000 and 4,000);
* CPU per 1,000 sends: after <= before; an after above before by at most ``CPU_NOISE`` (the
  noise of one run on a shared two-core machine) passes, and the verdict says it is within noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: after's steady lateness p99 may be at most this many times PersistentScheduler's.
LATENESS_P99_FACTOR = 2.0
#: after's steady lateness p50 may be at most this (ms).
LATENESS_P50_MS = 1.5
#: Entry count -> the least after / PersistentScheduler sends/s.
THROUGHPUT_FACTORS: Mapping[int, float] = {1000: 2.0, 4000: 8.0}
#: CPU per 1,000 sends of after above before by at most this fraction counts as noise.
CPU_NOISE = 0.10


@dataclass(frozen=True)
class Target:
    """One target: what it asks, the figure found, and the verdict (PASS, FAIL or n/a)."""

    name: str
    found: str
    verdict: str

    @property
    def passed(self) -> bool | None:
        """True, False, or None when it could not be checked."""
        return None if self.verdict == "n/a" else self.verdict.startswith("PASS")


def _na(name: str) -> Target:
    return Target(name, "n/a", "n/a")


def lateness_targets(
    after_p50: float | None, after_p99: float | None, persistent_p99: float | None
) -> list[Target]:
    """p99 <= 2x PersistentScheduler's p99; p50 <= 1.5 ms (steady lateness, 1 s entry)."""
    p99_name = f"steady lateness p99 <= {LATENESS_P99_FACTOR:g}x PersistentScheduler's"
    p50_name = f"steady lateness p50 <= {LATENESS_P50_MS:g} ms"
    targets = []
    if after_p99 is None or persistent_p99 is None or persistent_p99 <= 0:
        targets.append(_na(p99_name))
    else:
        bound = LATENESS_P99_FACTOR * persistent_p99
        targets.append(
            Target(
                p99_name,
                f"{after_p99:.1f} ms vs bound {bound:.1f} ms ({after_p99 / persistent_p99:.2f}x)",
                "PASS" if after_p99 <= bound else "FAIL",
            )
        )
    if after_p50 is None:
        targets.append(_na(p50_name))
    else:
        verdict = "PASS" if after_p50 <= LATENESS_P50_MS else "FAIL"
        targets.append(Target(p50_name, f"{after_p50:.1f} ms", verdict))
    return targets


def throughput_target(entries: int, after: float | None, persistent: float | None) -> Target | None:
    """after / PersistentScheduler sends/s against the factor of ``entries``; None: no target."""
    factor = THROUGHPUT_FACTORS.get(entries)
    if factor is None:
        return None
    name = f"throughput at {entries:,} entries >= {factor:g}x PersistentScheduler"
    if after is None or persistent is None or after <= 0 or persistent <= 0:
        return _na(name)
    found = after / persistent
    return Target(name, f"{found:.2f}x", "PASS" if found >= factor else "FAIL")


def cpu_target(entries: int, after: float | None, before: float | None) -> Target:
    """CPU per 1,000 sends, after <= before (within ``CPU_NOISE``: a pass said to be noise)."""
    name = f"CPU per 1,000 sends at {entries:,} entries: after <= before"
    if after is None or before is None or before <= 0:
        return _na(name)
    found = f"{after:.2f} vs {before:.2f} CPU-s ({after / before:.2f}x)"
    if after <= before:
        return Target(name, found, "PASS")
    if after <= before * (1 + CPU_NOISE):
        return Target(name, found, f"PASS (higher, within the {CPU_NOISE:.0%} noise of one run)")
    return Target(name, found, f"FAIL (more than {CPU_NOISE:.0%} above before)")
