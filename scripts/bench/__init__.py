"""The benchmark of ``python3 -m scripts.benchmark`` (the entry point, whose docstring says what
is measured and how), one module per concern:

``common``
    the schedulers compared, the entry and its interval, the header names, the clock, progress.
``analysis``
    recorded sends, signals and queue samples -> figures (failover latency, largest gap,
    lateness, duplicates, percentiles, sends/s, guarded executions/s); pure, unit-tested on
    literal samples.
``cluster``
    the processes: ZooKeeper, Redis, the fleet of ``celery beat``, the sends read back.
``timeline``
    failover timeline of a leader-elected cluster (beatleader, redbeat): SIGKILL, SIGTERM.
``persistent``
    celery's PersistentScheduler: one alone (lateness), then N at once (duplicates).
``throughput``
    many entries on the Redis broker: ``LLEN celery`` samples and the queued messages.
``guard``
    the worker guard's cost: one prefork worker draining pre-published runs, unguarded and
    guarded (history 0, history 20, optionally at a git ref); executions/s, ZooKeeper requests.
``jitter``
    500 entries on an hourly crontab without and with ``jitter``: one beat, every message taken
    off Redis as it lands; ``spread`` (pure, unit-tested) turns the arrivals into figures.
``compare``
    ``--before REF``: beatleader at a git ref beside this tree, the same phases alternating, and
    PersistentScheduler in the same run; prints issue 19's targets on those figures.
``targets``
    issue 19's targets (lateness, throughput, CPU per 1,000 sends) as PASS / FAIL on one run's
    figures; pure (``--before`` prints them).
``report``
    the table, ratios against PersistentScheduler and redbeat, details, legend, ``--json``.
``cli``
    the flags, the order of the phases, the work folder, ``main``.

The runtime entries part is ``scripts/bench_runtime.py`` and the app the beats run is
``scripts/bench_app.py`` (``celery -A bench_app``), as the report's legend says.
"""
