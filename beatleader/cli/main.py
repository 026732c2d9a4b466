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
  (:mod:`beatleader.zk.trust`), not "unreachable"; a tree that anyone may write although auth is
  set is listed under the status warnings.
* ``status`` only reads; a root path that does not exist exits 2 (bad input, like a typo),
  naming the paths that exist under its parent; one that exists without contenders exits 1.
  ``resign`` deletes only the leader's contender node; ``prune`` only state nodes of entries no
  running schedule holds (:mod:`beatleader.ops.prune`). All ZooKeeper reading lives in
  :mod:`beatleader.ops.status`, rendering in :mod:`beatleader.ops.render`, options, settings and the
  connection in :mod:`beatleader.cli.connect` (its names are re-exported here); this module runs
  the commands and prints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any

import click

from beatleader._version import __version__
from beatleader.cli.connect import (
    DEFAULT_TIMEOUT,
    EXIT_LEADER,
    EXIT_NO_LEADER,
    EXIT_UNREACHABLE,
    GROUP_OPTIONS,
    MAX_SIBLINGS,
    ZK_ERRORS,
    CliError,
    Target,
    connect,
    connection_options,
    load_app,
    missing_path,
    one_line,
    resolve_target,
)
from beatleader.ops.health import entry_problem
from beatleader.ops.prune import PruneRefused, Stale, plan_prune, prune
from beatleader.ops.render import cell, render_status
from beatleader.ops.status import ResignResult, read_status, resign_leader
from beatleader.runs.history import read_history
from beatleader.zk.trust import acl_warnings

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_LEADER",
    "EXIT_NO_LEADER",
    "EXIT_UNREACHABLE",
    "MAX_SIBLINGS",
    "WATCH_INTERVAL",
    "CliError",
    "Target",
    "celery_command",
    "cli",
    "connect",
    "connection_options",
    "load_app",
    "main",
    "missing_path",
    "prune_command",
    "report_resign",
    "resign_command",
    "resolve_target",
    "status_command",
    "watch_status",
]

#: Seconds between two redraws of ``status --watch``.
WATCH_INTERVAL = 1.0


@click.command("status")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every field).")
@click.option("--wide", is_flag=True, help="Every column, nothing cut (wider than 100 columns).")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option("--check", is_flag=True, help="Print nothing on success; one line on failure.")
@click.option(
    "--entry",
    "entry_name",
    metavar="NAME",
    help="With --check: also fail when this entry's last run failed or it stopped succeeding.",
)
@click.pass_context
def status_command(
    ctx: click.Context,
    /,
    as_json: bool,
    wide: bool,
    watch: bool,
    check: bool,
    entry_name: str | None,
    **options: Any,
) -> None:
    """Show who leads, who waits, and every entry: its schedule, last run and next due time.

    Exit code 0: a sound leader exists; 1: the path exists but there is no leader, or its node
    is foreign or rewritten; 2: ZooKeeper unreachable, bad input, or the path does not exist
    (the message lists the paths that do exist under its parent, to make a typo obvious).
    With --check --entry NAME, also 1 when that entry's last finished run failed or it has not
    succeeded for two periods (beatleader.ops.health), and 2 when no such entry exists.
    """
    if sum((as_json, watch, check)) > 1:
        raise click.UsageError("--json, --watch and --check exclude each other", ctx)
    if entry_name is not None and not check:
        raise CliError("--entry needs --check (beatleader status --check --entry NAME)")
    target = resolve_target(ctx, **options)
    history = None
    with connect(target) as client:
        if watch:
            watch_status(client, target, wide=wide)
            return
        status = read_status(client, target.settings.path)
        if not status.exists:
            raise CliError(missing_path(client, target))
        if entry_name is not None:
            if not any(e.name == entry_name for e in status.entries):
                raise CliError(f"no such entry {cell(entry_name)} at {target.where}")
            history = read_history(client, target.settings.path, entry_name)
        open_tree = acl_warnings(client, target.settings.path, target.settings)
    status = dataclasses.replace(status, warnings=(*status.warnings, *open_tree))
    problem = status.leader_problem()
    if problem is None and history is not None:
        problem = entry_problem(status, history)
    code = EXIT_LEADER if problem is None else EXIT_NO_LEADER
    if check and problem is not None:
        raise CliError(f"{problem} at {target.where}", exit_code=code)
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
    elif not check:
        click.echo(render_status(status, target.settings.zk_hosts, wide))
    ctx.exit(code)


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
    except ZK_ERRORS as exc:
        return header + f"ZooKeeper unreachable at {target.settings.zk_hosts}: {one_line(exc)}"


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
        ctx.meta[GROUP_OPTIONS] = options

    if with_options:
        group = connection_options(group)
    group = click.version_option(__version__, prog_name="beatleader")(group)
    command = click.group(name=name, help=help_text, cls=_Group)(click.pass_context(group))
    command.add_command(status_command)
    command.add_command(resign_command)
    command.add_command(prune_command)
    return command


class _Group(click.Group):
    """Adds ``entry`` (``entry.py``) and ``web`` (``web.py``) when asked for: ``entry`` imports
    this module, and ``web`` loads the dashboard only for that command."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "entry":
            from beatleader.cli.entry import entry_group

            return entry_group
        if cmd_name == "web":
            from beatleader.cli.web import web_command

            return web_command
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "entry", "web"})


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
