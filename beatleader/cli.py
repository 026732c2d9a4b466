"""The operator CLI: ``beatleader status`` and ``beatleader resign`` (also ``celery beatleader``).

Guarantees:

* Exit codes are fit for health checks: 0 a sound leader exists (a well-formed, ephemeral
  contender node holding readable, unrewritten ContenderInfo; ``resign``: leadership stepped
  down), 1 ZooKeeper answered but there is no sound leader (``resign``: nothing to resign, or
  leadership did not move in time), 2 ZooKeeper unreachable within ``--timeout`` or bad input
  (settings, options, an app that cannot be loaded).
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
* ``status`` only reads; ``resign`` deletes only the leader's contender node. All ZooKeeper
  reading lives in :mod:`beatleader.status`; this module parses options, connects and renders.
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
from beatleader.status import Contender, Entry, ResignResult, Status, read_status, resign_leader
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
    return Target(settings, float(value.get("timeout") or DEFAULT_TIMEOUT))


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


# --- rendering -------------------------------------------------------------------------------


def render_status(status: Status, target: Target) -> str:
    """The human-readable status: leader, queue, entries, warnings."""
    sections = [
        f"ZooKeeper {target.settings.zk_hosts}  path {status.root}",
        _leader_line(status.leader),
        "",
        "Contenders (queue order):",
        _indent(_contender_table(status.contenders)),
        "",
        "Entries:",
        _indent(_entry_table(status.entries)),
    ]
    if status.warnings:
        sections += ["", "Warnings:", *(f"  ! {_cell(w)}" for w in status.warnings)]
    return "\n".join(sections)


def _leader_line(leader: Contender | None) -> str:
    if leader is None:
        return "Leader: none"
    return f"Leader: {_cell(leader.label())} since {leader.since or '?'}"


def _contender_table(contenders: tuple[Contender, ...]) -> str:
    if not contenders:
        return "(none)"
    headers = ["#", "IDENTITY", "HOST", "PID", "VERSION", "FINGERPRINT", "SINCE", "NODE"]
    rows: list[list[Any]] = []
    for position, c in enumerate(contenders, 1):
        mark = f"{position}*" if position == 1 else str(position)
        info = c.info
        fields = (
            [info.identity, info.host, info.pid, info.version, info.fingerprint] if info else []
        )
        rows.append([mark, *(fields or ["?"] * 5), c.since, c.node])
    return table(headers, rows)


def _entry_table(entries: tuple[Entry, ...]) -> str:
    if not entries:
        return "(none)"
    headers = ["NAME", "LAST RUN", "RUNS", "SKIPPED", "LAST TASK ID", "WRITTEN BY"]
    rows: list[list[Any]] = []
    for e in entries:
        s = e.state
        if s is None:
            rows.append([e.name, "(unreadable)", "", "", "", ""])
            continue
        values = [s.last_run_at, s.total_run_count, s.skipped_count, s.last_task_id, s.written_by]
        rows.append([e.name, *values])
    return table(headers, rows)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if text.isprintable() else repr(text)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# --- commands --------------------------------------------------------------------------------


@click.command("status")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option("--check", is_flag=True, help="Print nothing on success; one line on failure.")
@click.pass_context
def status_command(
    ctx: click.Context, /, as_json: bool, watch: bool, check: bool, **options: Any
) -> None:
    """Show who leads, who waits, and what the schedule has done.

    Exit code 0: a sound leader exists; 1: no leader, or its node is foreign or rewritten;
    2: ZooKeeper unreachable or bad input.
    """
    if sum((as_json, watch, check)) > 1:
        raise click.UsageError("--json, --watch and --check exclude each other", ctx)
    target = resolve_target(ctx, **options)
    with connect(target) as client:
        if watch:
            watch_status(client, target)
            return
        status = read_status(client, target.settings.path)
        open_tree = acl_warnings(client, target.settings.path, target.settings)
    status = dataclasses.replace(status, warnings=(*status.warnings, *open_tree))
    problem = status.leader_problem()
    code = EXIT_LEADER if problem is None else EXIT_NO_LEADER
    if check and problem is not None:
        raise CliError(f"{problem} at {target.where}", exit_code=code)
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
    elif not check:
        click.echo(render_status(status, target))
    ctx.exit(code)


def watch_status(client: Any, target: Target, interval: float = WATCH_INTERVAL) -> None:
    """Clear the screen and redraw the status every ``interval`` seconds until Ctrl-C."""
    try:
        while True:
            frame = _watch_frame(client, target, interval)
            click.clear()
            click.echo(frame)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _watch_frame(client: Any, target: Target, interval: float) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = f"beatleader status, every {interval:g} s (Ctrl-C to stop)  {stamp}\n"
    if not client.connected:
        return header + f"ZooKeeper unreachable at {target.settings.zk_hosts}: reconnecting"
    try:
        return header + render_status(read_status(client, target.settings.path), target)
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


def _build_group(name: str, with_options: bool, help_text: str) -> click.Group:
    def group(ctx: click.Context, **options: Any) -> None:
        ctx.meta[_GROUP_OPTIONS] = options

    if with_options:
        group = connection_options(group)
    group = click.version_option(__version__, prog_name="beatleader")(group)
    command = click.group(name=name, help=help_text)(click.pass_context(group))
    command.add_command(status_command)
    command.add_command(resign_command)
    return command


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
