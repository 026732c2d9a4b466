"""``status`` shows how far the leader's clock is from ZooKeeper's: skew is shown, never obeyed."""

from __future__ import annotations

import json
import time

from beatleader.beat.planning import ServerClock
from beatleader.beat.state import StateStore
from beatleader.ops.status import read_status
from beatleader.zk import layout
from beatleader.zk.clocknode import clock_note, read_clock
from tests.cluster import ENTRY, every, schedule_env, wait_for_messages
from tests.harness import FilesystemBroker, wait_for

FAULTS = "tests.app.FaultScheduler"


def test_a_skewed_leader_is_shown_and_warned_about(beats, zk_client, zk_root, broker_dir) -> None:
    env = {**schedule_env(**{ENTRY: every(1)}), "TEST_CLOCK_SKEW": "45"}
    beats(env=env, scheduler=FAULTS)
    wait_for_messages(FilesystemBroker(broker_dir), ENTRY, 2, timeout=20)
    wait_for(lambda: read_clock(zk_client, zk_root) is not None, 10, message="a clock probe")

    status = read_status(zk_client, zk_root)
    assert status.clock is not None
    assert 43 <= status.clock.skew <= 47, status.clock
    assert any("ahead of ZooKeeper's" in w for w in status.warnings), status.warnings
    assert status.as_dict()["clock"]["skew"] == status.clock.skew


def test_a_sound_clock_gives_no_warning_and_garbage_reads_as_none(zk_client, zk_root) -> None:
    path = layout.clock_path(zk_root)
    zk_client.create(path, clock_note("me:1", time.time()), makepath=True)
    reading = read_clock(zk_client, zk_root)
    assert reading is not None and abs(reading.skew) < 5 and reading.identity == "me:1"
    assert not [w for w in read_status(zk_client, zk_root).warnings if "clock" in w]

    for garbage in (
        b"\xff",
        b"[]",
        b'{"identity": 1}',
        json.dumps({"local_time": "x"}).encode(),
        b'{"identity": "a", "local_time": NaN}',
        b'{"identity": "a", "local_time": true}',
        json.dumps({"identity": "a", "local_time": 10**400}).encode(),  # past a float
    ):
        zk_client.set(path, garbage)
        assert read_clock(zk_client, zk_root) is None, garbage
        assert read_status(zk_client, zk_root).clock is None


def test_zookeeper_stamps_a_write_between_its_send_and_its_reply(zk_client, zk_root) -> None:
    """What ``ServerClock.sample`` rests on, on the suite's real ZooKeeper. It runs on this
    machine's clock, so the true offset is 0: each ``mtime`` (whole ms) lies between the send
    and the reply, and the offset taken from the send time lies in (-1 ms, the round trip]."""
    store = StateStore(zk_client, zk_root)
    clock = ServerClock(max_round_trip=10.0)
    longest = 0.0
    for _ in range(50):
        before = time.time()
        server = store.server_time()
        after = time.time()
        assert before - 0.001 < server <= after
        longest = max(longest, after - before)
        assert clock.sample(before, after, server)
        assert -0.001 < clock.offset <= longest + 0.001
