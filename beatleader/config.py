"""Every beatleader setting: its name, its default, its environment variable, its validation.

A setting is read from the Celery app's configuration (``app.conf.beatleader_<name>``); when that
key is unset, from the environment variable ``BEATLEADER_<NAME>``; otherwise the default applies.
Keyword overrides (used by :class:`beatleader.EmbeddedBeat`) win over all three.

An invalid value raises :class:`ConfigError` whose message is one line naming the setting, where the
value came from, and what would be valid. Nothing here talks to ZooKeeper.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: kazoo hosts string used when none is configured.
DEFAULT_ZK_HOSTS = "127.0.0.1:2181"
#: Parent of every app's root znode; the app's ``main`` name is appended.
DEFAULT_PATH_PREFIX = "/beatleader"
#: Seconds; ZooKeeper expires a crashed leader's session after this long: the crash-failover time.
DEFAULT_SESSION_TIMEOUT = 10.0
#: Bounds accepted for the session timeout (the server may still narrow what it grants).
SESSION_TIMEOUT_RANGE = (0.2, 3600.0)
#: Seconds a worker's "run done" marker is kept (``dedup.install``); exceed any redelivery delay.
DEFAULT_DEDUP_RETENTION = 3 * 3600.0
DEFAULT_HISTORY_SIZE = 20
#: Largest ``beatleader_history_size``: each run is one small node, read back by ``entry history``.
MAX_HISTORY_SIZE = 1000
#: Authentication schemes of ``beatleader_zk_auth`` (``sasl`` is SASL DIGEST-MD5).
AUTH_SCHEMES = ("digest", "sasl")


class ConfigError(ValueError):
    """A setting has a value beatleader cannot use; the message is one line for operators."""


@dataclass(frozen=True)
class ZkAuth:
    """Credentials beatleader authenticates with, and the identity its ACLs grant writes to."""

    scheme: str  # one of AUTH_SCHEMES
    user: str
    password: str = field(repr=False)

    def __str__(self) -> str:  # never the password
        return f"{self.scheme}:{self.user}"


@dataclass(frozen=True)
class TlsSettings:
    """Client-side TLS to ZooKeeper; paths are PEM files."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True


@dataclass(frozen=True)
class Settings:
    """The validated settings of one beatleader instance.

    Build it once with :meth:`from_app` and pass the object on (``EmbeddedBeat`` hands it to the
    scheduler): nothing below re-validates.
    """

    zk_hosts: str
    path: str
    session_timeout: float
    identity: str
    misfire_grace: float | None
    #: None: no authentication; ZooKeeper's default (open) ACL on every created znode.
    zk_auth: ZkAuth | None = None
    #: With ``zk_auth``: whether unauthenticated clients may read (``beatleader status``).
    zk_world_readable: bool = True
    #: None: plaintext connection.
    zk_tls: TlsSettings | None = None
    #: None: no metrics server; else ``celery beat`` serves ``/metrics`` on this port.
    metrics_port: int | None = None
    #: Address the metrics server binds (loopback unless told otherwise: it has no auth).
    metrics_address: str = "127.0.0.1"
    #: Seconds the workers' done markers are kept (``beatleader.dedup``).
    dedup_retention: float = DEFAULT_DEDUP_RETENTION
    #: Runs kept per entry in its history (``beatleader.runs``), whatever the retention.
    history_size: int = DEFAULT_HISTORY_SIZE
    #: The web dashboard's write credential (``beatleader web --token``, docs/web.md); None: none.
    web_token: str | None = field(default=None, repr=False)
    #: ``celery beat`` also serves the read-only dashboard on ``metrics_port`` (docs/web.md).
    web: bool = False
    #: ``cron``: static crontabs follow cron's DST rules (``ZonedCrontab``); ``celery``: celery's.
    crontab_rules: str = "cron"

    @classmethod
    def from_app(cls, app: Any, **overrides: Any) -> Settings:
        """Read, default and validate every setting for ``app``; raise :class:`ConfigError`."""
        conf: Mapping[str, Any] = getattr(app, "conf", None) or {}
        app_name = getattr(app, "main", None) or "default"
        values = {}
        for name, (validate, default) in _SETTINGS.items():
            raw, source = _lookup(name, conf, overrides)
            if raw is None:
                raw = default(app_name) if callable(default) else default
                source = "default"
            values[name] = validate(_label(name, source), raw)
        if values["web"] and values["metrics_port"] is None:
            raise ConfigError(
                f"{_label('web', _lookup('web', conf, overrides)[1])}: true needs "
                "beatleader_metrics_port (the dashboard is served on the metrics port)"
            )
        auth = _auth(values.pop("zk_auth"), values.pop("zk_auth_file"))
        tls = _tls(values) if values.pop("zk_tls") else None
        for name in _TLS_FIELDS:
            values.pop(f"zk_tls_{name}")
        return cls(**values, zk_auth=auth, zk_tls=tls)


def setting_key(name: str) -> str:
    """The ``app.conf`` key of setting ``name``."""
    return f"beatleader_{name}"


def setting_env(name: str) -> str:
    """The environment variable of setting ``name``."""
    return f"BEATLEADER_{name.upper()}"


def _lookup(name: str, conf: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[Any, str]:
    if overrides.get(name) is not None:
        return overrides[name], "argument"
    value = conf.get(setting_key(name))
    if value is not None:
        return value, "app.conf"
    env_value = os.environ.get(setting_env(name))
    if env_value not in (None, ""):
        return env_value, "environment"
    return None, "default"


def _label(name: str, source: str) -> str:
    if source == "environment":
        return f"{setting_key(name)} (from {setting_env(name)})"
    if source == "argument":
        return f"{name} (argument)"
    return setting_key(name)


def _fail(label: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{label} = {value!r} is invalid: {valid}")


def validate_zk_hosts(label: str, value: Any) -> str:
    """A kazoo hosts string: ``host[:port][,host[:port]...][/chroot]``."""
    valid = "expected 'host:port[,host:port...][/chroot]', e.g. '127.0.0.1:2181'"
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise _fail(label, value, valid)
    hosts, slash, chroot = value.strip().partition("/")
    if slash:
        _check_path(label, value, "/" + chroot, allow_root=False, valid=valid)
    for host in hosts.split(","):
        if not _is_host_port(host):
            raise _fail(label, value, valid)
    return value.strip()


def _is_host_port(host: str) -> bool:
    if host.startswith("["):  # [IPv6]:port
        address, bracket, rest = host[1:].partition("]")
        if not bracket or not address:
            return False
        return rest == "" or (rest.startswith(":") and _is_port(rest[1:]))
    name, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
    if not name or any(c in name for c in ":@"):
        return False
    return not colon or _is_port(port)


def _is_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536


def validate_path(label: str, value: Any) -> str:
    """An absolute znode path, no trailing slash, no empty, '.' or '..' segment."""
    valid = "expected an absolute znode path such as '/beatleader/proj'"
    if not isinstance(value, str):
        raise _fail(label, value, valid)
    return _check_path(label, value, value, allow_root=False, valid=valid)


def _check_path(label: str, original: Any, path: str, *, allow_root: bool, valid: str) -> str:
    if not path.startswith("/") or (path == "/" and not allow_root):
        raise _fail(label, original, valid)
    segments = path[1:].split("/")
    if any(s in ("", ".", "..") or "\x00" in s for s in segments):
        raise _fail(label, original, valid)
    return path


def validate_session_timeout(label: str, value: Any) -> float:
    """Seconds, within :data:`SESSION_TIMEOUT_RANGE`."""
    low, high = SESSION_TIMEOUT_RANGE
    seconds = _as_seconds(value)
    if seconds is None or not low <= seconds <= high:
        raise _fail(label, value, f"expected a number of seconds from {low:g} to {high:g}")
    return seconds


def validate_identity(label: str, value: Any) -> str:
    """Free text shown to operators, one line, at most 200 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or "\n" in value:
        raise _fail(label, value, "expected a non-empty single line of at most 200 characters")
    return value.strip()


def validate_misfire_grace(label: str, value: Any) -> float | None:
    """Unset (None, '' or 'none') or a number of seconds >= 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    seconds = _as_seconds(value)
    if seconds is None or seconds < 0:
        raise _fail(label, value, "expected a number of seconds >= 0, or unset")
    return seconds


def validate_positive_seconds(label: str, value: Any) -> float:
    """A number of seconds > 0."""
    seconds = _as_seconds(value)
    if seconds is None or seconds <= 0:
        raise _fail(label, value, "expected a number of seconds > 0")
    return seconds


def validate_history_size(label: str, value: Any) -> int:
    """An integer of runs from 0 to :data:`MAX_HISTORY_SIZE`."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_HISTORY_SIZE:
        raise _fail(label, value, f"expected a whole number of runs from 0 to {MAX_HISTORY_SIZE}")
    return int(text)


#: ``beatleader_crontab_rules``: whose DST rules a static crontab follows.
CRONTAB_RULES = ("cron", "celery")


def validate_crontab_rules(label: str, value: Any) -> str:
    """``cron`` (Vixie cron / cronie's DST rules, the default) or ``celery`` (celery's)."""
    text = str(value).strip().lower()
    if text not in CRONTAB_RULES:
        raise _fail(label, value, "expected cron or celery")
    return text


def validate_bool(label: str, value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case), or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _fail(label, value, "expected true or false")


def validate_optional_text(label: str, value: Any) -> str | None:
    """Unset, or one line of text."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\n" in value.strip():
        raise _fail(label, "<hidden>", "expected one line of text")
    return value.strip()


def validate_optional_file(label: str, value: Any) -> str | None:
    """Unset, or the path of a readable file."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise _fail(label, value, "expected the path of a readable file")
    return value


def validate_metrics_port(label: str, value: Any) -> int | None:
    """Unset, or a TCP port 1-65535; set, it needs ``prometheus_client`` (the extra)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool) or not _is_port(str(value).strip()):
        raise _fail(label, value, "expected a TCP port from 1 to 65535, or unset")
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            f"{label} = {value!r} needs prometheus_client: pip install 'beatleader[prometheus]'"
        )
    return int(str(value).strip())


def validate_address(label: str, value: Any) -> str:
    """A host name or IP address to bind, e.g. ``127.0.0.1``, ``0.0.0.0`` or ``::``."""
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise _fail(label, value, "expected a host name or IP address such as '0.0.0.0'")
    return value.strip()


def validate_auth(label: str, value: Any) -> ZkAuth | None:
    """Unset, or ``digest:USER:PASSWORD`` / ``sasl:USER:PASSWORD``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    valid = "expected 'digest:USER:PASSWORD' or 'sasl:USER:PASSWORD'"
    if not isinstance(value, str):
        raise _fail(label, "<hidden>", valid)
    scheme, _, rest = value.strip().partition(":")
    user, colon, password = rest.partition(":")
    if scheme not in AUTH_SCHEMES or not user or not colon or not password:
        shown = f"{scheme}:{user}:..." if colon else "<hidden>"  # never echo a password
        raise _fail(label, shown, valid)
    return ZkAuth(scheme, user, password)


def _auth(inline: ZkAuth | None, file_path: str | None) -> ZkAuth | None:
    if file_path is None:
        return inline
    if inline is not None:
        raise ConfigError(
            f"{setting_key('zk_auth')} and {setting_key('zk_auth_file')} are both set: "
            "expected at most one of them"
        )
    try:
        with open(file_path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting_key('zk_auth_file')} = {file_path!r}: {exc}") from None
    return validate_auth(f"{setting_key('zk_auth_file')} (contents of {file_path})", text)


_TLS_FIELDS = ("ca", "cert", "key", "key_password", "check_hostname")


def _tls(values: dict[str, Any]) -> TlsSettings:
    tls = TlsSettings(**{name: values[f"zk_tls_{name}"] for name in _TLS_FIELDS})
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(
            f"{setting_key('zk_tls_cert')} and {setting_key('zk_tls_key')}: "
            "expected both (a client certificate and its key) or neither"
        )
    return tls


def _as_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds == seconds and seconds not in (float("inf"), float("-inf")) else None


def default_identity(_app_name: str) -> str:
    """``<hostname>:<pid>``, read when the settings are built (after any fork)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_path(app_name: str) -> str:
    """``/beatleader/<app.main>``, with characters a znode name cannot hold replaced."""
    safe = app_name.replace("/", "_").strip(".") or "default"
    return f"{DEFAULT_PATH_PREFIX}/{safe}"


Validator = Callable[[str, Any], Any]

#: setting name -> (validator, default value or factory taking the app's main name)
_SETTINGS: dict[str, tuple[Validator, Any]] = {
    "zk_hosts": (validate_zk_hosts, DEFAULT_ZK_HOSTS),
    "path": (validate_path, default_path),
    "session_timeout": (validate_session_timeout, DEFAULT_SESSION_TIMEOUT),
    "identity": (validate_identity, default_identity),
    "misfire_grace": (validate_misfire_grace, None),
    "zk_auth": (validate_auth, None),
    "zk_auth_file": (validate_optional_file, None),
    "zk_world_readable": (validate_bool, True),
    "zk_tls": (validate_bool, False),
    "zk_tls_ca": (validate_optional_file, None),
    "zk_tls_cert": (validate_optional_file, None),
    "zk_tls_key": (validate_optional_file, None),
    "zk_tls_key_password": (validate_optional_text, None),
    "zk_tls_check_hostname": (validate_bool, True),
    "metrics_port": (validate_metrics_port, None),
    "metrics_address": (validate_address, "127.0.0.1"),
    "dedup_retention": (validate_positive_seconds, DEFAULT_DEDUP_RETENTION),
    "history_size": (validate_history_size, DEFAULT_HISTORY_SIZE),
    "web_token": (validate_optional_text, None),
    "web": (validate_bool, False),
    "crontab_rules": (validate_crontab_rules, "cron"),
}
