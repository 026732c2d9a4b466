"""What a beat logs while ZooKeeper is away: its own lines, with backoff; no kazoo chatter.

Live ``celery beat`` processes against a private ZooKeeper that the tests stop and start.
"""

from __future__ import annotations

import itertools
import logging
import re

from kazoo.client import KazooClient

from beatleader.election.leader import LeaderElection
from beatleader.zk.log import KAZOO_LOGGER, KazooLogFilter, kazoo_logger
from tests.cluster import ENTRY, every, schedule_env, wait_for_messages
from tests.harness import FilesystemBroker, free_port, wait_for

#: kazoo's per-attempt reconnect warnings (one a second or more while ZooKeeper is down).
CHATTER = r"Connection dropped|Connection time-out|Transition to CONNECTING|Connecting to "


def _env(server) -> dict[str, str]:
    return {
        **schedule_env(**{ENTRY: every(1)}),
        "BEATLEADER_ZK_HOSTS": server.hosts,
        "BEATLEADER_SESSION_TIMEOUT": "2",
    }


def test_an_outage_is_logged_by_beatleader_with_doubling_pauses_and_no_kazoo_chatter(
    beats, private_zk_server, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    beat = beats(env=_env(private_zk_server))
    wait_for_messages(broker, ENTRY, 2, timeout=30)
    private_zk_server.stop()
    # "waiting" lines after 2, 4, 8 s of outage (LeaderElection.waiting_log_first, doubling)
    beat.wait_for_log(r"waiting for ZooKeeper at \S+ \(\d+ s so far\)", timeout=30, count=3)
    private_zk_server.start()
    beat.wait_for_log(r"beatleader: ZooKeeper connection CONNECTED", timeout=30, count=2)

    waits = [int(m[1]) for m in beat.log_matches(r"waiting for ZooKeeper at \S+ \((\d+) s so far")]
    assert waits[0] >= 2 and all(b >= 2 * a - 1 for a, b in itertools.pairwise(waits)), waits
    assert not beat.log_matches(CHATTER), beat.log_tail(60)
    assert len(beat.log_matches(r"beatleader: ZooKeeper connection SUSPENDED")) == 1
    assert beat.alive


def test_the_filter_steps_aside_when_the_application_sets_the_level(caplog) -> None:
    log = kazoo_logger()
    assert sum(isinstance(f, KazooLogFilter) for f in kazoo_logger().filters) == 1
    with caplog.at_level(logging.INFO, logger=KAZOO_LOGGER):  # sets the level: everything shows
        log.warning("Connection dropped: %s", "socket closed")
        log.info("Connecting to %s(%s):%s, use_ssl: %r", "h", "h", 1, False)
    assert len(caplog.records) == 2


def test_by_default_chatter_is_dropped_errors_pass_other_warnings_once_a_minute(caplog) -> None:
    log = kazoo_logger()
    assert log.level == logging.NOTSET
    with caplog.at_level(logging.DEBUG):  # the root level, as celery's --loglevel sets it
        for _ in range(5):
            log.warning("Connection dropped: %s", "socket closed")
            log.warning("Transition to CONNECTING")
            log.info("Zookeeper connection established, state: %s", "CONNECTED")
            log.warning("Cannot resolve %s: %s", "zk9", "Name or service not known")
            log.error("Unhandled exception in connection loop")
    shown = [r.getMessage() for r in caplog.records if r.name == KAZOO_LOGGER]
    assert sum(bool(re.match("Cannot resolve", m)) for m in shown) <= 1
    assert shown.count("Unhandled exception in connection loop") == 5
    assert not [m for m in shown if re.match(CHATTER + "|Zookeeper connection", m)]


class _FastWaitingLog(LeaderElection):
    waiting_log_first = 0.05
    waiting_log_max = 0.2


def test_waiting_lines_double_then_come_at_most_once_per_max_pause(caplog) -> None:
    """A narrow unit test on timing only: a client that never connects (nothing listens)."""
    client = KazooClient(hosts=f"127.0.0.1:{free_port()}")  # never started: never connected
    election = _FastWaitingLog(client, "/unused", b"x")
    with caplog.at_level(logging.WARNING, logger="beatleader.election"):
        election.start()
        try:
            wait_for(lambda: _waited(caplog) and _waited(caplog)[-1] >= 2.0, 10, message="2 s")
        finally:
            election.stop()
            election.join(5)
    waited = _waited(caplog)
    pauses = [b - a for a, b in itertools.pairwise(waited)]
    assert waited[0] >= 0.05
    assert all(p <= 0.2 + 0.15 for p in pauses), pauses  # never longer than max (+ wake slack)
    assert all(p >= 0.2 - 0.05 for p in pauses[3:]), pauses  # never more often than max
    assert len(waited) <= 2.0 / 0.2 + 5, waited


def _waited(caplog) -> list[float]:
    """The exact seconds-so-far of every "waiting for ZooKeeper" record (the text rounds them)."""
    return [
        float(r.args[1])
        for r in caplog.records
        if "waiting for ZooKeeper" in str(r.msg) and isinstance(r.args, tuple)
    ]
