"""The benchmark's "runtime entries" part: 10,000 definitions on takeover, the cost of a change.

Run by ``scripts/benchmark.py`` (``--only-runtime`` runs this part alone, in well under 30 s).
A leader runs in the benchmark's process (``beatleader.Scheduler``, ``memory://`` broker, nothing
due) against the benchmark's own ZooKeeper, twice: with ``--runtime-definitions`` new definitions,
and with as many that have run (a run state each, as after a failover of a busy schedule). For each
it measures (``tests/runtime_support.measure_scale``):

* the takeover tick (every run state, every definition, the heap), and within it the time spent
  on the definitions (sending their reads, taking them, scheduling the entries) and in the run
  state's load (whose reads queue behind the definitions', sent first), with the nodes read
  and the requests that read them (``multiread``: up to 500 nodes a request on ZooKeeper 3.6+);
* for one update, one addition and one removal of a definition: the nodes the leader's client
  read, the requests the server counted for its session (``cons`` ``lcxid``), and the time from
  the write to the change applied (the leader ticking every 5 ms here; a ``celery beat`` loop
  ticks at most ``change_poll_interval`` = 1 s apart).

Its rows and ratios are printed by ``scripts/bench/report.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from beatleader.beat.scheduler import Scheduler
from beatleader.config import Settings
from tests.app import make_app
from tests.runtime_support import ScaleFigures, measure_scale

#: The issue's bound for loading 10,000 runtime entries on takeover.
TAKEOVER_TARGET_S = 5.0


@dataclass
class RuntimeResult:
    definitions: int
    #: New definitions, then definitions that have run.
    figures: list[ScaleFigures]


def run_runtime(zk: Any, count: int, progress: Any) -> RuntimeResult:
    figures = []
    for with_state in (False, True):
        label = "have-run" if with_state else "new"
        progress(f"runtime entries: {count:,} {label} definitions, takeover and changes")
        root = f"/bench/runtime-{label}"
        figures.append(measure_scale(zk, root, count, _scheduler_factory(zk, root), with_state))
    return RuntimeResult(count, figures)


def _scheduler_factory(zk: Any, root: str) -> Any:
    def make() -> Scheduler:
        app = make_app({"TEST_SCHEDULE": json.dumps({})}, set_as_current=False)
        settings = Settings.from_app(app, zk_hosts=zk.hosts, path=root, session_timeout=10.0)
        return Scheduler(app, beatleader_settings=settings)

    return make
