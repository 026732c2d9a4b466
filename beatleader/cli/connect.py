"""How the operator CLI reaches ZooKeeper: options, settings, the app, the client, its errors.

The plumbing every ``beatleader`` command shares (:mod:`beatleader.cli.main`,
:mod:`beatleader.cli.entry`): the connection options, resolving them into :class:`Target`
(settings plus timeout), loading the Celery app, and :func:`connect`, a started client whose
failures become :class:`CliError`. The exit codes live here; :mod:`beatleader.cli.main` re-exports
every public name, import them from there.

Guarantees:

* Settings are resolved like the scheduler's (:meth:`Settings.from_app`): ``--zk-hosts`` and
  ``--path`` win over the app's configuration, which wins over ``BEATLEADER_ZK_HOSTS`` and
  ``BEATLEADER_PATH``, which win over the defaults; a command's option wins over its group's.
  The app is ``-A/--app`` or, under ``celery -A proj beatleader``, celery's app.
* ``--zk-auth``, ``--zk-auth-file``, ``--zk-tls`` and the other ``--zk-tls-*`` flags override the
  settings of the same name. Bad credentials or a TLS failure are a :class:`CliError` naming the
  cause (:mod:`beatleader.zk.trust`), not "unreachable".
* Every failure here (bad settings, an app that cannot be loaded, bad hosts, ZooKeeper
  unreachable within the timeout, a refused permission, any kazoo error inside ``connect``) is a
  :class:`CliError` with exit code 2 and one line ``beatleader: <message>``, never a traceback;
  the client is stopped and closed however the block ends.
* kazoo's own connection warnings stay off stderr unless the caller configured logging.

Not guaranteed: that the path exists or holds anything (the commands check); errors raised
inside ``connect``'s block other than kazoo's pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import click
from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError

from beatleader.config import ConfigError, Settings
from beatleader.ops.render import cell
from beatleader.ops.status import sibling_paths
from beatleader.zk.client import make_client
from beatleader.zk.log import KAZOO_LOGGER
from beatleader.zk.trust import ZooKeeperTrustError, start_client

EXIT_LEADER = 0
EXIT_NO_LEADER = 1
EXIT_UNREACHABLE = 2

#: Seconds allowed to reach ZooKeeper (and, for ``resign``, for another contender to lead).
DEFAULT_TIMEOUT = 5.0

#: The key of ``ctx.meta`` under which a group keeps its connection options for its commands.
GROUP_OPTIONS = "beatleader.group_options"
#: What kazoo raises when ZooKeeper fails a request or cannot be reached in time.
ZK_ERRORS = (KazooException, KazooTimeoutError)

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An operator-facing failure: one line ``beatleader: <message>`` on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"beatleader: {self.message}", err=True)


@dataclass(frozen=True)
class Target:
    """Where to look: validated settings plus the time allowed to reach ZooKeeper."""

    settings: Settings
    timeout: float
    #: The Celery app the settings came from (``-A`` or celery's), None without one.
    app: Any = None

    @property
    def where(self) -> str:
        return f"{self.settings.zk_hosts} {self.settings.path}"


#: Flags named like the settings they override (``--zk-tls-ca`` -> ``beatleader_zk_tls_ca``).
_SECURITY_OPTIONS = [
    click.option(
        "--zk-auth",
        help="'digest:USER:PASSWORD' or 'sasl:USER:PASSWORD' (shown in the process list: "
        "prefer --zk-auth-file).",
    ),
    click.option("--zk-auth-file", help="A file holding the --zk-auth string."),
    click.option("--zk-tls/--no-zk-tls", default=None, help="Connect with TLS."),
    click.option("--zk-tls-ca", help="PEM file of the CA that signed ZooKeeper's certificate."),
    click.option("--zk-tls-cert", help="PEM client certificate."),
    click.option("--zk-tls-key", help="PEM key of the client certificate."),
    click.option("--zk-tls-key-password", help="Password of --zk-tls-key."),
    click.option(
        "--zk-tls-check-hostname/--no-zk-tls-check-hostname",
        default=None,
        help="Check that ZooKeeper's certificate names the host (default on).",
    ),
]
_SECURITY_NAMES = (
    "zk_auth", "zk_auth_file", "zk_tls", "zk_tls_ca", "zk_tls_cert", "zk_tls_key",
    "zk_tls_key_password", "zk_tls_check_hostname",
)  # fmt: skip


def connection_options(func: F) -> F:
    """``--zk-hosts``, ``--path``, ``-A/--app``, ``--timeout`` and the auth/TLS flags."""
    decorators = [
        click.option("--zk-hosts", help="ZooKeeper hosts 'host:port[,...][/chroot]'."),
        click.option("--path", help="The app's root znode (default /beatleader/<app main>)."),
        click.option("-A", "--app", help="Celery app to read the beatleader settings from."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            help=f"Seconds to reach ZooKeeper  [default: {DEFAULT_TIMEOUT:g}]",
        ),
        *_SECURITY_OPTIONS,
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def resolve_target(ctx: click.Context, **options: Any) -> Target:
    """Settings from this command's options, falling back to the group's, then the app."""
    group = ctx.meta.get(GROUP_OPTIONS, {})
    value = {name: _first(options.get(name), group.get(name)) for name in options}
    app = load_app(value["app"]) if value.get("app") else _celery_app(ctx)
    security = {name: value.get(name) for name in _SECURITY_NAMES}
    try:
        settings = Settings.from_app(
            app, zk_hosts=value.get("zk_hosts"), path=value.get("path"), **security
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return Target(settings, float(value.get("timeout") or DEFAULT_TIMEOUT), app)


def _first(option: Any, group_option: Any) -> Any:
    """The command's option unless unset (None or ''), else the group's: ``False`` counts."""
    return group_option if option is None or option == "" else option


def load_app(name: str) -> Any:
    """The Celery app ``name`` designates (``proj``, ``proj.celery:app``, ...)."""
    from celery import Celery
    from celery.app.utils import find_app

    try:
        app = find_app(name)
    except Exception as exc:  # the module's own import errors count as bad input too
        raise CliError(f"cannot load app {name!r}: {one_line(exc)}") from None
    if not isinstance(app, Celery):
        raise CliError(f"cannot load app {name!r}: it names {type(app).__name__}, not a Celery app")
    return app


def _celery_app(ctx: click.Context) -> Any:
    """The app of ``celery -A proj beatleader ...`` (None when run standalone)."""
    return getattr(ctx.find_root().obj, "app", None)


@contextmanager
def connect(target: Target) -> Iterator[Any]:
    """A started KazooClient; ZooKeeper failures become :class:`CliError` (exit 2)."""
    _quiet_kazoo_logging()
    hosts = target.settings.zk_hosts
    try:
        client = make_client(
            target.settings,
            timeout=max(target.timeout, 1.0),
            connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
        )
    except ConfigError as exc:  # TLS files, SASL support
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"bad ZooKeeper hosts {hosts!r}: {one_line(exc)}") from None
    try:
        _start(client, target)
        yield client
    except NoAuthError:
        raise CliError(
            f"ZooKeeper at {hosts} refused this for lack of permission (NoAuthError) on "
            f"{target.settings.path}: pass the identity that owns it with --zk-auth or "
            "--zk-auth-file"
        ) from None
    except ZK_ERRORS as exc:
        raise CliError(f"ZooKeeper error at {hosts}: {one_line(exc)}") from None
    finally:
        client.stop()
        client.close()


def _start(client: Any, target: Target) -> None:
    try:
        start_client(client, target.settings, target.timeout)
    except ZooKeeperTrustError as exc:  # bad credentials or TLS: named, not "unreachable"
        raise CliError(str(exc)) from None
    except ZK_ERRORS:
        raise CliError(
            f"ZooKeeper unreachable at {target.settings.zk_hosts} within {target.timeout:g} s"
        ) from None


def _quiet_kazoo_logging() -> None:
    """Keep kazoo's connection warnings off stderr unless logging is configured."""
    logger = logging.getLogger(KAZOO_LOGGER)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: At most this many sibling paths are named in the "does not exist" message.
MAX_SIBLINGS = 20


def missing_path(client: Any, target: Target) -> str:
    """One line: the path does not exist, and which app paths exist beside it."""
    root, hosts = target.settings.path, target.settings.zk_hosts
    found = sibling_paths(client, root)
    if found is None:
        return f"path {root} does not exist at {hosts}, nor does its parent"
    parent, paths = found
    if not paths:
        return f"path {root} does not exist at {hosts}; {parent} is empty"
    listed = ", ".join(cell(p) for p in paths[:MAX_SIBLINGS])
    more = f" and {len(paths) - MAX_SIBLINGS} more" if len(paths) > MAX_SIBLINGS else ""
    return f"path {root} does not exist at {hosts}; paths under {parent}: {listed}{more}"
