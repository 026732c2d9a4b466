"""status of never-run entries, the different-app ERROR, and prune, with real beat processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.cluster import ENTRY, every, schedule_env
from tests.harness import REPO_ROOT, contenders, entry_state, free_port, wait_for
from tests.security import AUTH, as_env
from tests.test_metrics import try_scrape, value

DAILY = "daily at 03:00"


def cli(zk_server: Any, zk_root: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args]
    command += ["--zk-hosts", zk_server.hosts, "--path", zk_root]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _next_3am(now: datetime) -> datetime:
    today = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return today if today > now else today + timedelta(days=1)


def test_status_lists_a_never_run_crontab_entry_with_its_schedule_and_next_due(
    beats, zk_server, zk_client, zk_root
) -> None:
    beats(env=schedule_env(**{ENTRY: every(1), DAILY: {"crontab": "0 3 * * *"}}))
    wait_for(lambda: entry_state(zk_client, zk_root, ENTRY), 30, message="a first run")

    result = cli(zk_server, zk_root, "status", "--json")
    now = datetime.now(timezone.utc)

    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)["entries"]}
    daily = entries[DAILY]
    assert (daily["stored"], daily["scheduled"], daily["last_run_at"]) == (False, True, None)
    assert daily["schedule"] == "crontab 0 3 * * *" and daily["task"] == "tests.app.record"
    assert datetime.fromisoformat(daily["next_due"]) == _next_3am(now)
    ticking = entries[ENTRY]
    assert ticking["schedule"] == "every 1s" and ticking["stored"] is True
    last = datetime.fromisoformat(ticking["last_run_at"])
    assert datetime.fromisoformat(ticking["next_due"]) == (last + timedelta(seconds=1)).replace(
        microsecond=0
    )

    table = cli(zk_server, zk_root, "status")
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if DAILY in x)
    assert "crontab 0 3 * * *" in line and "never" in line
    assert max(len(x) for x in table.stdout.splitlines()) <= 100
    wide = cli(zk_server, zk_root, "status", "--wide")
    assert "tests.app.record" in wide.stdout and "WRITTEN BY" in wide.stdout


def test_a_typo_in_path_exits_2_and_lists_the_paths_that_exist(
    beats, zk_server, zk_client, zk_root
) -> None:
    beats(env=schedule_env(**{ENTRY: every(1)}))
    wait_for(lambda: contenders(zk_client, zk_root), 30, message="a contender")

    typo = cli(zk_server, zk_root + "x", "status")
    check = cli(zk_server, zk_root + "x", "status", "--check")

    for result in (typo, check):
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not exist" in lines[0], result.stderr
        assert zk_root in lines[0]


def test_two_apps_on_one_path_are_an_error_in_both_logs_a_warning_and_a_metric(
    beats, zk_server, zk_client, zk_root
) -> None:
    ports = [free_port(), free_port()]
    env = schedule_env(**{ENTRY: every(1)})
    first = beats(env={**env, "BEATLEADER_METRICS_PORT": str(ports[0])})
    wait_for(lambda: contenders(zk_client, zk_root), 30, message="the first app contends")
    other = {**env, "TEST_APP_NAME": "another_app", "BEATLEADER_METRICS_PORT": str(ports[1])}
    second = beats(env=other)

    error = r"ERROR.*another app, '(another_app|beatleader_tests)', contends on"
    first.wait_for_log(error, timeout=30)
    second.wait_for_log(error, timeout=30)
    assert "'another_app'" in first.log_matches(error)[0].group(0)
    assert "'beatleader_tests'" in second.log_matches(error)[0].group(0)

    status = cli(zk_server, zk_root, "status", "--json")
    warnings = json.loads(status.stdout)["warnings"]
    assert any("different apps" in w and "another_app" in w for w in warnings), warnings

    def problems(port: int) -> float | None:
        samples = try_scrape(port)
        found = samples and value(
            samples, "beatleader_problems_total", path=zk_root, kind="app-mismatch"
        )
        return found or None

    for port in ports:
        assert wait_for(lambda p=port: problems(p), 20, message=f"the metric on {port}") == 1


def _celery_prune(zk_server: Any, zk_root: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BEATLEADER_ZK_HOSTS": zk_server.hosts, "BEATLEADER_PATH": zk_root}
    command = [sys.executable, "-m", "celery", "-A", "tests.app", "beatleader", "prune", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=REPO_ROOT
    )


def test_prune_removes_only_the_state_of_removed_entries(
    beats, zk_server, zk_client, zk_root
) -> None:
    old = beats(env=schedule_env(**{ENTRY: every(1), "removed": every(1)}))
    wait_for(lambda: entry_state(zk_client, zk_root, "removed"), 30, message="removed ran")
    old.close()
    wait_for(lambda: not contenders(zk_client, zk_root), 30, message="the old release gone")

    nobody = cli(zk_server, zk_root, "prune", "--dry-run")
    assert nobody.returncode == 1 and "no instance" in nobody.stderr
    beats(env=schedule_env(**{ENTRY: every(1)}))
    wait_for(lambda: contenders(zk_client, zk_root), 30, message="the new release contends")

    dry = cli(zk_server, zk_root, "prune", "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "would remove removed\n"), dry.stderr
    assert entry_state(zk_client, zk_root, "removed") is not None
    via_celery = _celery_prune(zk_server, zk_root, "--dry-run")
    assert via_celery.stdout == "would remove removed\n", via_celery.stderr

    pruned = cli(zk_server, zk_root, "prune")
    assert (pruned.returncode, pruned.stdout) == (0, "removed removed\n"), pruned.stderr
    assert entry_state(zk_client, zk_root, "removed") is None
    assert entry_state(zk_client, zk_root, ENTRY) is not None
    again = cli(zk_server, zk_root, "prune")
    assert again.returncode == 0 and again.stdout.startswith("nothing to prune")


def test_prune_refuses_while_instances_run_different_schedules(
    beats, zk_server, zk_client, zk_root
) -> None:
    beats(env=schedule_env(**{ENTRY: every(1), "stale": every(1)}))
    wait_for(lambda: entry_state(zk_client, zk_root, "stale"), 30, message="stale ran")
    beats(env=schedule_env(**{ENTRY: every(1)}))
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="2 contenders")
    zk_client.create(f"{zk_root}/entries/gone", b"{}")  # scheduled by neither

    refused = cli(zk_server, zk_root, "prune")

    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "different schedules" in lines[0], refused.stderr
    assert entry_state(zk_client, zk_root, "gone") is not None
    forced = cli(zk_server, zk_root, "prune", "--force")
    assert (forced.returncode, forced.stdout) == (0, "removed gone\n"), forced.stderr
    assert entry_state(zk_client, zk_root, "stale") is not None  # the old release has it


def test_prune_of_a_tree_with_digest_acls_needs_the_credentials(
    beats, zk_server, zk_client
) -> None:
    root = f"/bltest-secure/{uuid.uuid4().hex}/app"
    auth = {"BEATLEADER_PATH": root, **as_env({"zk_auth": AUTH})}
    old = beats(env={**schedule_env(**{ENTRY: every(1), "removed": every(1)}), **auth})
    wait_for(lambda: entry_state(zk_client, root, "removed"), 30, message="removed ran")
    old.close()
    wait_for(lambda: not contenders(zk_client, root), 30, message="the old release gone")
    beats(env={**schedule_env(**{ENTRY: every(1)}), **auth})
    wait_for(lambda: contenders(zk_client, root), 30, message="the new release contends")

    dry = cli(zk_server, root, "prune", "--dry-run")  # world readable: listing needs no identity
    refused = cli(zk_server, root, "prune")
    assert (dry.returncode, dry.stdout) == (0, "would remove removed\n"), dry.stderr
    assert refused.returncode == 2 and "NoAuthError" in refused.stderr
    assert "--zk-auth" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert entry_state(zk_client, root, "removed") is not None

    done = cli(zk_server, root, "prune", "--zk-auth", AUTH)
    assert (done.returncode, done.stdout) == (0, "removed removed\n"), done.stderr
    assert entry_state(zk_client, root, "removed") is None
