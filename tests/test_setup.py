"""The README's main setup: ``beat_scheduler = "beatleader"`` in the app's configuration, then
plain ``celery beat`` (no ``-S``) or ``celery worker -B`` (no ``--scheduler``) on every instance.
"""

from __future__ import annotations

import urllib.request

from tests.cluster import (
    ENTRY,
    assert_exact_runs,
    one_second_env,
    sender_pid,
    wait_for_messages,
)
from tests.harness import CeleryProcess, FilesystemBroker, contenders, free_port, wait_for


def _env(beat_env: dict[str, str]) -> dict[str, str]:
    return {**beat_env, **one_second_env(), "TEST_BEAT_SCHEDULER": "beatleader"}


def test_beat_scheduler_setting_with_plain_celery_beat(
    tmp_path, beat_env, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    procs = [
        CeleryProcess(
            ["beat", "--loglevel=INFO", "--schedule", str(tmp_path / f"beat-{i}.db")],
            tmp_path,
            _env(beat_env),
            name=f"plain-beat-{i}",
        )
        for i in range(2)
    ]
    try:
        wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="2 contenders")
        messages = wait_for_messages(broker, ENTRY, 3, timeout=20)
        assert {sender_pid(m) for m in messages} == {contenders(zk_client, zk_root)[0]["pid"]}
        assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)
    finally:
        for proc in procs:
            proc.close()


def test_beat_scheduler_setting_with_worker_dash_b(
    tmp_path, beat_env, zk_client, zk_root, broker_dir
) -> None:
    """Also: the beat that ``-B`` forks serves the metrics port."""
    broker = FilesystemBroker(broker_dir)
    port = free_port()
    worker = CeleryProcess(
        [
            "worker",
            "-B",
            "--pool=solo",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--schedule",
            str(tmp_path / "w.db"),
        ],
        tmp_path,
        {**_env(beat_env), "BEATLEADER_METRICS_PORT": str(port)},
        name="worker-b",
    )
    try:
        wait_for(lambda: len(contenders(zk_client, zk_root)) == 1, 30, message="1 contender")
        wait_for_messages(broker, ENTRY, 2, timeout=20)
        assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert f'beatleader_is_leader{{path="{zk_root}"}} 1.0' in text
    finally:
        worker.close()
