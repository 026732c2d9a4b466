"""Settings: precedence, defaults and one-line errors (no ZooKeeper needed)."""

from __future__ import annotations

import pytest
from celery import Celery

from beatleader.config import ConfigError, Settings
from beatleader.zk import layout


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        *("ZK_HOSTS", "PATH", "SESSION_TIMEOUT", "IDENTITY", "MISFIRE_GRACE", "ZK_AUTH"),
        *("ZK_AUTH_FILE", "ZK_WORLD_READABLE", "ZK_TLS", "ZK_TLS_CA", "ZK_TLS_CERT"),
        *("ZK_TLS_KEY", "ZK_TLS_KEY_PASSWORD", "ZK_TLS_CHECK_HOSTNAME"),
    ):
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


# --- auth and TLS settings -------------------------------------------------------------------

SECRET = "s3cret-Pa55"


def test_auth_parses_and_never_shows_the_password() -> None:
    settings = Settings.from_app(Celery("proj"), zk_auth=f"digest:app:{SECRET}:with:colons")
    auth = settings.zk_auth
    assert auth is not None and (auth.scheme, auth.user) == ("digest", "app")
    assert auth.password == f"{SECRET}:with:colons"
    assert SECRET not in str(auth) and SECRET not in repr(settings)
    sasl = Settings.from_app(Celery("proj"), zk_auth=f"sasl:app:{SECRET}").zk_auth
    assert sasl is not None and sasl.scheme == "sasl"
    assert settings.zk_world_readable is True and settings.zk_tls is None


@pytest.mark.parametrize(
    "value", [f"kerberos:app:{SECRET}", f"app:{SECRET}", "digest:app", "digest:app:", f":{SECRET}"]
)
def test_invalid_auth_is_one_line_without_the_password(monkeypatch, value: str) -> None:
    monkeypatch.setenv("BEATLEADER_ZK_AUTH", value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_app(Celery("proj"))
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    assert message.startswith("beatleader_zk_auth (from BEATLEADER_ZK_AUTH) = ")
    assert "expected 'digest:USER:PASSWORD' or 'sasl:USER:PASSWORD'" in message


def test_auth_file(tmp_path) -> None:
    secret = tmp_path / "zk-auth"
    secret.write_text(f"digest:app:{SECRET}\n")
    auth = Settings.from_app(Celery("proj"), zk_auth_file=str(secret)).zk_auth
    assert auth is not None and auth.password == SECRET
    with pytest.raises(ConfigError, match="are both set: expected at most one"):
        Settings.from_app(Celery("proj"), zk_auth_file=str(secret), zk_auth="digest:a:b")
    secret.write_text(f"md5:app:{SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_app(Celery("proj"), zk_auth_file=str(secret))
    assert SECRET not in str(caught.value) and "contents of" in str(caught.value)
    with pytest.raises(ConfigError, match=r"zk_auth_file .* expected the path of a readable file"):
        Settings.from_app(Celery("proj"), zk_auth_file=str(tmp_path / "missing"))


def test_tls_settings(tmp_path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here\n")
    app = Celery("proj")
    app.conf.beatleader_zk_tls = "on"
    app.conf.beatleader_zk_tls_ca = str(pem)
    tls = Settings.from_app(app).zk_tls
    assert tls is not None and tls.ca == str(pem) and tls.check_hostname is True
    assert tls.cert is None and tls.key is None
    off = Settings.from_app(app, zk_tls_check_hostname="no").zk_tls
    assert off is not None and off.check_hostname is False
    with pytest.raises(ConfigError, match=r"expected both .* or neither"):
        Settings.from_app(app, zk_tls_cert=str(pem))
    with pytest.raises(ConfigError, match=r"^beatleader_zk_tls_ca = .* readable file"):
        app.conf.beatleader_zk_tls_ca = str(tmp_path / "missing.pem")
        Settings.from_app(app)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("zk_tls", "maybe", "expected true or false"),
        ("zk_world_readable", "2", "expected true or false"),
        ("zk_tls_check_hostname", "sure", "expected true or false"),
        ("zk_tls_key_password", f"{SECRET}\nsecond line", "expected one line"),
    ],
)
def test_invalid_security_values(monkeypatch, key: str, value: str, expected: str) -> None:
    monkeypatch.setenv(f"BEATLEADER_{key.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_app(Celery("proj"))
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message and expected in message
    assert message.startswith(f"beatleader_{key} (from BEATLEADER_{key.upper()})")
