"""A shifted, sped-up wall clock shared by child processes, through libfaketime (tests only).

For tests that must live through a moment they cannot wait for in real time (a daylight-saving
change): every process started with :meth:`FakeClock.env` in its environment (a ZooKeeper
server's JVM, a ``celery beat``) reads the same fake wall clock, ``start`` at the moment the
clock was made, running ``rate`` times as fast as the real one. It uses Debian's
``libfaketime`` (package ``faketime``) by ``LD_PRELOAD``; :func:`missing_requirements` says
whether it is there.

Guarantees:

* One timeline: a process started at real time ``t`` reads ``start + rate * (t - made)`` then,
  and its clock runs ``rate`` times as fast from there (libfaketime's ``+offset xrate``, whose
  offset is computed here when :meth:`FakeClock.env` is called, just before the process
  starts). Two processes agree to within ``rate`` times the delay between that call and the
  process's start (a few milliseconds: a few tenths of a fake second at ``x60``).
* Only the wall clock is faked (``FAKETIME_DONT_FAKE_MONOTONIC``): monotonic clocks, and so
  ZooKeeper's session timers (``System.nanoTime``), kazoo's and beatleader's timeouts, run in
  real time. libfaketime shortens ``select``/``poll`` timeouts by ``rate``.
* Python's ``time.sleep`` fails with ``EINVAL`` under libfaketime 0.9.10 when the monotonic clock
  is not faked (its ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` wrapper), so a Python
  child also gets a ``sitecustomize`` (in ``site_dir``, first on ``PYTHONPATH``) that makes
  ``time.sleep(s)`` a ``select`` timeout: ``s`` fake seconds, as libfaketime means a sleep
  (it shadows any other ``sitecustomize`` on the path).
* ``FAKETIME_FORCE_MONOTONIC_FIX=0``: with libfaketime's fix of timed condition waits, a JVM
  measured here took 3 to 10 s to start ZooKeeper and up to 0.8 s per request; without it,
  about 1 s and a few ms per request (0.6 s and a few ms without libfaketime).
* libfaketime keeps a shared-memory segment and a semaphore per faked process
  (``/dev/shm/faketime_shm_<pid>``, ``sem.faketime_sem_<pid>``) and cannot remove them when the
  process is killed; a leftover makes a later process with the same pid fail at start
  (``shm_open failed: File exists``). :meth:`FakeClock.env` first removes every such pair whose
  process no longer exists, so a killed run's leftovers cannot break the next one.

Not guaranteed: anything about processes started without the environment (the test itself, a
worker) beyond their real clock; a program that reads the clock without libc (a static binary).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from beatleader.testing.localproc import LoggedProcess
from beatleader.testing.localzk import ZooKeeperServer, _live_processes


def _library() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    return found[0] if found else Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


#: Where Debian's ``libfaketime`` package puts the library (``/usr/lib/<multiarch>/faketime``).
LIBFAKETIME = _library()
#: Where libfaketime keeps its per-process shared memory and semaphores.
SHM_DIR = Path("/dev/shm")
_SHM_PREFIXES = ("faketime_shm_", "sem.faketime_sem_")

SITECUSTOMIZE = '''\
"""Written by beatleader.testing.faketime: time.sleep under libfaketime (see there)."""
import select as _select
import time as _time


def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    _select.select([], [], [], seconds)


_time.sleep = _sleep
'''


def missing_requirements() -> list[str]:
    """What this machine lacks to fake a clock (empty when nothing is missing)."""
    return [] if LIBFAKETIME.exists() else [f"{LIBFAKETIME} (Debian package faketime)"]


def remove_stale_segments(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove libfaketime's segments of processes that no longer exist; returns those removed."""
    removed = []
    for path in sorted(shm_dir.glob("*faketime_s*_*")):
        prefix = next((p for p in _SHM_PREFIXES if path.name.startswith(p)), None)
        pid_text = path.name[len(prefix) :] if prefix else ""
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FakeClock:
    """A fake wall clock that reads ``start`` now and runs ``rate`` times as fast."""

    def __init__(self, start: datetime, rate: float, site_dir: Path) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock: start must be an aware datetime")
        if rate <= 0:
            raise ValueError(f"FakeClock: rate must be positive, not {rate!r}")
        self.start, self.rate = start, rate
        self._made = time.time()
        self.site_dir = Path(site_dir)
        self.site_dir.mkdir(parents=True, exist_ok=True)
        (self.site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def epoch(self, real: float | None = None) -> float:
        """The fake time (epoch seconds) at real time ``real`` (default: now)."""
        real = time.time() if real is None else real
        return self.start.timestamp() + self.rate * (real - self._made)

    def now(self) -> datetime:
        """The fake time now, in UTC."""
        return datetime.fromtimestamp(self.epoch(), timezone.utc)

    def real_seconds(self, fake_seconds: float) -> float:
        """How many real seconds ``fake_seconds`` of this clock take."""
        return fake_seconds / self.rate

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: ``os.environ``) with this clock, for a process started right now."""
        remove_stale_segments()
        env = dict(os.environ if base is None else base)
        real = time.time()
        offset = self.epoch(real) - real
        preload = [str(LIBFAKETIME), *filter(None, env.get("LD_PRELOAD", "").split(":"))]
        python_path = [str(self.site_dir), *filter(None, env.get("PYTHONPATH", "").split(":"))]
        env.update(
            LD_PRELOAD=":".join(preload),
            FAKETIME=f"{offset:+.3f} x{self.rate:g}",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            FAKETIME_FORCE_MONOTONIC_FIX="0",
            PYTHONPATH=":".join(python_path),
        )
        return env


class FakeClockZooKeeper(ZooKeeperServer):
    """A :class:`ZooKeeperServer` whose JVM reads ``clock`` (set ``clock`` before starting).

    A JVM on libfaketime exits slowly on SIGTERM (seconds): :meth:`kill` a throwaway one.
    """

    clock: FakeClock | None = None

    def launch(self) -> None:
        """Start the JVM on the fake clock without waiting for it to serve."""
        if self.clock is None:
            raise RuntimeError("FakeClockZooKeeper: set clock before starting it")
        if self.is_running:
            raise RuntimeError(f"ZooKeeper on port {self.port} is already running")
        self._write_config()
        with open(self.log_path, "ab") as log:
            log.write(f"==== launching at {time.time():.3f} on a fake clock\n".encode())
        self._proc = LoggedProcess(
            self.command(), self.log_path, cwd=self.base_dir, env=self.clock.env()
        )
        _live_processes.add(self._proc)

    def stop(self, timeout: float = 10) -> int | None:
        """As :meth:`ZooKeeperServer.stop`, then remove libfaketime's segments left behind."""
        returncode = super().stop(timeout)
        remove_stale_segments()
        return returncode

    def kill(self) -> int | None:
        """As :meth:`ZooKeeperServer.kill`, then remove libfaketime's segments left behind."""
        returncode = super().kill()
        remove_stale_segments()
        return returncode
