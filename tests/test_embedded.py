"""EmbeddedBeat in this test process against a real ZooKeeper.

Several beats in one process stand for several web app instances: each runs on its own Celery app
instance (one beat per app per process is the rule), with its own identity.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from beatleader import ConfigError, EmbeddedBeat, Scheduler
from tests.harness import REPO_ROOT, ZooKeeperServer, contenders, free_port, leader, wait_for

#: Long, so that a handover faster than this proves the session was closed, not expired.
SESSION_TIMEOUT = 10.0
#: Generous bound for "at once" on a loaded two-core machine.
PROMPT = 2.0

MakeBeat = Callable[..., EmbeddedBeat]


def _celery_app() -> Celery:
    """A fresh app whose one entry is due only in a minute, so a leader sleeps between ticks."""
    app = Celery("embedded_tests", broker="memory://", set_as_current=False)
    app.conf.beat_schedule = {"minutely": {"task": "embedded_tests.noop", "schedule": 60.0}}
    return app


@pytest.fixture
def make_beat(zk_server: Any, zk_root: str) -> Iterator[MakeBeat]:
    """Build (not start) EmbeddedBeats on fresh Celery apps, pointed at the test ZooKeeper."""
    made: list[EmbeddedBeat] = []

    def make(app: Celery | None = None, **overrides: Any) -> EmbeddedBeat:
        settings = {"zk_hosts": zk_server.hosts, "path": zk_root, **overrides}
        settings.setdefault("session_timeout", SESSION_TIMEOUT)
        beat = EmbeddedBeat(app or _celery_app(), **settings)
        made.append(beat)
        return beat

    yield make
    for beat in made:
        beat.stop()


def _beat_threads() -> int:
    return sum(t.name == "beatleader-beat" for t in threading.enumerate())


def _identities(zk_client: Any, zk_root: str) -> list[str]:
    return [c["identity"] for c in contenders(zk_client, zk_root)]


def _three_with_one_leader(make_beat: MakeBeat, zk_client: Any, zk_root: str) -> list[EmbeddedBeat]:
    beats = [make_beat(identity=f"web-{i}").start() for i in range(3)]
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 3, 20, message="three contenders")
    wait_for(lambda: sum(b.is_leader for b in beats) == 1, 20, message="exactly one leads")
    return beats


def test_exactly_one_of_three_leads(make_beat, zk_client, zk_root) -> None:
    beats = _three_with_one_leader(make_beat, zk_client, zk_root)
    leading = [b for b in beats if b.is_leader]
    assert len(leading) == 1
    first = leader(zk_client, zk_root)
    assert first is not None and first["identity"] == leading[0].settings.identity
    for i, beat in enumerate(beats):
        assert beat.status() == {
            "running": True,
            "leader": beat is leading[0],
            "identity": f"web-{i}",
            "path": zk_root,
            "zk_connected": True,
            "pid": os.getpid(),
        }


def test_stopping_the_leader_hands_over_at_once(make_beat, zk_client, zk_root) -> None:
    beats = _three_with_one_leader(make_beat, zk_client, zk_root)
    old = next(b for b in beats if b.is_leader)
    others = [b for b in beats if b is not old]
    began = time.monotonic()
    old.stop()  # the leader is sleeping until its entry is due, a minute from now
    assert time.monotonic() - began < PROMPT
    wait_for(lambda: sum(b.is_leader for b in others) == 1, PROMPT, message="another one leads")
    assert time.monotonic() - began < SESSION_TIMEOUT / 2  # closed, not expired
    assert old.settings.identity not in _identities(zk_client, zk_root)
    assert len(_identities(zk_client, zk_root)) == 2
    assert old.status()["running"] is False
    assert old.is_leader is False


def test_stopping_a_waiting_follower_is_prompt(make_beat, zk_client, zk_root) -> None:
    beats = _three_with_one_leader(make_beat, zk_client, zk_root)
    follower = next(b for b in beats if not b.is_leader)
    began = time.monotonic()
    follower.stop()  # blocked in tick on the election, for up to celery's 300 s max interval
    assert time.monotonic() - began < PROMPT
    assert follower.settings.identity not in _identities(zk_client, zk_root)
    assert _beat_threads() == 2


def test_start_and_stop_are_idempotent(make_beat, zk_client, zk_root) -> None:
    threads = _beat_threads()
    beat = make_beat()
    assert beat.start() is beat
    assert beat.start() is beat
    assert _beat_threads() == threads + 1
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 1, 20, message="one contender")
    beat.stop()
    beat.stop()
    assert contenders(zk_client, zk_root) == []
    assert beat.status()["running"] is False
    assert _beat_threads() == threads
    beat.start()  # and it can start again
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 1, 20, message="contends again")


def test_context_manager_starts_and_stops(make_beat, zk_client, zk_root) -> None:
    with make_beat() as beat:
        assert beat.status()["running"] is True
        wait_for(lambda: beat.is_leader, 20, message="the only beat leads")
    assert contenders(zk_client, zk_root) == []
    assert beat.status()["running"] is False


@pytest.mark.parametrize(
    ("setting", "value"),
    [("zk_hosts", "not a host"), ("path", "relative/path"), ("session_timeout", "soon")],
)
def test_a_bad_setting_raises_config_error_at_construction(setting: str, value: str) -> None:
    threads = _beat_threads()
    with pytest.raises(ConfigError) as raised:
        EmbeddedBeat(_celery_app(), **{setting: value})
    message = str(raised.value)
    assert "\n" not in message
    assert setting in message and repr(value) in message
    assert _beat_threads() == threads


def test_unreachable_zookeeper_never_reaches_the_caller(make_beat, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="beatleader")
    port = free_port()  # nothing listens there (yet)
    beat = make_beat(zk_hosts=f"127.0.0.1:{port}")
    began = time.monotonic()
    assert beat.start() is beat
    assert time.monotonic() - began < 0.5
    wait_for(lambda: "waiting for ZooKeeper" in caplog.text, 20, message="it says it waits")
    status = beat.status()
    assert (status["running"], status["zk_connected"], status["leader"]) == (True, False, False)

    with ZooKeeperServer(tmp_path / "late-zk", port=port):  # ZooKeeper comes up later
        wait_for(lambda: beat.is_leader, 30, message="it connects and leads once ZK is up")
        assert beat.status()["zk_connected"] is True
        beat.stop()


def test_zookeeper_lost_later_never_reaches_the_caller(make_beat, private_zk_server) -> None:
    beat = make_beat(zk_hosts=private_zk_server.hosts, session_timeout=4).start()
    wait_for(lambda: beat.is_leader, 20, message="it leads")
    private_zk_server.stop()
    wait_for(lambda: not beat.status()["zk_connected"], 20, message="it sees the connection lost")
    status = beat.status()
    assert (status["running"], status["leader"]) == (True, False)
    private_zk_server.start()
    wait_for(lambda: beat.is_leader, 30, message="it leads again once ZooKeeper is back")


def test_stop_while_zookeeper_is_unreachable_is_prompt(make_beat) -> None:
    beat = make_beat(zk_hosts=f"127.0.0.1:{free_port()}").start()
    wait_for(lambda: beat.status()["running"], 5, message="the beat thread runs")
    began = time.monotonic()
    beat.stop()
    assert time.monotonic() - began < PROMPT
    assert beat.status()["running"] is False


def test_a_second_start_for_the_same_app_is_a_noop(make_beat, zk_client, zk_root) -> None:
    app = _celery_app()
    threads = _beat_threads()
    first = make_beat(app).start()
    second = make_beat(app)  # Django calling ready() twice, or a server hook plus a factory
    assert second.start() is first
    assert _beat_threads() == threads + 1
    wait_for(lambda: first.is_leader, 20, message="the first leads")
    assert len(contenders(zk_client, zk_root)) == 1
    assert second.status() == first.status()
    assert second.is_leader is True

    elsewhere = make_beat(app, path=f"{zk_root}/other")  # another election: not equivalent
    assert elsewhere.start() is elsewhere
    assert _beat_threads() == threads + 2

    second.stop()  # one beat per app per process: stopping either stops it
    assert first.status()["running"] is False
    assert contenders(zk_client, zk_root) == []


def test_the_thread_restarts_after_an_unexpected_error(
    make_beat, zk_client, zk_root, monkeypatch, caplog
) -> None:
    original_tick = Scheduler.tick
    failures = iter([RuntimeError("boom")])

    def flaky_tick(self: Scheduler, *args: Any, **kwargs: Any) -> float:
        error = next(failures, None)
        if error is not None:
            raise error
        return original_tick(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "tick", flaky_tick)
    beat = make_beat()
    beat.restart_delay = 0.2
    beat.start()
    wait_for(lambda: "embedded beat failed; restarting" in caplog.text, 20, message="logged")
    wait_for(lambda: beat.is_leader, 20, message="the restarted loop leads")
    assert beat.status()["running"] is True
    assert len(contenders(zk_client, zk_root)) == 1  # the failed loop's session was closed


def test_a_beat_left_running_is_stopped_at_interpreter_exit(zk_server, zk_client, zk_root) -> None:
    script = (
        "import sys; from celery import Celery; from beatleader import EmbeddedBeat;"
        " from tests.harness import wait_for;"
        " beat = EmbeddedBeat(Celery('atexit_test'), zk_hosts=sys.argv[1], path=sys.argv[2],"
        " session_timeout=30).start();"
        " wait_for(lambda: beat.is_leader, 20)"  # and exit without stop()
    )
    done = subprocess.run(
        [sys.executable, "-c", script, zk_server.hosts, zk_root],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert contenders(zk_client, zk_root) == []  # released at exit, not expired 30 s later


def test_a_fork_restarts_the_beat_in_the_child(make_beat, zk_client, zk_root) -> None:
    beat = make_beat().start()  # default identity: host:pid
    wait_for(lambda: beat.is_leader, 20, message="the parent leads")
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(beat, status_w, go_r)
    os.close(status_w)
    os.close(go_r)
    try:
        child = json.loads(_read_all(status_r))
        assert child["pid"] == pid and child["running"] and child["zk_connected"]
        assert child["identity"].endswith(f":{pid}")
        wait_for(
            lambda: [c["pid"] for c in contenders(zk_client, zk_root)] == [os.getpid(), pid],
            20,
            message="parent and child each contend, the parent first",
        )
        assert beat.is_leader and beat.status()["zk_connected"]  # the parent's session is intact
    finally:
        os.write(go_w, b"stop")
        os.close(go_w)
        _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    assert [c["pid"] for c in contenders(zk_client, zk_root)] == [os.getpid()]
    assert beat.is_leader


def _child(beat: EmbeddedBeat, status_w: int, go_r: int) -> None:
    """In the forked child: report the beat's status once connected, stop it when told, exit."""
    code = 1
    try:
        status = wait_for(lambda: beat.status()["zk_connected"] and beat.status(), 20)
        os.write(status_w, json.dumps(status).encode())
        os.close(status_w)
        os.read(go_r, 4)
        beat.stop()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)
