"""How a set of sends spreads over a window: the figures of the jitter phase (``jitter.py``).

Pure: arrival times in, figures out (no process, no clock, no server), unit-tested on literal
samples in ``tests/test_bench_spread.py``. Every time is in seconds; the window of a run is
``[scheduled, scheduled + window)``, the scheduled time being the crontab's minute.

* ``peak_per_second``: the most sends in any one second, over every 1-s window (sliding, not
  only the whole seconds of the clock), so a burst split across a second's boundary still counts
  whole.
* ``buckets``: sends per equal slice of the window (``BUCKETS`` of them, 10 s for a 60 s window);
  sends before the scheduled time or at/after its end, by more than ``CLOCK_TOLERANCE_S``, are
  counted apart (``outside``).
* ``evenness``: the fullest bucket over the mean bucket (1.0: perfectly even; ``BUCKETS``: every
  send in one bucket).
* ``coverage``: (last - first) / window.

Not measured here: why a send is late; that is the phase's ``offset error`` (each arrival against
the due time ``jitter.offset`` gives it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BUCKETS",
    "CLOCK_TOLERANCE_S",
    "Arrival",
    "Check",
    "Spread",
    "buckets",
    "checks",
    "peak_cap",
    "peak_per_second",
    "spread",
]

#: The window is cut into this many equal buckets (10 s each for a 60 s window).
BUCKETS = 6
#: The beat schedules on ZooKeeper's server time, which it estimates from a znode's ``mtime``
#: (milliseconds) and a round trip; this machine's clock may read a send a few milliseconds
#: before the minute, and a send due just before the window's end lands just after it (the
#: publication's few milliseconds). A send at most this far outside counts in the nearest bucket.
CLOCK_TOLERANCE_S = 0.05
#: With jitter, the peak second may hold at most this share of the sends (500 -> 50), or
#: ``JITTER_PEAK_RATE`` times the even rate (sends / window) when that is more (a short window:
#: 50 sends over 10 s are 5 a second however even).
JITTER_PEAK_SHARE = 0.1
JITTER_PEAK_RATE = 3.0
#: With jitter, first..last must cover at least this share of the window.
JITTER_COVERAGE = 0.8
#: Without jitter, first..last must be within this many seconds.
PLAIN_SPREAD_S = 2.0


@dataclass(frozen=True)
class Arrival:
    """One message as the consumer took it off the broker."""

    name: str
    #: Wall clock (epoch seconds) when the consumer took it.
    at: float
    #: Seconds from the publication (the beat's ``bench_sent_ms``) to the consumer; None without.
    delay: float | None = None


@dataclass(frozen=True)
class Spread:
    """The figures of one run of ``expected`` entries scheduled at ``scheduled``."""

    label: str
    jitter_s: float | None
    window_s: float
    expected: int
    sent: int
    distinct: int
    #: Seconds from the scheduled time to the first and the last send (None: no send).
    first_s: float | None
    last_s: float | None
    peak_1s: int
    buckets: tuple[int, ...]
    outside: int
    #: Largest publication -> consumer delay (seconds); None when no message carried the stamp.
    max_delay_s: float | None
    #: Largest |arrival - due time| (seconds) when the due times are known (jitter.offset).
    max_offset_error_s: float | None = None

    @property
    def spread_s(self) -> float | None:
        if self.first_s is None or self.last_s is None:
            return None
        return self.last_s - self.first_s

    @property
    def coverage(self) -> float | None:
        spread_s = self.spread_s
        return None if spread_s is None else spread_s / self.window_s

    @property
    def evenness(self) -> float | None:
        """The fullest bucket / the mean bucket; None when no send fell in the window."""
        inside = sum(self.buckets)
        if not inside:
            return None
        return max(self.buckets) / (inside / len(self.buckets))


def peak_per_second(times: Sequence[float], width: float = 1.0) -> int:
    """The most of ``times`` in any half-open window ``[t, t + width)``."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def buckets(offsets: Sequence[float], window: float, count: int = BUCKETS) -> tuple[list[int], int]:
    """Sends per ``count`` equal slices of ``[0, window)``, and the sends outside it (an offset
    at most ``CLOCK_TOLERANCE_S`` outside counts in the nearest slice)."""
    if window <= 0 or count < 1:
        raise ValueError(f"buckets need a window > 0 and count >= 1, not {window}, {count}")
    found = [0] * count
    outside = 0
    for offset in offsets:
        if -CLOCK_TOLERANCE_S <= offset < window + CLOCK_TOLERANCE_S:
            found[min(max(int(offset / window * count), 0), count - 1)] += 1
        else:
            outside += 1
    return found, outside


def spread(
    label: str,
    arrivals: Sequence[Arrival],
    scheduled: float,
    window: float,
    expected: int,
    jitter_s: float | None = None,
    due: dict[str, float] | None = None,
) -> Spread:
    """The figures of ``arrivals``, scheduled at ``scheduled`` (epoch seconds), over ``window``.

    ``due``: entry name -> its due time (epoch seconds), for the offset error."""
    offsets = [a.at - scheduled for a in arrivals]
    found, outside = buckets(offsets, window)
    delays = [a.delay for a in arrivals if a.delay is not None]
    errors = [abs(a.at - due[a.name]) for a in arrivals if due and a.name in due]
    return Spread(
        label=label,
        jitter_s=jitter_s,
        window_s=window,
        expected=expected,
        sent=len(arrivals),
        distinct=len({a.name for a in arrivals}),
        first_s=min(offsets) if offsets else None,
        last_s=max(offsets) if offsets else None,
        peak_1s=peak_per_second([a.at for a in arrivals]),
        buckets=tuple(found),
        outside=outside,
        max_delay_s=max(delays) if delays else None,
        max_offset_error_s=max(errors) if errors else None,
    )


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


def checks(plain: Spread, jittered: Spread) -> list[Check]:
    """What the phase must show: every entry sent once in each run; without jitter first..last
    within ``PLAIN_SPREAD_S``; with jitter the peak second at most ``peak_cap`` sends,
    first..last over ``JITTER_COVERAGE`` of the window and no bucket empty."""
    found = []
    for run in (plain, jittered):
        once = run.sent == run.distinct == run.expected
        found.append(
            Check(once, f"{run.label}: {run.sent} sends of {run.expected} entries, each once")
        )
    spread_s = plain.spread_s
    found.append(
        Check(
            spread_s is not None and spread_s <= PLAIN_SPREAD_S,
            f"{plain.label}: first..last {_s(spread_s)} (at most {PLAIN_SPREAD_S:g} s)",
        )
    )
    cap = peak_cap(jittered.expected, jittered.window_s)
    found.append(
        Check(
            jittered.peak_1s <= cap,
            f"{jittered.label}: peak second {jittered.peak_1s} sends (at most {cap}; "
            f"{plain.label}: {plain.peak_1s})",
        )
    )
    coverage = jittered.coverage
    found.append(
        Check(
            coverage is not None and coverage >= JITTER_COVERAGE,
            f"{jittered.label}: first..last covers {_pct(coverage)} of the "
            f"{jittered.window_s:g} s window (at least {JITTER_COVERAGE:.0%})",
        )
    )
    found.append(
        Check(
            all(jittered.buckets),
            f"{jittered.label}: every {jittered.window_s / len(jittered.buckets):.3g} s bucket "
            f"holds sends ({', '.join(map(str, jittered.buckets))})",
        )
    )
    return found


def peak_cap(expected: int, window: float) -> int:
    """The most sends the peak second of a jittered run may hold: ``JITTER_PEAK_SHARE`` of them,
    or ``JITTER_PEAK_RATE`` times the even rate when that is more."""
    return int(max(expected * JITTER_PEAK_SHARE, JITTER_PEAK_RATE * expected / window))


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
