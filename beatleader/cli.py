"""The operator CLI: ``beatleader status``, ``resign``, ``prune`` (also ``celery beatleader``).

Guarantees:

* Exit codes are fit for health checks: 0 a sound leader exists (a well-formed, ephemeral
  contender node holding readable, unrewritten ContenderInfo; ``resign``: leadership stepped
  down), 1 ZooKeeper answered but there is no sound leader (``resign``: nothing to resign, or
  leadership did not move in time; ``prune``: refused, or a node was written meanwhile), 2
  ZooKeeper unreachable within ``--timeout`` or bad input (settings, options, an app that cannot
  be loaded, a ``status`` path that does not exist: a typo is not an outage).
* Every error is one line on stderr starting with ``beatleader:``, never a traceback, whatever
  another client wrote into the tree; names and values from ZooKeeper are printed escaped.
* Settings are resolved like the scheduler's (:meth:`Settings.from_app`): ``--zk-hosts`` and
  ``--path`` win over the app's configuration, which wins over ``BEATLEADER_ZK_HOSTS`` and
  ``BEATLEADER_PATH``, which win over the defaults. The app is ``-A/--app`` or, under
  ``celery -A proj beatleader``, celery's app.
* ``--zk-auth``, ``--zk-auth-file``, ``--zk-tls`` and the other ``--zk-tls-*`` flags override the
  settings of the same name. Bad credentials or a TLS failure exit 2 with the cause
  (:mod:`beatleader.trust`), not "unreachable"; a tree that anyone may write although auth is
  set is listed under the status warnings.
* ``status`` only reads; a root path that does not exist exits 2 (bad input, like a typo),
  naming the paths that exist under its parent; one that exists without contenders exits 1.
  ``resign`` deletes only the leader's contender node; ``prune`` only state nodes of entries no
  running schedule holds (:mod:`beatleader.prune`). All ZooKeeper reading lives in
  :mod:`beatleader.status`, rendering in :mod:`beatleader.render`; this module parses options,
  connects and prints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, TypeVar

import click
from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError

from beatleader._version import __version__
from beatleader.client import make_client
from beatleader.config import ConfigError, Settings
from beatleader.kazoolog import KAZOO_LOGGER
from beatleader.prune import PruneRefused, Stale, plan_prune, prune
from beatleader.render import cell, render_status
from beatleader.status import ResignResult, read_status, resign_leader, sibling_paths
from beatleader.trust import ZooKeeperTrustError, acl_warnings, start_client

EXIT_LEADER = 0
EXIT_NO_LEADER = 1
EXIT_UNREACHABLE = 2

#: Seconds allowed to reach ZooKeeper (and, for ``resign``, for another contender to lead).
DEFAULT_TIMEOUT = 5.0
#: Seconds between two redraws of ``status --watch``.
WATCH_INTERVAL = 1.0

_GROUP_OPTIONS = "beatleader.group_options"
_ZK_ERRORS = (KazooException, KazooTimeoutError)

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
    group = ctx.meta.get(_GROUP_OPTIONS, {})
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
        raise CliError(f"cannot load app {name!r}: {_one_line(exc)}") from None
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
        raise CliError(f"bad ZooKeeper hosts {hosts!r}: {_one_line(exc)}") from None
    try:
        _start(client, target)
        yield client
    except NoAuthError:
        raise CliError(
            f"ZooKeeper at {hosts} refused this for lack of permission (NoAuthError) on "
            f"{target.settings.path}: pass the identity that owns it with --zk-auth or "
            "--zk-auth-file"
        ) from None
    except _ZK_ERRORS as exc:
        raise CliError(f"ZooKeeper error at {hosts}: {_one_line(exc)}") from None
    finally:
        client.stop()
        client.close()


def _start(client: Any, target: Target) -> None:
    try:
        start_client(client, target.settings, target.timeout)
    except ZooKeeperTrustError as exc:  # bad credentials or TLS: named, not "unreachable"
        raise CliError(str(exc)) from None
    except _ZK_ERRORS:
        raise CliError(
            f"ZooKeeper unreachable at {target.settings.zk_hosts} within {target.timeout:g} s"
        ) from None


def _quiet_kazoo_logging() -> None:
    """Keep kazoo's connection warnings off stderr unless logging is configured."""
    logger = logging.getLogger(KAZOO_LOGGER)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- commands --------------------------------------------------------------------------------


@click.command("status")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every field).")
@click.option("--wide", is_flag=True, help="Every column, nothing cut (wider than 100 columns).")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option("--check", is_flag=True, help="Print nothing on success; one line on failure.")
@click.pass_context
def status_command(
    ctx: click.Context, /, as_json: bool, wide: bool, watch: bool, check: bool, **options: Any
) -> None:
    """Show who leads, who waits, and every entry: its schedule, last run and next due time.

    Exit code 0: a sound leader exists; 1: the path exists but there is no leader, or its node
    is foreign or rewritten; 2: ZooKeeper unreachable, bad input, or the path does not exist
    (the message lists the paths that do exist under its parent, to make a typo obvious).
    """
    if sum((as_json, watch, check)) > 1:
        raise click.UsageError("--json, --watch and --check exclude each other", ctx)
    target = resolve_target(ctx, **options)
    with connect(target) as client:
        if watch:
            watch_status(client, target, wide=wide)
            return
        status = read_status(client, target.settings.path)
        if not status.exists:
            raise CliError(missing_path(client, target))
        open_tree = acl_warnings(client, target.settings.path, target.settings)
    status = dataclasses.replace(status, warnings=(*status.warnings, *open_tree))
    problem = status.leader_problem()
    code = EXIT_LEADER if problem is None else EXIT_NO_LEADER
    if check and problem is not None:
        raise CliError(f"{problem} at {target.where}", exit_code=code)
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
    elif not check:
        click.echo(render_status(status, target.settings.zk_hosts, wide))
    ctx.exit(code)


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


def watch_status(
    client: Any, target: Target, interval: float = WATCH_INTERVAL, wide: bool = False
) -> None:
    """Clear the screen and redraw the status every ``interval`` seconds until Ctrl-C."""
    try:
        while True:
            frame = _watch_frame(client, target, interval, wide)
            click.clear()
            click.echo(frame)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _watch_frame(client: Any, target: Target, interval: float, wide: bool = False) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = f"beatleader status, every {interval:g} s (Ctrl-C to stop)  {stamp}\n"
    if not client.connected:
        return header + f"ZooKeeper unreachable at {target.settings.zk_hosts}: reconnecting"
    try:
        status = read_status(client, target.settings.path)
        if not status.exists:
            return header + missing_path(client, target)
        return header + render_status(status, target.settings.zk_hosts, wide)
    except _ZK_ERRORS as exc:
        return header + f"ZooKeeper unreachable at {target.settings.zk_hosts}: {_one_line(exc)}"


@click.command("resign")
@connection_options
@click.pass_context
def resign_command(ctx: click.Context, /, **options: Any) -> None:
    """Make the current leader step down so that the next contender leads.

    The leader's contender node is deleted; its scheduler queues again at the back. Waits up to
    --timeout for another contender to lead. Exit code 0: done; 1: there was no leader, or
    leadership did not move in time; 2: ZooKeeper unreachable or bad input.
    """
    target = resolve_target(ctx, **options)
    with connect(target) as client:
        result = resign_leader(client, target.settings.path, target.timeout)
    report_resign(result, target)


def report_resign(result: ResignResult, target: Target) -> None:
    """Print who led and who leads now; raise :class:`CliError` (exit 1) on failure."""
    previous = result.previous
    if previous is None:
        raise CliError(f"no leader at {target.where}: nothing to resign", EXIT_NO_LEADER)
    click.echo(f"led: {previous.label()}")
    if result.moved and result.current is not None:
        click.echo(f"leads now: {result.current.label()}")
    elif result.other_contenders == 0:
        again = result.current.label() if result.current else previous.label()
        click.echo(f"leads now: no other contender exists; {again} queues again and leads again")
    else:
        now = result.current.label() if result.current else "nobody"
        raise CliError(
            f"leadership did not move within {target.timeout:g} s; first in queue: {now}",
            EXIT_NO_LEADER,
        )


@click.command("prune")
@connection_options
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--force", is_flag=True, help="Prune even while no instance runs or they disagree.")
@click.pass_context
def prune_command(ctx: click.Context, /, dry_run: bool, force: bool, **options: Any) -> None:
    """Remove the state of entries that no running instance schedules.

    Refuses while no instance runs (nothing to compare against), while the instances run
    different schedules, or while one's schedule is unknown, unless --force. Each node is
    deleted at the version read: one a leader wrote meanwhile is kept. Exit code 0: done (or
    nothing to do); 1: refused, or some node was kept; 2: ZooKeeper unreachable or bad input.
    """
    target = resolve_target(ctx, **options)
    with connect(target) as client:
        try:
            stale = plan_prune(client, target.settings.path, force=force)
        except PruneRefused as exc:
            raise CliError(f"not pruning: {exc}", EXIT_NO_LEADER) from None
        if not stale:
            click.echo(f"nothing to prune under {target.settings.path}")
            return
        if dry_run:
            _list_stale("would remove", stale)
            return
        result = prune(client, target.settings.path, stale)
    for name in result.deleted:
        click.echo(f"removed {cell(name)}")
    if result.kept:
        listed = ", ".join(cell(n) for n in result.kept)
        raise CliError(f"kept (written while pruning): {listed}", EXIT_NO_LEADER)


def _list_stale(verb: str, stale: list[Stale]) -> None:
    for item in stale:
        click.echo(f"{verb} {cell(item.name)}")


def _build_group(name: str, with_options: bool, help_text: str) -> click.Group:
    def group(ctx: click.Context, **options: Any) -> None:
        ctx.meta[_GROUP_OPTIONS] = options

    if with_options:
        group = connection_options(group)
    group = click.version_option(__version__, prog_name="beatleader")(group)
    command = click.group(name=name, help=help_text, cls=_Group)(click.pass_context(group))
    command.add_command(status_command)
    command.add_command(resign_command)
    command.add_command(prune_command)
    return command


class _Group(click.Group):
    """Adds ``entry`` (``entrycli.py``) when asked for: that module imports this one."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "entry":
            from beatleader.entrycli import entry_group

            return entry_group
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "entry"})


_HELP = "Inspect and steer beatleader's leader election in ZooKeeper."

#: ``beatleader ...`` (the console script).
cli = _build_group("beatleader", True, _HELP)
#: ``celery -A proj beatleader ...`` (entry point group ``celery.commands``).
celery_command = _build_group("beatleader", False, _HELP + " The app is celery's -A app.")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; exits with the command's exit code."""
    cli.main(args=argv, prog_name="beatleader")


if __name__ == "__main__":
    main()
