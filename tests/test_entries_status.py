"""Runtime entries seen by ``prune`` (their state is kept) and ``status`` (they are listed).

Real ZooKeeper (the suite's); a running instance is imitated by its contender and schedule nodes
(``tests.test_entries_api.publish_instance``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from beatleader.entries.api import EntryStore
from beatleader.ops.prune import plan_prune
from beatleader.ops.status import read_status
from beatleader.schedules.definitions import Definition
from beatleader.schedules.describe import PlannedEntry
from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from tests.test_entries_api import publish_instance

LAST = "2026-01-01T00:00:00+00:00"


def put_state(client: Any, root: str, *names: str) -> None:
    for name in names:
        state = EntryState(LAST, 2, "id", "leader").encode()
        client.create(layout.entry_path(root, name), state, makepath=True)


def test_prune_keeps_defined_and_paused_entries(zk_client, zk_root) -> None:
    store = EntryStore(zk_client, zk_root)
    publish_instance(zk_client, zk_root, {"static": PlannedEntry("static", "t", "every 5s", 5.0)})
    store.add("defined", task="t", every="5")
    store.add("disabled", task="t", every="5")
    store.pause("disabled")
    store.pause("static")
    put_state(zk_client, zk_root, "static", "defined", "disabled", "orphan", "removed")
    store.add("removed", task="t", every="5")
    store.remove("removed")  # its state stays until prune
    assert [s.name for s in plan_prune(zk_client, zk_root)] == ["orphan", "removed"]
    # a paused static entry gone from every schedule keeps its state while paused
    zk_client.create(layout.paused_entry_path(zk_root, "orphan"), b"{}")
    assert [s.name for s in plan_prune(zk_client, zk_root)] == ["removed"]


def test_status_lists_runtime_entries(zk_client, zk_root, zk_server) -> None:
    store = EntryStore(zk_client, zk_root)
    publish_instance(zk_client, zk_root, {"static": PlannedEntry("static", "t", "every 5s", 5.0)})
    store.add("iv", task="proj.iv", every="30s")
    store.add("off", task="proj.off", cron="0 9 * * *", timezone="Europe/Paris")
    store.pause("off")
    clash = Definition("t", {"every": 9.0}).validated().encode()  # written by hand: a clash
    zk_client.create(layout.definition_path(zk_root, "static"), clash)
    zk_client.create(layout.definition_path(zk_root, "junk"), b"\xff")
    put_state(zk_client, zk_root, "iv")
    status = read_status(zk_client, zk_root)
    entries = {e.name: e for e in status.entries}
    assert entries["iv"].plan is not None and entries["iv"].plan.schedule == "runtime every 30s"
    assert entries["iv"].next_due == "2026-01-01T00:00:30+00:00" and entries["iv"].scheduled
    assert entries["off"].plan.schedule == "runtime crontab 0 9 * * * (Europe/Paris) (paused)"  # type: ignore[union-attr]
    assert entries["off"].next_due is None
    assert entries["static"].plan.schedule == "every 5s"  # type: ignore[union-attr]
    assert entries["junk"].plan.schedule == "(invalid definition)"  # type: ignore[union-attr]
    assert not any("no running instance schedules" in w for w in status.warnings)
    command = [sys.executable, "-m", "beatleader.cli", "status", "--json"]
    command += ["--zk-hosts", zk_server.hosts, "--path", zk_root]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    listed = {e["name"]: e for e in json.loads(done.stdout)["entries"]}
    assert listed["iv"]["schedule"] == "runtime every 30s" and listed["iv"]["task"] == "proj.iv"
