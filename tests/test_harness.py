"""Tests of the test harness itself: real ZooKeeper, redis, celery processes, broker parsing."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from celery.schedules import crontab, schedule
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from tests.app import RECORD_TASK, make_app, parse_schedule
from tests.conftest import ProcessFactory
from tests.harness import (
    BeatProcess,
    FilesystemBroker,
    RedisServer,
    WorkerProcess,
    ZooKeeperEnsemble,
    ZooKeeperServer,
    read_executions,
    wait_for,
)


def test_wait_for_returns_value_and_reports_last_value() -> None:
    values = iter([0, "", "ok"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.001) == "ok"
    with pytest.raises(AssertionError, match=r"never true .*last value: 0"):
        wait_for(lambda: 0, timeout=0.05, interval=0.01, message="never true")


def test_zookeeper_answers_four_letter_words(zk_server: ZooKeeperServer) -> None:
    assert zk_server.is_running
    assert zk_server.four_letter("ruok") == "imok"
    assert zk_server.mode() == "standalone"
    assert "zk_server_state\tstandalone" in zk_server.four_letter("mntr")
    assert zk_server.hosts == f"127.0.0.1:{zk_server.port}"


def test_connections_parse_cons(zk_server: ZooKeeperServer, zk_client: KazooClient) -> None:
    zk_client.ensure_path("/harness/cons")
    session_id = zk_client.client_id[0]
    [conn] = [c for c in zk_server.connections() if c.get("sid") == session_id]
    assert conn["ip"] == "127.0.0.1"
    assert isinstance(conn["port"], int)
    assert conn["lcxid"] > 0
    assert conn["recved"] >= 2 and conn["sent"] >= 2
    assert isinstance(conn["lop"], str) and len(conn["lop"]) == 4
    assert conn["to"] == 10000


def test_short_session_timeout_is_granted(zk_server: ZooKeeperServer) -> None:
    client = KazooClient(hosts=zk_server.hosts, timeout=0.8)
    client.start(timeout=10)
    try:
        # kazoo keeps the *requested* timeout; the granted one is visible in `cons`.
        assert client._session_timeout == 800
        granted = zk_server.session_timeout_ms(client.client_id[0])
        assert granted is not None and granted <= 1000
    finally:
        client.stop()
        client.close()


def test_restart_keeps_data_and_unexpired_sessions(private_zk_server: ZooKeeperServer) -> None:
    server = private_zk_server
    port = server.port
    # ZooKeeper opens its port before its database is loaded; a connect request in that window
    # hits a NullPointerException server-side and the socket is left open, so kazoo waits its
    # whole connect timeout (session timeout / number of hosts) while the restarted server's
    # session clock runs.  Naming the server twice halves that wait, so the retry lands in time.
    client = KazooClient(hosts=f"{server.hosts},{server.hosts}", timeout=10)
    client.start(timeout=10)
    try:
        session_id = client.client_id[0]
        client.create("/kept", b"data")
        client.create("/mine", b"", ephemeral=True)
        server.stop()
        assert not server.is_running
        wait_for(lambda: client.state != KazooState.CONNECTED, 10, message="client noticed")
        server.start()
        assert server.port == port
        wait_for(lambda: client.state == KazooState.CONNECTED, 15, message="client reconnected")
        assert client.client_id[0] == session_id
        assert client.get("/kept")[0] == b"data"
        assert client.exists("/mine") is not None
    finally:
        client.stop()
        client.close()


def test_kill_is_immediate(private_zk_server: ZooKeeperServer) -> None:
    private_zk_server.kill()
    assert not private_zk_server.is_running
    with pytest.raises(OSError):
        private_zk_server.four_letter("ruok", timeout=0.5)


def test_ensemble_forms_a_quorum(tmp_path: Path) -> None:
    ensemble = ZooKeeperEnsemble(tmp_path / "ensemble", size=3)
    ensemble.start()
    try:
        modes = sorted(s.mode() or "" for s in ensemble.servers)
        assert modes == ["follower", "follower", "leader"]
        client = KazooClient(hosts=ensemble.hosts, timeout=5)
        client.start(timeout=10)
        try:
            client.create("/quorum", b"1")
        finally:
            client.stop()
            client.close()
        for server in ensemble.servers:
            reader = KazooClient(hosts=server.hosts, timeout=5)
            reader.start(timeout=10)
            try:
                reader.sync("/quorum")
                assert reader.get("/quorum")[0] == b"1"
            finally:
                reader.stop()
                reader.close()
    finally:
        ensemble.stop()


def test_schedule_spec_parsing() -> None:
    spec = {
        "every second": {"every": 1},
        "nightly/é": {"crontab": "0 4 * * *", "task": "celery.backend_cleanup"},
        "expiring": {"every": 0.5, "options": {"expires": 3}},
    }
    entries = parse_schedule(json.dumps(spec))
    assert entries["every second"]["task"] == RECORD_TASK
    assert entries["every second"]["args"] == ["every second"]
    assert isinstance(entries["every second"]["schedule"], schedule)
    assert entries["every second"]["schedule"].run_every.total_seconds() == 1
    nightly = entries["nightly/é"]
    assert isinstance(nightly["schedule"], crontab)
    assert nightly["schedule"].hour == {4} and nightly["schedule"].minute == {0}
    assert nightly["task"] == "celery.backend_cleanup" and nightly["args"] == ["nightly/é"]
    assert entries["expiring"]["options"] == {"expires": 3}


def test_app_result_backend_and_max_interval(tmp_path: Path) -> None:
    app = make_app(
        {"TEST_RESULT_DIR": str(tmp_path), "TEST_MAX_INTERVAL": "0.5"}, set_as_current=False
    )
    assert app.conf.result_backend == f"file://{tmp_path}"
    assert app.conf.result_expires == 60
    assert app.conf.beat_max_loop_interval == 0.5
    assert not any(key.startswith("beatleader") for key in app.conf.changes)


def test_filesystem_broker_decodes_a_published_message(broker_dir: Path) -> None:
    app = make_app({"TEST_BROKER_DIR": str(broker_dir)}, set_as_current=False)
    before_ms = time.monotonic() * 1000
    result = app.send_task(RECORD_TASK, args=["x y/é"])
    after_ms = time.monotonic() * 1000
    broker = FilesystemBroker(broker_dir)

    [message] = broker.messages()
    assert message.task == RECORD_TASK
    assert message.task_id == result.id
    assert message.entry == "x y/é"
    assert before_ms - 1 <= message.sent_ms <= after_ms + 1
    assert message.queue == "celery"
    assert broker.count("x y/é") == 1 and broker.count("other") == 0
    assert broker.for_entry("x y/é") == [message]
    assert broker.duplicates() == []

    # The same task id twice (as a double-sending beat would do) is a duplicate.
    shutil.copy(message.path, broker_dir / f"{message.sent_ms + 5}_{uuid.uuid4()}.celery.msg")
    assert broker.duplicates() == [result.id]
    # A fresh half-written file is skipped, not an error.
    partial = broker_dir / f"{message.sent_ms + 9}_{uuid.uuid4()}.celery.msg"
    partial.write_text('{"bo')
    assert broker.count() == 2
    assert len(list(broker.message_files())) == 3


def test_beat_and_worker_processes_with_celerys_scheduler(
    beats: ProcessFactory[BeatProcess],
    workers: ProcessFactory[WorkerProcess],
    broker_dir: Path,
    execution_log: Path,
) -> None:
    env = {"TEST_SCHEDULE": json.dumps({"tick tock/ü": {"every": 0.3}}), "TEST_MAX_INTERVAL": "1"}
    beat = beats(env, scheduler="celery.beat:PersistentScheduler")
    worker = workers(env)
    broker = FilesystemBroker(broker_dir)
    beat.wait_started()
    worker.wait_ready()
    wait_for(lambda: broker.count("tick tock/ü") >= 3, 15, message="3 messages sent")
    assert "tick tock/ü" in beat.sent()
    executions = wait_for(lambda: read_executions(execution_log), 15, message="an execution")
    assert executions[0]["name"] == "tick tock/ü"
    assert executions[0]["pid"] == worker.pid
    sent_ids = {m.task_id for m in broker.messages()}
    assert {e["id"] for e in executions} <= sent_ids
    assert broker.duplicates() == []

    beat.pause()
    beat.resume()
    beat.terminate()
    assert beat.wait_exit(15) == 0
    assert not beat.alive
    worker.interrupt()
    worker.wait_exit(15)


def test_beat_process_failure_is_reported_at_once(beats: ProcessFactory[BeatProcess]) -> None:
    beat = beats(scheduler="no.such.module:Scheduler")
    with pytest.raises(AssertionError, match="exited with"):
        beat.wait_for_log("never printed", timeout=30)
    assert beat.wait_exit(5) != 0


def test_redis_server_pings(redis_server: RedisServer) -> None:
    assert redis_server.ping()
    assert redis_server.url.startswith("redis://127.0.0.1:")
