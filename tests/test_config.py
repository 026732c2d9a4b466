"""Settings: precedence, defaults and one-line errors (no ZooKeeper needed)."""

from __future__ import annotations

import pytest
from celery import Celery

from beatleader import layout
from beatleader.config import ConfigError, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZK_HOSTS", "PATH", "SESSION_TIMEOUT", "IDENTITY", "MISFIRE_GRACE"):
        monkeypatch.delenv(f"BEATLEADER_{name}", raising=False)


def test_defaults() -> None:
    settings = Settings.from_app(Celery("proj"))
    assert settings.zk_hosts == "127.0.0.1:2181"
    assert settings.path == "/beatleader/proj"
    assert settings.session_timeout == 10.0
    assert settings.misfire_grace is None
    assert settings.identity.endswith(":" + str(__import__("os").getpid()))


def test_app_conf_wins_over_environment_and_arguments_win_over_both(monkeypatch) -> None:
    monkeypatch.setenv("BEATLEADER_SESSION_TIMEOUT", "3")
    monkeypatch.setenv("BEATLEADER_PATH", "/from/env")
    app = Celery("proj")
    app.conf.beatleader_session_timeout = 4
    settings = Settings.from_app(app)
    assert settings.session_timeout == 4.0 and settings.path == "/from/env"
    assert Settings.from_app(app, session_timeout=5).session_timeout == 5.0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("zk_hosts", "a:b:c:notaport", "beatleader_zk_hosts"),
        ("zk_hosts", "host:99999", "host:port"),
        ("path", "noslash", "absolute znode path"),
        ("path", "/a//b", "absolute znode path"),
        ("session_timeout", "soon", "number of seconds from 0.2 to 3600"),
        ("session_timeout", "0", "number of seconds"),
        ("identity", "two\nlines", "single line"),
        ("misfire_grace", "-1", ">= 0"),
    ],
)
def test_invalid_values_give_one_line_naming_the_setting(
    monkeypatch, key: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(f"BEATLEADER_{key.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_app(Celery("proj"))
    message = str(caught.value)
    assert "\n" not in message
    assert f"beatleader_{key} (from BEATLEADER_{key.upper()})" in message
    assert expected in message


def test_app_conf_errors_name_the_key() -> None:
    app = Celery("proj")
    app.conf.beatleader_zk_hosts = ""
    with pytest.raises(ConfigError, match=r"^beatleader_zk_hosts = '' is invalid: expected"):
        Settings.from_app(app)


@pytest.mark.parametrize("hosts", ["zk1:2181,zk2:2181/apps/x", "[::1]:2181", "localhost"])
def test_valid_hosts(hosts: str) -> None:
    assert Settings.from_app(Celery("p"), zk_hosts=hosts).zk_hosts == hosts


@pytest.mark.parametrize("name", ["plain", "a b/c", "nächtlich ✓", ".", "..", "%2F"])
def test_entry_names_round_trip_through_znode_names(name: str) -> None:
    quoted = layout.quote_entry_name(name)
    assert "/" not in quoted and quoted not in (".", "..")
    assert layout.unquote_entry_name(quoted) == name


def test_task_ids_are_deterministic_per_run() -> None:
    first = layout.run_task_id("/beatleader/p", "a", 1)
    assert first == layout.run_task_id("/beatleader/p", "a", 1)
    others = {
        layout.run_task_id("/beatleader/p", "a", 2),
        layout.run_task_id("/beatleader/p", "b", 1),
        layout.run_task_id("/beatleader/q", "a", 1),
    }
    assert first not in others and len(others) == 3
