"""``beatleader entry ...`` and ``celery -A tests.app beatleader entry ...`` as real subprocesses.

Each command against the suite's real ZooKeeper: what it writes, what it prints, its exit code;
every bad input is exit 2 with one line ``beatleader: ...`` on stderr and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from tests.security import AUTH

STATIC = "static-tick"


@pytest.fixture
def env(zk_server: Any, zk_root: str) -> dict[str, str]:
    """The environment of ``-A tests.app``: its static entry, this test's ZooKeeper and root."""
    return {
        **os.environ,
        "TEST_SCHEDULE": json.dumps({STATIC: {"every": 60}}),
        "BEATLEADER_ZK_HOSTS": zk_server.hosts,
        "BEATLEADER_PATH": zk_root,
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def entry(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``beatleader entry ARGS -A tests.app``."""
    return run(env, "entry", *args, "-A", "tests.app")


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert (done.returncode, done.stderr) == (0, ""), (done.stdout, done.stderr)
    return done.stdout


def bad(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    """Exit 2, one line ``beatleader: ...`` naming ``parts``, no traceback, nothing on stdout."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("beatleader: "), done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert done.stdout == ""
    return lines[0]


def definition(zk_client: Any, root: str, name: str) -> dict[str, Any]:
    return json.loads(zk_client.get(layout.definition_path(root, name))[0])  # type: ignore[no-any-return]


def listed(env: dict[str, str], *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = json.loads(ok(entry(env, "list", "--json", *extra)))
    return {(e["name"], e["source"]): e for e in items}


def test_every_command(env, zk_client, zk_root) -> None:
    out = ok(
        entry(
            env, "add", "report", "--task", "tests.app.record", "--every", "30s",
            "--args", '["report"]', "--kwargs", "{}", "--queue", "q", "--priority", "4",
            "--expires", "20",
        )
    )  # fmt: skip
    assert out == "added report: every 30s, task tests.app.record\n"
    assert definition(zk_client, zk_root, "report")["options"] == {
        "queue": "q",
        "priority": 4,
        "expires": 20.0,
    }
    out = ok(entry(env, "update", "report", "--cron", "0 9 * * *", "--timezone", "Europe/Paris"))
    assert out == "updated report: crontab 0 9 * * * (Europe/Paris), task tests.app.record\n"
    assert definition(zk_client, zk_root, "report")["args"] == ["report"]
    ok(entry(env, "add", "once", "--task", "tests.app.record", "--at", "2030-01-01T09:00:00+01:00"))

    assert ok(entry(env, "pause", "report")) == "paused report (runtime)\n"
    assert ok(entry(env, "pause", STATIC)) == "paused static-tick (static)\n"
    items = listed(env)
    assert items[("report", "runtime")]["state"] == "paused"
    assert items[(STATIC, "static")]["state"] == "paused"
    assert items[("once", "runtime")]["next_due"] == "2030-01-01T09:00:00+01:00"
    assert ok(entry(env, "resume", "report")) == "resumed report (runtime)\n"
    assert ok(entry(env, "resume", STATIC)) == "resumed static-tick (static)\n"

    out = ok(entry(env, "run", STATIC))
    assert out.startswith(f"requested a run of {STATIC}: {layout.request_prefix(zk_root, STATIC)}")
    assert listed(env)[(STATIC, "static")]["pending_runs"] == 1

    table = ok(entry(env, "list"))
    header, *rows = table.splitlines()
    assert header.split() == [
        "NAME", "SOURCE", "STATE", "SCHEDULE", "TASK", "NEXT", "DUE", "RUNS", "PENDING",
    ]  # fmt: skip
    assert [r.split()[:3] for r in rows] == [
        ["once", "runtime", "enabled"],
        ["report", "runtime", "enabled"],
        [STATIC, "static", "enabled"],
    ]

    assert ok(entry(env, "remove", "report")) == "removed report\n"
    assert zk_client.exists(layout.definition_path(zk_root, "report")) is None


def test_bad_input_is_one_line_exit_2(env, zk_client, zk_root) -> None:
    state = EntryState("2026-01-01T00:00:00+00:00", 1, "id", "leader")
    zk_client.create(layout.entry_path(zk_root, "kept"), state.encode(), makepath=True)
    ok(entry(env, "add", "mine", "--task", "tests.app.record", "--every", "5"))
    task = ("--task", "tests.app.record")
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("add", "x", "--every", "5"), ("needs --task",)),
        (("add", "x", *task), ("give a schedule",)),
        (("add", "x", *task, "--every", "soon"), ("--every 'soon' is not an interval",)),
        (("add", "x", *task, "--cron", "* * *"), ("--cron", "5 fields")),
        (("add", "x", *task, "--cron", "0 25 * * *"), ("not a valid crontab",)),
        (("add", "x", *task, "--at", "tomorrow"), ("--at 'tomorrow'", "UTC offset")),
        (("add", "x", *task, "--every", "5", "--at", "2030-01-01T00:00+00:00"), ("one schedule",)),
        (("add", "x", *task, "--cron", "* * * * *", "--timezone", "Mars/X"), ("time zone",)),
        (("add", "x", *task, "--every", "5", "--args", "[1,"), ("--args is not JSON",)),
        (
            ("add", "x", *task, "--every", "5", "--args", '{"a": 1}'),
            ("--args must be a JSON list",),
        ),
        (("add", "x", *task, "--every", "5", "--kwargs", "[1]"), ("--kwargs must be a JSON obj",)),
        (("add", "x", *task, "--every", "5", "--priority", "high"), ("--priority 'high'",)),
        (("add", "x", *task, "--every", "5", "--priority", "999"), ("--priority 999",)),
        (("add", "x", *task, "--every", "5", "--expires", "nan"), ("--expires",)),
        (("add", "x", "--task", "tests.app.nope", "--every", "5"), ("not registered", "--force")),
        (("add", STATIC, *task, "--every", "5"), ("static beat_schedule entry has that name",)),
        (("add", "mine", *task, "--every", "5"), ("exists (use update)",)),
        (("update", "ghost", "--every", "5"), ("no such entry",)),
        (("update", STATIC, "--every", "5"), ("static beat_schedule entry",)),
        (("update", "mine", "--timezone", "UTC"), ("--cron only",)),
        (("update", "mine"), ("needs an option to change",)),
        (("pause", ""), ("entry name must not be empty",)),
        (("run", "x" * 300), ("longer than 200",)),
        (("remove", "ghost"), ("no such entry",)),
        (("remove", "kept"), ("no such entry",)),  # run state alone is no entry
        (("pause", "ghost"), ("no such entry",)),
        (("resume", "ghost"), ("no such entry",)),
        (("run", "ghost"), ("no such entry",)),
        (("add", "x", *task, "--every", "5", "--overlap", "never"), ("--overlap 'never'", "skip")),
        (
            ("add", "x", *task, "--every", "5", "--pause-after-failures", "-1"),
            ("--pause-after-failures '-1' is negative",),
        ),
        (("add", "x", *task, "--every", "5", "--pause-after-failures", "x"), ("'x' is not an",)),
        (("add", "x", *task, "--every", "5", "--jitter", "soon"), ("--jitter 'soon'", "duration")),
        (("add", "x", *task, "--every", "5", "--jitter", "10s"), ("not shorter than the inter",)),
        (("add", "x", *task, "--every", "5", "--catchup", "most"), ("--catchup 'most'", "all")),
        (
            ("add", "x", *task, "--every", "5", "--catchup", "skip"),
            ("--catchup skip needs --catchup-window",),
        ),
        (("add", "x", *task, "--every", "5", "--catchup-window", "x"), ("--catchup-window 'x'",)),
        (("add", "x", *task, "--every", "5", "--start", "soon"), ("--start 'soon'",)),
        (
            (
                "add",
                "x",
                *task,
                "--every",
                "5",
                "--start",
                "2030-01-02T00:00+00:00",
                "--end",
                "2030-01-01T00:00+00:00",
            ),
            ("--start 2030-01-02T00:00:00+00:00 is not before --end",),
        ),
        (("add", "x", *task, "--every", "5", "--max-runs", "0"), ("--max-runs 0",)),
        (("update", "ghost", "--overlap", "skip"), ("no such entry",)),
        (("update", STATIC, "--overlap", "skip"), ("static beat_schedule entry",)),
        (("history", "ghost"), ("no such entry",)),
    ]
    for args, parts in cases:
        bad(entry(env, *args), *parts)
    assert zk_client.exists(layout.definition_path(zk_root, "x")) is None
    assert definition(zk_client, zk_root, "mine")["schedule"] == {"every": 5.0}
    ok(entry(env, "update", "mine", "--overlap", "buffer-one", "--pause-after-failures", "3"))
    policy = {"overlap": "buffer-one", "pause_after_failures": 3}
    assert definition(zk_client, zk_root, "mine")["options"] == {"beatleader": policy}
    ok(entry(env, "update", "mine", "--overlap", "allow", "--pause-after-failures", "0"))
    assert definition(zk_client, zk_root, "mine")["options"] == {}  # the defaults: nothing kept
    ok(
        entry(
            env,
            "update",
            "mine",
            "--catchup",
            "skip",
            "--catchup-window",
            "1m",
            "--jitter",
            "2s",
            "--start",
            "2030-01-01T00:00:00+00:00",
            "--max-runs",
            "7",
        )
    )
    policy = {"catchup": "skip", "catchup_window": 60.0, "jitter": 2.0,
              "start_at": "2030-01-01T00:00:00+00:00", "max_runs": 7}  # fmt: skip
    assert definition(zk_client, zk_root, "mine")["options"] == {"beatleader": policy}
    ok(entry(env, "update", "mine", "--catchup", "all", "--jitter", "", "--start", "",
             "--max-runs", "3"))  # fmt: skip
    policy = {"catchup": "all", "max_runs": 3}
    assert definition(zk_client, zk_root, "mine")["options"] == {"beatleader": policy}
    # the unknown task passes with --force
    ok(entry(env, "add", "x", "--task", "tests.app.nope", "--every", "5", "--force"))


def test_settings_and_zookeeper_failures_are_one_line(env, zk_server, zk_root) -> None:
    bad(entry({**env, "BEATLEADER_SESSION_TIMEOUT": "-1"}, "list"), "session_timeout")
    bad(run(env, "entry", "list", "-A", "no_such_module_xyz"), "cannot load app")
    bad(entry(env, "list", "--path", f"{zk_root}-typo"), "does not exist")
    unreachable = run(env, "entry", "list", "--zk-hosts", "127.0.0.1:1", "--timeout", "1")
    bad(unreachable, "unreachable")
    ok(entry(env, "add", "x", "--task", "tests.app.record", "--every", "5"))
    # a stranger without credentials on a tree owned by an identity
    secure = {**env, "BEATLEADER_PATH": f"{zk_root}-secure"}
    ok(entry(secure, "add", "s", "--task", "tests.app.record", "--every", "5", "--zk-auth", AUTH))
    bad(entry(secure, "remove", "s"), "NoAuthError", "--zk-auth")
    assert listed(secure)[("s", "runtime")]["state"] == "enabled"  # world readable


def test_hostile_definition_is_listed_not_a_crash(env, zk_client, zk_root) -> None:
    zk_client.create(layout.definition_path(zk_root, "evil\x1b[2J"), b"\xff\xfe", makepath=True)
    table = ok(entry(env, "list"))
    assert "\x1b" not in table and "invalid" in table and "definition is not JSON" in table
    items = listed(env)
    assert items[("evil\x1b[2J", "runtime")]["state"] == "invalid"


def test_without_an_app_and_through_celery(env, zk_server, zk_root) -> None:
    plain = {k: v for k, v in env.items() if not k.startswith("BEATLEADER_")}
    where = ("--zk-hosts", zk_server.hosts, "--path", zk_root)
    ok(run(plain, "entry", "add", "bare", "--task", "any.task", "--every", "2h", *where))
    ok(run(plain, "--zk-hosts", zk_server.hosts, "--path", zk_root, "entry", "pause", "bare"))
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "beatleader", "entry", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    out = ok(done)
    assert "bare" in out and "paused" in out and STATIC in out
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "beatleader", "entry", "run", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    bad(done, "no such entry")
