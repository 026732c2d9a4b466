"""``beatleader entry ...``: change the schedule while beat runs (also ``celery -A proj beatleader
entry ...``).

Subcommands: ``add``, ``update``, ``remove``, ``pause``, ``resume``, ``run``, ``backfill``,
``list``, ``history``; each
takes the connection flags of the other commands (``--zk-hosts``, ``--path``, ``-A``,
``--zk-auth``, ``--zk-tls*``; ``cli.connection_options``). The work is done by
:class:`beatleader.entries.api.EntryStore`; this module parses options and prints.

Guarantees: exit 0 on success; 2 on bad input (an unknown entry, an unparsable schedule or JSON,
a name a static entry has, a task the ``-A`` app does not know without ``--force``, bad settings,
``list`` of a root path that does not exist) or when ZooKeeper is unreachable or refuses
(``NoAuthError``), always with one line ``beatleader: ...`` on stderr and never a traceback.
Option values are parsed here, not by click, so that a bad number is such a line too. Text from
ZooKeeper is printed escaped (``render.cell``).

Not guaranteed: that the leader has applied the change when the command returns (it does within
about a second when one leads; ``entry list`` shows the stored definitions, not the leader's
memory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from beatleader.cli.connect import (
    EXIT_UNREACHABLE,
    CliError,
    connect,
    connection_options,
    missing_path,
    resolve_target,
)
from beatleader.config import ConfigError
from beatleader.entries.api import EntryStore
from beatleader.entries.listing import EntryInfo
from beatleader.ops.render import cell, epoch_time, seconds, table
from beatleader.runs.history import History
from beatleader.runs.records import RunRecord
from beatleader.schedules.backfill import DEFAULT_MAX
from beatleader.schedules.checks import exc_line
from beatleader.schedules.definitions import DefinitionError

F = TypeVar("F", bound=Callable[..., Any])


def schedule_options(func: F) -> F:
    """The options of ``add`` and ``update`` (all strings: parsed and checked by us)."""
    decorators = [
        click.option("--task", help="Task name, e.g. proj.tasks.report."),
        click.option("--every", help="Interval: 30s, 90m, 2h, 1d (seconds without a unit)."),
        click.option("--cron", help="Crontab 'minute hour day-of-month month day-of-week'."),
        click.option("--timezone", help="IANA time zone of --cron (default: the app's)."),
        click.option("--at", help="One run at this ISO 8601 time with offset, then done."),
        click.option("--args", help="JSON list of positional arguments."),
        click.option("--kwargs", help="JSON object of keyword arguments."),
        click.option("--queue", help="Queue to send to."),
        click.option("--priority", help="Message priority (integer 0-255)."),
        click.option("--expires", help="Seconds after which an unstarted run is discarded."),
        click.option(
            "--overlap",
            help="A run due while the last still runs: allow (default), skip, buffer-one.",
        ),
        click.option(
            "--pause-after-failures",
            help="Pause the entry after N failed runs in a row (0: never).",
        ),
        click.option(
            "--catchup", help="Missed runs after a downtime: once, skip (with a window), all."
        ),
        click.option(
            "--catchup-window", help="With skip: missed runs due longer ago are skipped (30s)."
        ),
        click.option("--max-catchup", help="With all: most missed runs sent (default 100)."),
        click.option("--jitter", help="Spread each run over [due, due + jitter), e.g. 30s."),
        click.option("--start", help="No run before this ISO 8601 time with offset."),
        click.option("--end", help="No run after this ISO 8601 time with offset."),
        click.option("--max-runs", help="The entry is done after N runs."),
        click.option("--force", is_flag=True, help="Accept a task the -A app does not know."),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@click.group("entry")
def entry_group() -> None:
    """Change the schedule at runtime: runtime entries, pause/resume, run now."""


@contextmanager
def entry_store(
    ctx: click.Context, options: dict[str, Any], must_exist: bool = False
) -> Iterator[EntryStore]:
    """An EntryStore on a started client; bad input becomes a one-line exit 2.

    ``must_exist``: a root path that does not exist is an error (a typo), as for ``status``.
    """
    target = resolve_target(ctx, **options)
    with connect(target) as client:
        if must_exist and client.exists(target.settings.path) is None:
            raise CliError(missing_path(client, target))
        try:
            store = EntryStore(client, target.settings.path, target.app)
            store.option_names = OPTION_FLAGS
            yield store
        except (DefinitionError, ConfigError) as exc:
            raise CliError(str(exc), EXIT_UNREACHABLE) from None


#: The flag of each schedule-policy option, for the errors of ``entries.spec.options_of``.
OPTION_FLAGS = {
    "overlap": "--overlap",
    "pause_after_failures": "--pause-after-failures",
    "catchup": "--catchup",
    "catchup_window": "--catchup-window",
    "max_catchup": "--max-catchup",
    "jitter": "--jitter",
    "start_at": "--start",
    "end_at": "--end",
    "max_runs": "--max-runs",
}


def _spec(values: dict[str, Any]) -> dict[str, Any]:
    """The EntryStore keyword arguments of the add/update options (None: not given)."""
    return {
        "task": values["task"],
        "every": values["every"],
        "cron": values["cron"],
        "timezone": values["timezone"],
        "at": values["at"],
        "args": _json(values["args"], "--args", list, "a JSON list, e.g. '[1, \"a\"]'"),
        "kwargs": _json(values["kwargs"], "--kwargs", dict, "a JSON object, e.g. '{\"k\": 1}'"),
        "queue": values["queue"],
        "priority": _number(values["priority"], "--priority", int),
        "expires": _number(values["expires"], "--expires", float),
        "overlap": values["overlap"],
        "pause_after_failures": _failures(values["pause_after_failures"]),
        "catchup": values["catchup"],
        "catchup_window": values["catchup_window"],
        "max_catchup": _number(values["max_catchup"], "--max-catchup", int),
        "jitter": values["jitter"],
        "start_at": values["start"],
        "end_at": values["end"],
        "max_runs": _number(values["max_runs"], "--max-runs", int),
        "force": values["force"],
    }


_SPEC_NAMES = (
    "task", "every", "cron", "timezone", "at", "args", "kwargs", "queue", "priority", "expires",
    "overlap", "pause_after_failures", "catchup", "catchup_window", "max_catchup", "jitter",
    "start", "end", "max_runs", "force",
)  # fmt: skip


def _failures(text: str | None) -> int | None:
    count = _number(text, "--pause-after-failures", int)
    if count is not None and count < 0:
        raise CliError(f"--pause-after-failures {text!r} is negative: give N >= 1, or 0 (never)")
    return count  # type: ignore[no-any-return]


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = {k: options.pop(k) for k in _SPEC_NAMES}
    return _spec(spec), options


def _json(text: str | None, option: str, kind: type, valid: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CliError(f"{option} is not JSON ({exc_line(exc)}): give {valid}") from None
    if not isinstance(value, kind):
        raise CliError(f"{option} must be {valid}, not {type(value).__name__}")
    return value


def _number(text: str | None, option: str, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise CliError(f"{option} {text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CliError(f"{option} {text!r} is not a finite number")
    return value


@entry_group.command("add")
@click.argument("name")
@schedule_options
@connection_options
@click.pass_context
def add_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Define runtime entry NAME: --task and one of --every, --cron, --at."""
    spec, connection = _split(options)
    if not spec["task"]:
        raise CliError("entry add needs --task (the task name, e.g. proj.tasks.report)")
    args = spec.pop("args")
    kwargs = spec.pop("kwargs")
    with entry_store(ctx, connection) as store:
        definition = store.add(name, args=args or (), kwargs=kwargs or {}, **spec)
    click.echo(f"added {cell(name)}: {definition.describe()}, task {cell(definition.task)}")


@entry_group.command("update")
@click.argument("name")
@schedule_options
@connection_options
@click.pass_context
def update_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Change the given fields of runtime entry NAME (others stay as they are)."""
    spec, connection = _split(options)
    if all(value in (None, False) for value in spec.values()):
        raise CliError("entry update needs an option to change (--task, --every, --cron, ...)")
    with entry_store(ctx, connection) as store:
        definition = store.update(name, **spec)
    click.echo(f"updated {cell(name)}: {definition.describe()}, task {cell(definition.task)}")


@entry_group.command("remove")
@click.argument("name")
@connection_options
@click.pass_context
def remove_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Delete runtime entry NAME (its run state stays until 'beatleader prune')."""
    with entry_store(ctx, options) as store:
        store.remove(name)
    click.echo(f"removed {cell(name)}")


@entry_group.command("pause")
@click.argument("name")
@connection_options
@click.pass_context
def pause_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Stop scheduling NAME (a runtime or a static beat_schedule entry) until resumed."""
    with entry_store(ctx, options) as store:
        source = store.pause(name)
    click.echo(f"paused {cell(name)} ({source})")


@entry_group.command("resume")
@click.argument("name")
@connection_options
@click.pass_context
def resume_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Schedule NAME again."""
    with entry_store(ctx, options) as store:
        source = store.resume(name)
    click.echo(f"resumed {cell(name)} ({source})")


@entry_group.command("run")
@click.argument("name")
@connection_options
@click.pass_context
def run_command(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Run NAME once now, besides its schedule (the leader sends it, with its own task id)."""
    with entry_store(ctx, options) as store:
        path = store.run(name)
    click.echo(f"requested a run of {cell(name)}: {cell(path)}")


@entry_group.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, help="First time, ISO 8601 with a UTC offset.")
@click.option("--to", "end", required=True, help="Last time (included), ISO 8601 with offset.")
@click.option("--max", "limit", default=str(DEFAULT_MAX), help="Refuse a range of more runs.")
@click.option("--dry-run", is_flag=True, help="List the runs' times; write nothing.")
@connection_options
@click.pass_context
def backfill_command(
    ctx: click.Context, /, name: str, start: str, end: str, limit: str, dry_run: bool,
    **options: Any,
) -> None:  # fmt: skip
    """Publish every run NAME's schedule has from --from to --to, each once (deterministic
    task ids from the entry and the run's time: a backfill asked twice runs once with the
    worker guard)."""
    count = _number(limit, "--max", int)
    with entry_store(ctx, options) as store:
        done = store.backfill(name, start, end, count, dry_run)
    times = done.times
    if dry_run and times is not None:
        for moment in times:
            click.echo(moment.isoformat())
        click.echo(f"{len(times)} run(s) of {cell(name)} (dry run: nothing written)")
        return
    runs = f"{len(times)} run(s)" if times is not None else "the runs (computed by the leader)"
    click.echo(f"requested a backfill of {runs} of {cell(name)}: {cell(done.request or '')}")


@entry_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (every field).")
@connection_options
@click.pass_context
def list_command(ctx: click.Context, /, as_json: bool, **options: Any) -> None:
    """Every static and runtime entry: source, state, schedule, task, next due time."""
    with entry_store(ctx, options, must_exist=True) as store:
        found = store.list_entries()
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in found], indent=2))
    else:
        click.echo(render_entries(found))


@entry_group.command("history")
@click.argument("name")
@click.option("-n", "--limit", "limit", default="20", help="How many runs (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every field).")
@click.option("--wide", is_flag=True, help="Full times; cut nothing.")
@connection_options
@click.pass_context
def history_command(
    ctx: click.Context, /, name: str, limit: str, as_json: bool, wide: bool, **options: Any
) -> None:
    """The last runs of NAME: when sent, started where, how long, outcome, error."""
    count = _number(limit, "-n/--limit", int)
    if count < 1:
        raise CliError(f"-n/--limit must be at least 1, not {count}")
    with entry_store(ctx, options, must_exist=True) as store:
        found = store.history(name, count)
    if as_json:
        click.echo(json.dumps(found.as_json(), indent=2))
    else:
        click.echo(render_history(found, wide))


def render_history(found: History, wide: bool = False) -> str:
    """The table of ``entry history`` (times UTC; STARTED: after the due time), and where the
    history comes from. Narrow: fits 100 columns; ``wide``: full times, nothing cut."""
    lines = [f"history of {cell(found.name)} (newest first, times UTC)"]
    if found.records:
        headers = ["RUN", "OUTCOME", "DUE", "STARTED", "DURATION", "WORKER", "ERROR / REASON"]
        rows = [_history_row(r, wide) for r in found.records]
        lines.append(table(headers, rows, wide))
    else:
        lines.append("(no runs)")
    if found.paused:
        lines.append(f"paused: {cell(found.paused)}")
    if found.note:
        lines.append(f"note: {found.note}")
    return "\n".join(lines)


def _history_row(r: RunRecord, wide: bool) -> list[Any]:
    due = epoch_time(r.due_at)
    started: str | None = epoch_time(r.started_at)
    if not wide:
        due = due[:14] if due else None
        if r.started_at is not None and r.due_at is not None:
            started = "+" + (seconds(max(0.0, r.started_at - r.due_at)) or "")
    outcome = r.outcome.value + (f" #{r.attempt + 1}" if r.attempt else "")
    return [
        r.ordinal,
        outcome,
        due,
        started,
        seconds(r.duration),
        f"{r.host}:{r.pid}" if r.host else None,
        r.error or r.reason,
    ]


def _pending_cell(info: EntryInfo) -> str:
    """PENDING: run-now requests, and backfills not done yet (``2``, ``1 backfill``)."""
    parts = [str(info.pending_runs)] if info.pending_runs else []
    if info.pending_backfills:
        parts.append(f"{info.pending_backfills} backfill")
    return " + ".join(parts)


def render_entries(found: list[EntryInfo]) -> str:
    """The table of ``entry list`` (times UTC); problems listed below it."""
    if not found:
        return "(no entries)"
    headers = ["NAME", "SOURCE", "STATE", "SCHEDULE", "TASK", "NEXT DUE", "RUNS", "PENDING"]
    rows = [
        [
            e.name,
            e.source,
            e.state,
            e.schedule,
            e.task,
            e.next_due,
            e.total_run_count,
            _pending_cell(e),
        ]
        for e in found
    ]
    lines = [table(headers, rows)]
    lines += [f"! {cell(e.name)}: {cell(e.problem)}" for e in found if e.problem]
    lines += [f"  {cell(e.name)} paused: {cell(e.pause_note)}" for e in found if e.pause_note]
    return "\n".join(lines)
