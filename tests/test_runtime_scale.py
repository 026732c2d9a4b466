"""10,000 runtime definitions: how long a takeover takes to read them, and the reads of a change.

A real ZooKeeper (the suite's); the leader runs in this process (``memory://`` broker; nothing
is due during the test), once over new definitions and once over definitions that have all run
(a run state each, read too). The issue's target is 5 s for the definitions; the bound asserted
here is twice that, for a loaded shared machine. Reads are counted twice: on the leader's kazoo
client (every get, listing and exists it sends) and on the server (the session's last request
number, ``cons``), so a request the client wrapper would miss shows up too. The figures are
printed (``-s``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from beatleader.beat.scheduler import Scheduler
from beatleader.config import Settings
from beatleader.observe import Observers
from tests.app import make_app
from tests.runtime_support import measure_scale

COUNT = 10_000
#: The issue's bound is 5 s on takeover; generous here for a loaded, shared 2-core machine.
TAKEOVER_BOUND_S = 10.0


@pytest.mark.slow
@pytest.mark.parametrize("with_state", [False, True], ids=["new", "have-run"])
def test_ten_thousand_definitions_load_on_takeover_and_a_change_costs_o1_reads(
    zk_server, zk_root, with_state: bool
) -> None:
    made: list[Any] = []

    def make() -> Scheduler:
        app = make_app({"TEST_SCHEDULE": json.dumps({})}, set_as_current=False)
        settings = Settings.from_app(
            app, zk_hosts=zk_server.hosts, path=zk_root, session_timeout=10.0
        )
        made.append(Scheduler(app, beatleader_settings=settings, beatleader_observers=Observers()))
        return made[-1]

    figures = measure_scale(zk_server, zk_root, COUNT, make, with_state)

    print(
        f"\n{COUNT:,} definitions{' with run state' if with_state else ''}: takeover "
        f"{figures.takeover_s:.2f} s (definitions {figures.definitions_load_s:.2f} s, run state "
        f"{figures.state_load_s:.2f} s), {figures.takeover_reads:,} reads in "
        f"{figures.takeover_requests:,} requests"
    )
    for change in figures.changes:
        print(
            f"  {change.what}: {change.reads} read(s), {change.requests} request(s), "
            f"applied {change.seconds * 1000:.0f} ms after the write"
        )
    assert figures.definitions_load_s < TAKEOVER_BOUND_S
    assert figures.takeover_s < TAKEOVER_BOUND_S * (2 if with_state else 1)
    reads_per_entry = 2 if with_state else 1  # its definition (and its run state)
    assert COUNT * reads_per_entry <= figures.takeover_reads < COUNT * reads_per_entry + 20
    # multi-reads of up to 500 nodes, SetWatches of up to 128 KB of paths, a few listings
    assert figures.takeover_requests < figures.takeover_reads / 100 + 40
    by_what = {change.what: change for change in figures.changes}
    assert by_what["update one"].reads == 1  # the changed node, nothing else
    assert by_what["add one"].reads == 3  # the listing, the new node, its run state
    assert by_what["remove one"].reads == 1  # the listing
    for change in figures.changes:
        # the server counted what the client sent (a clock probe or a mark may fall in the window)
        assert change.requests is None or change.requests == len(change.sent), change
        assert change.seconds < 1.0
