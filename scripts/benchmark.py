#!/usr/bin/env python3
"""Benchmark beatleader against celery-redbeat and celery's PersistentScheduler, all in one run.

Run it from the repository root: ``python3 -m scripts.benchmark [--help]``.

Every figure printed is measured in this run, on this machine, against a ZooKeeper and a Redis
the script starts itself in a temporary directory, with real ``celery beat`` processes running
``scripts/bench_app.py`` (``tests.app`` plus measuring hooks); nothing is hard-coded. Phases,
one after the other:

1. **Timeline, beatleader xN** (``--instances`` 3, ``--seconds`` 180: about 170 steady sends,
   so that the lateness p99 is not simply the worst of a few dozen): one entry due every 1 s on
   kombu's filesystem broker. The clock starts after the first sends; at 1/3 of the run the
   leader gets SIGKILL, at 2/3 the new leader gets SIGTERM. The leader is the sender of the
   latest message; each signal goes ``--signal-phase`` seconds after one of its sends, so every
   scheduler is hit at the same point of its 1 s cycle.
2. **Timeline, redbeat xN**: the same with ``redbeat.RedBeatScheduler`` (Redis lock with
   ``redbeat_lock_timeout`` = beatleader's session timeout). ``beat_max_loop_interval`` is 1 s
   for every scheduler.
3. **PersistentScheduler**: one instance alone for ``--baseline-seconds`` (steady lateness),
   then N-1 more join on the same schedule and the duplicates are counted for
   ``--dup-seconds``. It has no failover to measure.
4. **Throughput** (for each count in ``--entries``, default 1,000 and 4,000: that many entries,
   each due every 1 s, Redis broker, no worker):
   beatleader xN vs one PersistentScheduler. After the first full round and ``--warmup``
   seconds, ``LLEN celery`` is sampled every 0.1 s for ``--throughput-seconds``; sends/s is its
   least-squares slope (the two endpoints alone are off by up to one burst of all entries).
   CPU per 1,000 sends: the beats' utime + stime (``/proc/<pid>/stat``, summed over every beat
   of the setup) read at the start and the end of that window / the sends queued in it x 1,000.
5. **Runtime entries** (``scripts/bench_runtime.py``; ``--only-runtime`` runs it alone): a
   leader takes over ``--runtime-definitions`` (10,000) definitions, new and with run state; the
   takeover time, the reads it sent, and the reads, requests and time of one update, one
   addition and one removal of a definition.
6. **Worker guard** (``scripts/bench/guard.py``; ``--only-guard`` runs it alone, 1.5 to
   2 minutes; ``--skip-guard``): ONE ``celery worker --pool prefork --concurrency 2`` (Redis
   broker, a trivial task) executes ``--guard-runs`` (2,000) pre-published distinct runs of 20
   entries with their real run ids and headers, unguarded, guarded with
   ``BEATLEADER_HISTORY_SIZE=0`` and guarded with the default history (20), ``--guard-rounds``
   (3) rounds in alternating order (``--guard-before REF``: also the guard of beatleader at
   REF). Executions/s from the first execution to the last (the median round), its ratio to
   the unguarded worker
   and of history 20 to history 0 (the bar: within 20 %), and the ZooKeeper requests per run
   (the server's ``mntr`` ``zk_packets_received`` over the phase / executions).
7. **Many contenders** (``scripts/bench/contenders.py``; ``--only-contenders`` runs it alone;
   ``--skip-contenders``): 3, 50 and ``--contenders`` (500) election contenders on one path
   (what an ``EmbeddedBeat`` in every web worker makes), each a session of its own: the
   requests one join and one leave cost all sessions together (ZooKeeper's ``cons``), the wall
   time of ``beatleader status``, and the takeover after a SIGKILL of the leader.
8. **Jitter** (``scripts/bench/jitter.py``; ``--only-jitter`` runs it alone, 3 to 4 minutes;
   ``--skip-jitter``): ONE ``celery beat -S beatleader`` with ``--jitter-entries`` (500) static
   entries on the hourly crontab ``M * * * *`` (``M``: the first whole minute at least 45 s
   away) and 500 more on ``M+1 * * * *`` with ``options.beatleader.jitter`` =
   ``--jitter-window`` (60 s), Redis broker, no worker: this process takes each message off the
   queue as it lands (``BRPOP``) and stamps it. For both sets side by side: the sends, first..last
   after the scheduled minute, the peak sends in any one second, the sends per sixth of the
   window and the fullest / mean bucket, the largest distance to each send's due time; then
   PASS / FAIL (without jitter within 2 s; with it the peak second at most a tenth of the sends,
   or 3 x the even rate in a short window, first..last over 80 % of the window, no empty
   bucket; every entry sent once).

``--before REF`` runs beatleader at REF beside this tree (timeline and throughput) and
PersistentScheduler in the same run, and prints issue 19's targets computed on those figures
(``scripts/bench/targets.py``).

What is measured. Send times are CLOCK_MONOTONIC ms at publication (the filesystem transport's
message file name; on Redis the ``bench_sent_ms`` header); the sender is celery's ``origin``
header ``gen<pid>@host``.

* failover latency: signal -> first send by another instance. Largest gap: the longest pause
  between consecutive sends from the last send before the signal to that first send of the
  successor (1,000 ms, one interval, is a seamless handoff).
* lateness against the due time: celery's interval schedule makes a run due at the entry's
  ``last_run_at`` + interval. ``bench_app`` records that due time inside the beat process when
  ``is_due()`` answers "due" and stamps the message at publication with ``now - due`` (the
  ``bench_late_ms`` header), so it includes everything between the due time and the publication
  (the loop's wake-up, beatleader's ZooKeeper commit, the broker write). Cross-check without any
  hook: gap between consecutive sends - interval (``last_run_at`` is stamped at the previous
  send). Steady state: sends outside the failover windows (signal -> successor's first send);
  gaps only between two sends of the same instance. Percentiles are nearest-rank.
* duplicates: sends less than half an interval after the entry's previous send (any instance);
  beatleader's deterministic task ids are also checked for repeats.
* throughput late > 1 s: sends in the window whose ``bench_late_ms`` exceeds 1,000 ms.

The machine may be shared and the numbers noisy: the load average is printed at start and end.

This file is the entry point; the code is in ``scripts/bench/`` (one module per concern: the
processes, each measured phase, the analysis of the recorded sends, the report, the command line;
see ``scripts/bench/__init__.py``).
"""

from __future__ import annotations

import sys

try:
    from scripts.bench.cli import main
except ModuleNotFoundError as exc:  # run as a file from elsewhere: no sys.path tricks here
    if (exc.name or "").partition(".")[0] not in ("scripts", "tests"):
        raise
    raise SystemExit(
        f"scripts/benchmark.py: {exc}; from the repository root: python3 -m scripts.benchmark"
    ) from None

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
