"""A run of mixed faults on the leader, one after another: never twice, never two senders at once.

Seeded, so a failure can be replayed: SIGKILL, SIGTERM, and SIGSTOP past the session (then
SIGCONT) of whichever instance leads, with a replacement started for every instance that died.
"""

from __future__ import annotations

import itertools
import random

from tests.cluster import (
    ENTRY,
    assert_runs_at_least_once,
    first_sends,
    now_ms,
    one_second_env,
    sender_pid,
    wait_for_messages,
    wait_for_new_leader,
)
from tests.harness import BeatProcess, contenders, wait_for

SESSION_TIMEOUT = 2.0  # conftest's BEATLEADER_SESSION_TIMEOUT
ROUNDS = 6
SEED = 20261127


def _fault(leader: BeatProcess, fault: str, client, root: str) -> None:
    """Apply ``fault`` to the leader and wait until another instance leads."""
    if fault == "pause":
        leader.pause()
        wait_for_new_leader(client, root, leader.pid, timeout=SESSION_TIMEOUT + 10)
        leader.resume()
    else:
        getattr(leader, fault)()
        wait_for_new_leader(client, root, leader.pid, timeout=SESSION_TIMEOUT + 10)
        leader.wait_exit(15)


def test_mixed_faults_on_the_leader_never_send_a_run_twice(
    beats, sending_cluster, zk_client, zk_root
) -> None:
    broker = sending_cluster.broker
    alive = list(sending_cluster.processes)
    faults = random.Random(SEED).choices(["kill", "terminate", "pause"], k=ROUNDS)
    for fault in faults:
        leader_pid = contenders(zk_client, zk_root)[0]["pid"]
        leader = next(p for p in alive if p.pid == leader_pid)
        _fault(leader, fault, zk_client, zk_root)
        if not leader.alive:
            alive.remove(leader)
            alive.append(beats(env=one_second_env()))
        wait_for(lambda: len(contenders(zk_client, zk_root)) == 3, 20, message="3 contenders")
        wait_for_messages(broker, ENTRY, 2, timeout=15, after_ms=now_ms())

    crashes = sum(fault != "terminate" for fault in faults)
    # a crashed or paused leader's last run is not marked yet: its successor republishes it
    assert_runs_at_least_once(broker.for_entry(ENTRY), zk_root, ENTRY, max_duplicates=crashes)
    messages = first_sends(broker.for_entry(ENTRY))
    gaps = [(b.sent_ms - a.sent_ms) / 1000 for a, b in itertools.pairwise(messages)]
    assert min(gaps) >= 0.5, f"two sends {min(gaps):.3f} s apart: two senders at once"
    assert len({sender_pid(m) for m in messages}) >= 2
    assert all(p.alive for p in alive)
