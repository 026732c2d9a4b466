"""``beatleader status`` / ``resign`` as real subprocesses against real beat processes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cluster import (
    ENTRY,
    assert_runs_at_least_once,
    every,
    now_ms,
    schedule_env,
    sender_pid,
    start_instances,
    wait_for_messages,
    wait_for_new_leader,
)
from tests.harness import FilesystemBroker, contenders, wait_for


def cli(zk_server, zk_root: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args]
    command += ["--zk-hosts", zk_server.hosts, "--path", zk_root]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_status_names_the_process_that_is_actually_sending(
    beats, zk_server, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    start_instances(beats, zk_client, zk_root, 3, schedule_env(**{ENTRY: every(1)}))
    messages = wait_for_messages(broker, ENTRY, 2, timeout=20)

    result = cli(zk_server, zk_root, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["leader"]["pid"] == sender_pid(messages[-1])
    assert next(c["pid"] for c in status["contenders"]) == status["leader"]["pid"]
    assert len(status["contenders"]) == 3
    entry = next(e for e in status["entries"] if e["name"] == ENTRY)
    assert entry["total_run_count"] >= 2
    assert status["warnings"] == []

    table = cli(zk_server, zk_root, "status")
    assert table.returncode == 0 and status["leader"]["identity"] in table.stdout
    assert ENTRY in table.stdout
    check = cli(zk_server, zk_root, "status", "--check")
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_resign_moves_leadership_and_the_old_leader_sends_nothing_after(
    sending_cluster, zk_server, zk_client, zk_root
) -> None:
    broker, old = sending_cluster.broker, sending_cluster.leader

    result = cli(zk_server, zk_root, "resign")
    # The CLI deletes the node some hundreds of ms after it starts; it returns once another
    # contender leads, so every run sent after it returned must be the new leader's.
    resigned_at = now_ms()
    assert result.returncode == 0, result.stderr
    new = wait_for_new_leader(zk_client, zk_root, old.pid, timeout=1)
    assert str(new["identity"]) in result.stdout and str(old.pid) in result.stdout
    wait_for(
        lambda: [c["pid"] for c in contenders(zk_client, zk_root)][-1] == old.pid,
        5,
        message="the old leader queues again at the back",
    )
    wait_for_messages(broker, ENTRY, 3, timeout=10, after_ms=resigned_at)

    assert old.alive
    after = [m for m in broker.for_entry(ENTRY) if m.sent_ms > resigned_at + 100]
    assert {sender_pid(m) for m in after} == {new["pid"]}
    # the resigned leader cannot mark its last run (its fence is gone): republished at most once
    assert_runs_at_least_once(broker.for_entry(ENTRY), zk_root, ENTRY, max_duplicates=1)


def test_status_warns_when_instances_run_different_schedules(
    beats, zk_server, zk_client, zk_root
) -> None:
    old = beats(env=schedule_env(**{ENTRY: every(1)}))
    new = beats(env=schedule_env(**{ENTRY: every(1), "added in the new release": every(5)}))
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 20, message="2 contenders")
    for process in (old, new):  # the misconfiguration is an ERROR in the log of each of them
        process.wait_for_log(r"ERROR.*an instance with a different schedule contends on", 20)

    result = cli(zk_server, zk_root, "status", "--json")
    warnings = json.loads(result.stdout)["warnings"]
    assert any("schedule" in w.lower() for w in warnings), warnings
    assert result.returncode == 0


def test_exit_code_1_when_nobody_leads_and_2_when_unreachable(
    zk_server, zk_client, zk_root
) -> None:
    zk_client.ensure_path(f"{zk_root}/election")  # what instances that stopped leave behind
    nobody = cli(zk_server, zk_root, "status", "--check")
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert len(nobody.stderr.strip().splitlines()) == 1
    unreachable = subprocess.run(
        [sys.executable, "-m", "beatleader.cli", "status", "--zk-hosts", "127.0.0.1:1",
         "--timeout", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unreachable.returncode == 2
    assert "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1
