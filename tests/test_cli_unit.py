"""The operator CLI (``beatleader status`` / ``resign``) against a real ZooKeeper.

Contenders are simulated: each is a kazoo session of its own holding an ephemeral sequential node
with ContenderInfo JSON, exactly what a running scheduler publishes. No beat process runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kazoo.client import KazooClient

from beatleader.cli.main import CliError, Target, celery_command, cli, report_resign
from beatleader.config import Settings
from beatleader.ops.status import read_status, resign_leader, wait_for_leader
from beatleader.testing.localzk import ZooKeeperServer, free_port
from beatleader.zk.layout import (
    ContenderInfo,
    EntryState,
    entry_path,
    schedule_path,
)
from tests.harness import connected_client, contender_prefix

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def zk_hosts(zk_server: ZooKeeperServer) -> str:
    """``host:port`` of the suite's ZooKeeper."""
    return zk_server.hosts


@pytest.fixture(scope="module")
def zk(zk_hosts: str) -> Iterator[KazooClient]:
    with connected_client(zk_hosts) as client:
        yield client


@pytest.fixture
def root() -> str:
    return f"/beatleader-cli-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BEATLEADER_"):
            monkeypatch.delenv(name)


class Contenders:
    """Simulated instances: one kazoo session each, so closing it is an instance dying."""

    def __init__(self, hosts: str, root: str) -> None:
        self.hosts = hosts
        self.root = root
        self.sessions: list[KazooClient] = []

    def add(self, identity: str, fingerprint: str = "fp-a", data: bytes | None = None) -> str:
        session = KazooClient(hosts=self.hosts)
        session.start(timeout=15)
        self.sessions.append(session)
        pid = 1000 + len(self.sessions)
        info = ContenderInfo(identity, f"host-{identity}", pid, "0.1.0", "2024-01-01", fingerprint)
        payload = info.encode() if data is None else data
        path = session.create(
            contender_prefix(self.root), payload, ephemeral=True, sequence=True, makepath=True
        )
        return str(path)

    def close(self) -> None:
        for session in self.sessions:
            session.stop()
            session.close()


@pytest.fixture
def contenders(zk_hosts: str, root: str) -> Iterator[Contenders]:
    group = Contenders(zk_hosts, root)
    yield group
    group.close()


def put_entry(zk: KazooClient, root: str, name: str, runs: int = 3, task_id: str = "t-1") -> None:
    state = EntryState("2024-05-01T12:00:00+00:00", runs, task_id, "alpha", skipped_count=1)
    zk.create(entry_path(root, name), state.encode(), makepath=True)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert_no_traceback(result)
    return result


def assert_no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output


def assert_one_error_line(text: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("beatleader: "), text
    assert "Traceback" not in text


def where(zk_hosts: str, root: str) -> list[str]:
    return ["--zk-hosts", zk_hosts, "--path", root, "--timeout", "5"]


def subprocess_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "beatleader.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


# --- status ----------------------------------------------------------------------------------


def test_status_table_names_leader_queue_and_entries(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha")
    contenders.add("beta")
    put_entry(zk, root, "every minute", runs=42, task_id="task-42")

    result = run("status", *where(zk_hosts, root))

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Leader: alpha (host host-alpha, pid 1001)" in out
    assert out.index("alpha", out.index("Contenders")) < out.index("beta")
    assert "every minute" in out and "42" in out and "task-42" not in out  # --wide only
    assert "Warnings" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
    wide = run("status", "--wide", *where(zk_hosts, root)).stdout
    assert "task-42" in wide and "2024-05-01T12:00:00+00:00" in wide


def test_the_default_table_fits_100_columns_and_wide_cuts_nothing(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    long_identity = "worker-" + "x" * 60
    contenders.add(long_identity)
    long_name = "a very long entry name " * 4
    put_entry(zk, root, long_name, runs=3)

    narrow = run("status", *where(zk_hosts, root)).stdout
    wide = run("status", "--wide", *where(zk_hosts, root)).stdout

    assert max(len(line) for line in narrow.splitlines()[1:]) <= 100, narrow
    assert long_name not in narrow and long_name[:17] + "..." in narrow
    assert long_name.rstrip() in wide and long_identity in wide


def test_status_json_shape(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    leader_path = contenders.add("alpha")
    contenders.add("beta")
    put_entry(zk, root, "a/b c", runs=7)

    result = run("status", "--json", *where(zk_hosts, root))

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"leader", "contenders", "entries", "warnings"} <= set(doc)
    leader = doc["leader"]
    assert (leader["identity"], leader["host"], leader["pid"]) == ("alpha", "host-alpha", 1001)
    assert leader["node"] == leader_path.rsplit("/", 1)[1]
    ctime_ms = zk.get(leader_path)[1].ctime
    assert abs(_epoch(leader["since"]) - ctime_ms / 1000) < 0.002
    assert [c["identity"] for c in doc["contenders"]] == ["alpha", "beta"]
    assert doc["entries"] == [
        {
            "name": "a/b c",
            "last_run_at": "2024-05-01T12:00:00+00:00",
            "total_run_count": 7,
            "last_task_id": "t-1",
            "written_by": "alpha",
            "skipped_count": 1,
            "published": True,  # written without the field (before the outbox): reads as published
            "incarnation": None,  # written before incarnations
            "scheduled": None,  # the simulated contenders published no schedule
            "schedule": None,
            "task": None,
            "next_due": None,
            "every": None,
            "crontab": None,
            "timezone": None,
            "stored": True,
            "recent": [],  # the leader's run records: none written by this old-format state
            "last_outcome": None,  # no worker guard recorded a run
            "running": False,
            "last_record": None,
            "paused": None,  # no paused/ note
            "done": False,  # no run policy says it runs no more
        }
    ]
    assert doc["warnings"] == []


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_no_leader_exits_1_with_warning(zk: KazooClient, zk_hosts: str, root: str) -> None:
    put_entry(zk, root, "tick")

    table = run("status", *where(zk_hosts, root))
    as_json = run("status", "--json", *where(zk_hosts, root))
    check = run("status", "--check", *where(zk_hosts, root))

    assert table.exit_code == 1 and "Leader: none" in table.stdout
    assert "no leader" in table.stdout.split("Warnings:")[1]
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["leader"] is None and doc["contenders"] == []
    assert any("no leader" in w for w in doc["warnings"])
    assert check.exit_code == 1 and check.stdout == ""
    assert_one_error_line(check.stderr)


def test_check_is_quiet_on_success(zk_hosts: str, root: str, contenders: Contenders) -> None:
    contenders.add("alpha")
    result = run("status", "--check", *where(zk_hosts, root))
    assert result.exit_code == 0
    assert result.output == ""


def test_leader_gone_when_its_session_closes(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha")
    contenders.add("beta")
    contenders.sessions[0].stop()

    doc = json.loads(run("status", "--json", *where(zk_hosts, root)).stdout)

    assert doc["leader"]["identity"] == "beta"


def test_fingerprint_mismatch_warns(zk_hosts: str, root: str, contenders: Contenders) -> None:
    contenders.add("alpha", fingerprint="fp-old")
    contenders.add("beta", fingerprint="fp-new")

    result = run("status", "--json", *where(zk_hosts, root))

    assert result.exit_code == 0
    (warning,) = json.loads(result.stdout)["warnings"]
    assert "different schedules" in warning
    assert "fp-old: alpha" in warning and "fp-new: beta" in warning


def test_entries_no_schedule_holds_warn_only_when_schedules_are_published(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha", fingerprint="fp-a")
    put_entry(zk, root, "tick")
    put_entry(zk, root, "retired job")

    before = json.loads(run("status", "--json", *where(zk_hosts, root)).stdout)
    zk.create(schedule_path(root, "fp-a"), json.dumps(["tick"]).encode(), makepath=True)
    after = run("status", *where(zk_hosts, root))

    assert before["warnings"] == []
    warnings = after.stdout.split("Warnings:")[1]
    assert "'retired job'" in warnings and "'tick'" not in warnings


def test_unreadable_leader_heads_the_queue_but_is_not_a_sound_leader(
    zk_hosts: str, root: str, contenders: Contenders
) -> None:
    node = contenders.add("alpha", data=b"not json")

    result = run("status", "--json", *where(zk_hosts, root))
    check = run("status", "--check", *where(zk_hosts, root))

    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["leader"]["identity"] is None
    assert "no readable ContenderInfo" in doc["leader_problem"]
    assert any("no readable ContenderInfo" in w for w in doc["warnings"])
    assert check.exit_code == 1 and check.stdout == ""
    assert_one_error_line(check.stderr)
    assert os.path.basename(node) in check.stderr


def test_group_level_options_and_environment(
    zk_hosts: str, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha")

    group_level = run("--zk-hosts", zk_hosts, "--path", root, "status", "--check")
    from_env = run(
        "status", "--check", env={"BEATLEADER_ZK_HOSTS": zk_hosts, "BEATLEADER_PATH": root}
    )

    assert group_level.exit_code == 0 and group_level.output == ""
    assert from_env.exit_code == 0 and from_env.output == ""


# --- bad input and unreachable ZooKeeper: exit 2, one line, no traceback ---------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--zk-hosts", "a:b:c:notaport"],
        ["--zk-hosts", "127.0.0.1:2181", "--path", "noslash"],
        ["-A", "nosuchmodule"],
        ["-A", "os"],
    ],
    ids=["malformed-hosts", "path-without-slash", "unknown-app", "not-an-app"],
)
@pytest.mark.parametrize("command", ["status", "resign"])
def test_bad_input_exits_2(command: str, args: list[str]) -> None:
    result = run(command, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr)


def test_bad_environment_exits_2() -> None:
    result = run("status", env={"BEATLEADER_ZK_HOSTS": "a:b:c:notaport"})
    assert result.exit_code == 2
    assert "BEATLEADER_ZK_HOSTS" in result.stderr
    assert_one_error_line(result.stderr)


def test_unreachable_zookeeper_exits_2_within_timeout() -> None:
    started = time.monotonic()
    result = run("status", "--check", "--zk-hosts", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.exit_code == 2
    assert time.monotonic() - started < 5
    assert_one_error_line(result.stderr)
    assert "unreachable" in result.stderr


def test_subprocess_status_exit_codes_and_no_traceback(
    zk_hosts: str, root: str, contenders: Contenders
) -> None:
    missing = subprocess_cli("status", "--check", *where(zk_hosts, root))
    contenders.add("alpha")
    contenders.sessions[0].stop()  # the path exists now, nobody contends
    no_leader = subprocess_cli("status", "--check", *where(zk_hosts, root))
    contenders.add("alpha")
    leader = subprocess_cli("status", *where(zk_hosts, root))
    unreachable = subprocess_cli(
        "status", "--zk-hosts", f"127.0.0.1:{free_port()}", "--timeout", "1"
    )
    unknown_app = subprocess_cli("status", "-A", "nosuchmodule")

    assert no_leader.returncode == 1 and no_leader.stdout == ""
    assert_one_error_line(no_leader.stderr)
    assert missing.returncode == 2 and missing.stdout == ""
    assert_one_error_line(missing.stderr)
    assert "does not exist" in missing.stderr
    assert leader.returncode == 0, leader.stderr
    assert "Leader: alpha" in leader.stdout and leader.stderr == ""
    for failed in (unreachable, unknown_app):
        assert failed.returncode == 2 and failed.stdout == ""
        assert_one_error_line(failed.stderr)


def test_watch_redraws_until_ctrl_c(zk_hosts: str, root: str, contenders: Contenders) -> None:
    contenders.add("alpha")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "beatleader.cli", "status", "--watch", *where(zk_hosts, root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        frames = _lines_until(proc, "Leader: alpha", count=2)
        assert sum("Leader: alpha" in line for line in frames) == 2
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert err == ""


def _lines_until(proc: subprocess.Popen[str], marker: str, count: int) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while sum(marker in line for line in seen) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    return seen


# --- settings from a Celery app: -A, and ``celery -A proj beatleader`` ------------------------


@pytest.fixture
def app_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zk_hosts: str, root: str
) -> Iterator[str]:
    name = f"bl_cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from celery import Celery

            app = Celery({name!r})
            app.conf.beatleader_zk_hosts = {zk_hosts!r}
            app.conf.beatleader_path = {root!r}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    yield name
    sys.modules.pop(name, None)


def test_app_option_reads_settings(app_module: str, contenders: Contenders) -> None:
    contenders.add("alpha")
    result = run("status", "-A", app_module, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["leader"]["identity"] == "alpha"


def test_options_override_the_app(app_module: str, root: str, zk: KazooClient) -> None:
    zk.ensure_path(root + "-elsewhere")
    result = run("status", "-A", app_module, "--path", root + "-elsewhere", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["path"] == root + "-elsewhere"


def test_celery_subcommand_uses_celerys_app(app_module: str, contenders: Contenders) -> None:
    from celery.bin.celery import celery as celery_group

    if "beatleader" not in celery_group.commands:
        celery_group.add_command(celery_command)
    contenders.add("alpha")

    result = CliRunner().invoke(celery_group, ["-A", app_module, "beatleader", "status", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["leader"]["identity"] == "alpha"


def test_celery_entry_point_runs_as_subprocess(app_module: str, contenders: Contenders) -> None:
    names = [ep.name for ep in entry_points(group="celery.commands")]
    if "beatleader" not in names:
        pytest.skip("beatleader is not installed (pip install -e .): no celery.commands entry")
    contenders.add("alpha")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", app_module, "beatleader", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Leader: alpha" in result.stdout


def test_console_script(zk_hosts: str, root: str, contenders: Contenders) -> None:
    script = shutil.which("beatleader")
    if script is None:
        pytest.skip("beatleader is not installed (pip install -e .): no console script")
    contenders.add("alpha")
    ok = subprocess.run([script, "status", "--check", *where(zk_hosts, root)], **_captured())
    bad = subprocess.run([script, "status", "--path", "noslash"], **_captured())
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    assert bad.returncode == 2
    assert_one_error_line(bad.stderr)


def _captured() -> dict[str, Any]:
    return {"capture_output": True, "text": True, "timeout": 60}


# --- resign ----------------------------------------------------------------------------------


def test_resign_moves_leadership_to_next_contender(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    alpha = contenders.add("alpha")
    contenders.add("beta")
    contenders.add("gamma")

    result = run("resign", *where(zk_hosts, root))

    assert result.exit_code == 0, result.output
    assert "led: alpha" in result.stdout
    assert "leads now: beta" in result.stdout
    assert zk.exists(alpha) is None
    status = read_status(zk, root)
    assert [c.identity for c in status.contenders] == ["beta", "gamma"]


def test_resign_subprocess(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    alpha = contenders.add("alpha")
    contenders.add("beta")

    result = subprocess_cli("resign", *where(zk_hosts, root))

    assert result.returncode == 0, result.stderr
    assert "leads now: beta" in result.stdout
    assert zk.exists(alpha) is None


def test_resign_sole_contender_reports_no_other(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    alpha = contenders.add("alpha")

    result = run("resign", *where(zk_hosts, root))

    assert result.exit_code == 0, result.output
    assert "no other contender" in result.stdout
    assert zk.exists(alpha) is None


def test_resign_without_leader_exits_1(zk_hosts: str, root: str) -> None:
    result = run("resign", *where(zk_hosts, root))
    assert result.exit_code == 1
    assert_one_error_line(result.stderr)


def test_resign_times_out_when_the_next_contender_vanishes(
    zk: KazooClient, zk_hosts: str, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha")
    contenders.add("beta")

    class BetaDiesToo:
        """Deleting the leader's node also ends beta's session: nobody is left to lead."""

        def __getattr__(self, name: str) -> Any:
            return getattr(zk, name)

        def delete(self, path: str) -> None:
            zk.delete(path)
            contenders.sessions[1].stop()

    result = resign_leader(BetaDiesToo(), root, timeout=0.5)

    assert result.previous is not None and result.previous.identity == "alpha"
    assert result.other_contenders == 1 and result.current is None and not result.moved
    target = Target(Settings.from_app(None, zk_hosts=zk_hosts, path=root), 0.5)
    with pytest.raises(CliError) as failure:
        report_resign(result, target)
    assert failure.value.exit_code == 1
    assert "did not move" in failure.value.message


def test_resign_does_not_count_the_leaders_own_requeued_node(
    zk: KazooClient, root: str, contenders: Contenders
) -> None:
    contenders.add("alpha")
    info = ContenderInfo("alpha", "host-alpha", 1001, "0.1.0", "2024-01-01", "fp-a")
    contenders.sessions[0].create(
        contender_prefix(root), info.encode(), ephemeral=True, sequence=True
    )

    result = resign_leader(zk, root, timeout=0.5)

    assert result.other_contenders == 0 and not result.moved
    assert result.current is not None and result.current.identity == "alpha"


# --- status helpers- ---------------------------------------------------------------------------


def test_read_status_of_missing_root_is_empty(zk: KazooClient, root: str) -> None:
    status = read_status(zk, root)
    assert status.leader is None and status.entries == () and not status.exists
    assert status.warnings == (f"{root} does not exist",)
    zk.ensure_path(root)
    status = read_status(zk, root)
    assert status.exists
    assert status.warnings == (f"no leader: no instance is contending under {root}",)


def test_wait_for_leader(zk: KazooClient, root: str, contenders: Contenders) -> None:
    assert wait_for_leader(zk, root, timeout=0.2) is None
    contenders.add("alpha")
    leader = wait_for_leader(zk, root, lambda c: c.identity == "alpha", timeout=5)
    assert leader is not None and leader.identity == "alpha"
