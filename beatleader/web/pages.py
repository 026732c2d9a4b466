"""The dashboard's HTML: whole pages of plain HTML, readable and usable with JavaScript off.

Guarantees:

* Every value that may come from ZooKeeper (names, hosts, identities, schedules, tasks, errors,
  warnings, notes) goes through :func:`text`: HTML-escaped (quotes too, so it is safe in an
  attribute) and cut at :attr:`PagePolicy.max_text` characters, so an entry named
  ``<script>alert(1)</script>`` shows as that text and a huge value does not swamp a page.
* No inline script or style: the page loads ``static/dashboard.css`` and ``static/dashboard.js``
  (the Content-Security-Policy of :mod:`beatleader.web.app` forbids anything else); without
  JavaScript a ``<noscript>`` refresh reloads the page every :attr:`PagePolicy.noscript_refresh`
  seconds.
* Every form is a POST carrying the viewer's CSRF token; action buttons are shown only when the
  dashboard is writable.

Not guaranteed: a stable markup (tests use the ``id`` and ``data-*`` attributes, not the layout).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from beatleader._version import __version__
from beatleader.ops.model import Contender
from beatleader.runs.history import History
from beatleader.runs.records import RunRecord
from beatleader.web.snapshot import Row, Snapshot, SnapshotPolicy, late_by

__all__ = [
    "PagePolicy",
    "Viewer",
    "entries_page",
    "entry_page",
    "login_page",
    "message_page",
    "overview_page",
    "text",
]


class PagePolicy:
    """Tunables of the pages."""

    #: Longest text shown from ZooKeeper; longer is cut with an ellipsis.
    max_text = 200
    #: Seconds between reloads of a page without JavaScript.
    noscript_refresh = 10
    #: Milliseconds between refreshes by ``dashboard.js``.
    refresh_ms = 2000


@dataclass(frozen=True)
class Viewer:
    """Who looks at the page, and where the dashboard is mounted."""

    #: The dashboard's URL prefix (WSGI ``SCRIPT_NAME``), no trailing slash.
    base: str = ""
    writable: bool = False
    principal: str | None = None
    csrf: str = ""
    #: Whether a credential is configured (a login link is shown when writes are allowed).
    login: bool = False

    def url(self, path: str, **query: str) -> str:
        found = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return f"{self.base}{path}{'?' + found if found else ''}"


def text(value: Any, limit: int | None = None) -> str:
    """``value`` as escaped HTML text; None is a dash; cut at ``limit`` characters."""
    if value is None:
        return "&ndash;"
    shown = value if isinstance(value, str) else str(value)
    bound = PagePolicy.max_text if limit is None else limit
    if len(shown) > bound:
        shown = shown[: bound - 1] + "\u2026"
    return html.escape(shown, quote=True)


def when(epoch: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` UTC (escaped), a dash when unknown."""
    if epoch is None:
        return "&ndash;"
    try:
        moment = datetime.fromtimestamp(epoch, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return text(epoch)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def iso(value: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` UTC when it parses, else as text."""
    if not value:
        return "&ndash;"
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return text(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    if value < 0.001:
        return "&lt; 1 ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


# -- the frame -----------------------------------------------------------------------------------


def _frame(
    title: str, body: str, viewer: Viewer, snapshot: Snapshot | None, current: str = ""
) -> str:
    static = viewer.url("/static")
    nav = "".join(
        f'<a href="{viewer.url(path)}"{" aria-current=page" if path == current else ""}>{label}</a>'
        for path, label in (("/", "Overview"), ("/entries", "Entries"))
    )
    who = ""
    if viewer.principal:
        who = (
            f'<form method="post" action="{viewer.url("/logout")}" class="who">'
            f"{_csrf(viewer)}signed in as <b>{text(viewer.principal, 64)}</b> "
            '<button type="submit">Sign out</button></form>'
        )
    elif viewer.login:
        who = f'<a class="who" href="{viewer.url("/login")}">Sign in to change entries</a>'
    where = ""
    if snapshot is not None:
        reach = (
            '<span class="zk ok" id="zk-state">ZooKeeper reachable</span>'
            if snapshot.reachable
            else '<span class="zk down" id="zk-state">ZooKeeper unreachable</span>'
        )
        where = (
            f'<div class="where"><code>{text(snapshot.hosts)}</code> '
            f"<code>{text(snapshot.root)}</code> {reach} "
            f'<span class="read-at">read {iso(snapshot.read_at)} UTC</span></div>'
        )
    banner = ""
    if snapshot is not None and snapshot.problem:
        banner = f'<div class="banner" id="banner" role="alert">{text(snapshot.problem, 500)}</div>'
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)} - beatleader</title>"
        f'<link rel="stylesheet" href="{static}/dashboard.css">'
        f'<script src="{static}/dashboard.js" defer></script>'
        f'<noscript><meta http-equiv="refresh" content="{PagePolicy.noscript_refresh}"></noscript>'
        f'</head><body data-refresh-ms="{PagePolicy.refresh_ms}">'
        f'<header><span class="brand">beatleader</span><nav>{nav}</nav>{who}{where}</header>'
        f'<main id="main">{banner}{body}</main>'
        f"<footer>beatleader {text(__version__)}: dashboard of one app's election and "
        "schedule</footer></body></html>\n"
    )


def _csrf(viewer: Viewer) -> str:
    return f'<input type="hidden" name="csrf" value="{text(viewer.csrf, 200)}">'


# -- overview ------------------------------------------------------------------------------------


def overview_page(snapshot: Snapshot, viewer: Viewer) -> str:
    status = snapshot.status
    parts = ["<h1>Overview</h1>"]
    if status is None:
        parts.append("<p>No status could be read.</p>")
        return _frame("Overview", "".join(parts), viewer, snapshot, "/")
    if not status.exists:
        parts.append(
            f'<p class="notice">{text(status.root)} does not exist: nothing ever ran there '
            "(check --path)</p>"
        )
        return _frame("Overview", "".join(parts), viewer, snapshot, "/")
    leader, problem = status.leader, status.leader_problem()
    if leader is not None and problem is None:
        parts.append(
            f'<section class="leader ok"><h2>Leader</h2><p id="leader" data-pid="'
            f'{text(leader.info.pid if leader.info else "")}">{_label(leader)}</p>'
            f"<p>leads since {iso(leader.since)} UTC (its contender node "
            f"<code>{text(leader.node)}</code>)</p></section>"
        )
    else:
        parts.append(
            f'<section class="leader bad"><h2>Leader</h2><p id="leader" data-pid="">'
            f"{text(problem)}</p></section>"
        )
    parts.append(_contenders(status.contenders))
    parts.append(_warnings(status.warnings))
    counts = _outcome_counts(snapshot.rows)
    parts.append(
        f'<section><h2>Entries</h2><p><a href="{viewer.url("/entries")}">'
        f"{len(snapshot.rows)} entries</a>{counts}</p></section>"
    )
    return _frame("Overview", "".join(parts), viewer, snapshot, "/")


def _label(contender: Contender) -> str:
    info = contender.info
    if info is None:
        return f"unreadable contender node <code>{text(contender.node)}</code>"
    return (
        f"<b>{text(info.identity)}</b> (host <code>{text(info.host)}</code>, pid {text(info.pid)})"
    )


def _contenders(contenders: Iterable[Contender]) -> str:
    rows = []
    for number, c in enumerate(contenders):
        info = c.info
        role = "leader" if number == 0 else f"waits ({number})"
        rows.append(
            f'<tr data-pid="{text(info.pid if info else "")}"><td>{role}</td>'
            f"<td>{text(info.identity if info else None)}</td>"
            f"<td>{text(info.host if info else None)}</td><td>{text(info.pid if info else None)}"
            f"</td><td>{iso(c.since)}</td><td><code>{text(c.node)}</code></td></tr>"
        )
    if not rows:
        return '<section><h2>Contenders</h2><p id="contenders">No instance contends.</p></section>'
    return (
        '<section><h2>Contenders</h2><table id="contenders"><thead><tr><th>role</th>'
        "<th>identity</th><th>host</th><th>pid</th><th>since (UTC)</th><th>node</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _warnings(warnings: Iterable[str]) -> str:
    items = "".join(f"<li>{text(w, 500)}</li>" for w in warnings)
    if not items:
        return '<section><h2>Warnings</h2><p id="warnings">None.</p></section>'
    return f'<section><h2>Warnings</h2><ul id="warnings" class="warnings">{items}</ul></section>'


def _outcome_counts(rows: Iterable[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        key = row.last.outcome.value if row.last else None
        if key:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    listed = ", ".join(
        f'<span class="o o-{text(k)}">{n} {text(k)}</span>' for k, n in sorted(counts.items())
    )
    return f"; last runs: {listed}"


# -- entries -------------------------------------------------------------------------------------


def entries_page(snapshot: Snapshot, viewer: Viewer) -> str:
    parts = ["<h1>Entries</h1>"]
    if snapshot.reachable and snapshot.status is not None and snapshot.status.exists:
        parts.append(_legend())
        parts.append(_entries_table(snapshot.rows, viewer))
        if snapshot.hidden:
            parts.append(f"<p>{snapshot.hidden} more entries not shown.</p>")
    return _frame("Entries", "".join(parts), viewer, snapshot, "/entries")


def _legend() -> str:
    kinds = ("succeeded", "failed", "retrying", "running", "sent", "skipped")
    items = "".join(f'<span class="run o-{k}"></span> {k} ' for k in kinds)
    late = SnapshotPolicy.late_after
    return (
        f'<p class="legend">Last runs, newest on the right: {items}'
        f'<span class="run o-succeeded late"></span> started over {late:g} s late</p>'
    )


def _entries_table(rows: Iterable[Row], viewer: Viewer) -> str:
    body = "".join(_entry_row(row, viewer) for row in rows)
    if not body:
        return '<p id="entries">No entries.</p>'
    return (
        '<table id="entries"><thead><tr><th>entry</th><th>source</th><th>schedule</th>'
        "<th>next due (UTC)</th><th>last run</th><th>duration</th><th>state</th>"
        f"<th>last runs</th>{'<th>actions</th>' if viewer.writable else ''}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _entry_row(row: Row, viewer: Viewer) -> str:
    link = viewer.url("/entry", name=row.name)
    last = row.last
    outcome = last.outcome.value if last else ("sent" if row.last_run_at else None)
    badge = f'<span class="o o-{text(outcome)}">{text(outcome)}</span> ' if outcome else ""
    state = [f'<span class="state s-{text(row.state)}">{text(row.state)}</span>']
    if row.running:
        state.append('<span class="state s-running">running</span>')
    if row.pending_runs:
        state.append(f'<span class="state">{row.pending_runs} run-now pending</span>')
    if row.pending_backfills:
        state.append(f'<span class="state">{row.pending_backfills} backfill pending</span>')
    actions = f"<td>{_actions(row, viewer)}</td>" if viewer.writable else ""
    return (
        f'<tr data-entry="{text(row.name, 10_000)}" data-state="{text(row.state)}">'
        f'<td class="name"><a href="{text(link, 10_000)}">{text(row.name)}</a></td>'
        f"<td>{text(row.source)}</td><td>{text(row.schedule)}</td><td>{iso(row.next_due)}</td>"
        f"<td>{badge}{iso(row.last_run_at)}</td>"
        f"<td>{seconds(last.duration if last else None)}</td><td>{' '.join(state)}</td>"
        f"<td>{_strip(row.runs)}</td>{actions}</tr>"
    )


def _strip(runs: tuple[RunRecord, ...] | None) -> str:
    if runs is None:
        return "&ndash;"
    cells = []
    for record in reversed(runs):  # oldest first: newest on the right
        late = late_by(record)
        is_late = late is not None and late > SnapshotPolicy.late_after
        title = f"run {record.ordinal if record.ordinal is not None else '-'}: "
        title += record.outcome.value
        if late is not None:
            title += f", started {late:.1f} s after due"
        if record.due_at is not None:
            title += f", due {when(record.due_at)}"
        classes = f"run o-{record.outcome.value}{' late' if is_late else ''}"
        cells.append(f'<span class="{classes}" title="{text(title)}"></span>')
    return f'<span class="strip">{"".join(cells)}</span>'


def _actions(row: Row, viewer: Viewer) -> str:
    if row.state in ("invalid", "ignored", "not scheduled", "unknown"):
        return ""
    forms = []
    verbs = ["resume"] if row.state == "paused" else ["pause"]
    verbs.append("run")
    for verb in verbs:
        label = {"pause": "Pause", "resume": "Resume", "run": "Run now"}[verb]
        forms.append(
            f'<form method="post" action="{viewer.url("/action")}" class="action">'
            f"{_csrf(viewer)}"
            f'<input type="hidden" name="name" value="{text(row.name, 10_000)}">'
            f'<button type="submit" name="action" value="{verb}" data-action="{verb}">'
            f"{label}</button></form>"
        )
    return "".join(forms)


# -- one entry -----------------------------------------------------------------------------------


def entry_page(
    snapshot: Snapshot,
    row: Row | None,
    history: History | None,
    viewer: Viewer,
    name: str,
    done: str | None = None,
) -> str:
    parts = [f'<h1>Entry <span id="entry-name">{text(name)}</span></h1>']
    if done:
        parts.append(f'<p class="done" id="done" role="status">{text(done)}</p>')
    if row is None:
        if snapshot.reachable:
            parts.append('<p class="notice" id="missing">No such entry.</p>')
        return _frame(f"Entry {name}", "".join(parts), viewer, snapshot)
    facts = [
        ("source", text(row.source)),
        ("state", text(row.state)),
        ("task", text(row.task)),
        ("schedule", text(row.schedule)),
        ("next due (UTC)", iso(row.next_due)),
        ("last run (UTC)", iso(row.last_run_at)),
        ("runs sent", text(row.total_run_count)),
        ("run-now pending", text(row.pending_runs)),
        ("backfills pending", text(row.pending_backfills)),
        ("paused", text(row.paused)),
        ("changed by", text(row.changed_by)),
        ("changed at", iso(row.changed_at)),
        ("problem", text(row.problem)),
    ]
    parts.append(
        '<dl class="facts">'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v != "&ndash;")
        + "</dl>"
    )
    if viewer.writable and _actions(row, viewer):
        parts.append(f'<div class="actions">{_actions(row, viewer)}</div>')
    definition = row.info.definition if row.info else None
    if definition is not None:
        shown = json.dumps(definition.as_json(), indent=2, sort_keys=True, ensure_ascii=True)
        parts.append(
            f"<details><summary>definition</summary><pre>{text(shown, 20_000)}</pre></details>"
        )
    parts.append(_history(history))
    return _frame(f"Entry {name}", "".join(parts), viewer, snapshot)


def _history(history: History | None) -> str:
    if history is None:
        return ""
    note = f'<p class="notice">{text(history.note)}</p>' if history.note else ""
    rows = []
    for r in history.records:
        late = late_by(r)
        rows.append(
            f'<tr class="o-{text(r.outcome.value)}"><td>{text(r.ordinal)}</td>'
            f'<td><span class="o o-{text(r.outcome.value)}">{text(r.outcome.value)}</span>'
            f"{' (' + text(r.reason) + ')' if r.reason else ''}</td>"
            f"<td>{when(r.due_at)}</td><td>{when(r.started_at)}</td>"
            f"<td>{seconds(late) if late is not None else '&ndash;'}</td>"
            f"<td>{seconds(r.duration)}</td><td>{text(r.host)}</td><td>{text(r.attempt)}</td>"
            f"<td>{text(r.error)}</td></tr>"
        )
    if not rows:
        return f'<section><h2>History</h2>{note}<p id="history">No runs recorded.</p></section>'
    return (
        f'<section><h2>History</h2>{note}<table id="history"><thead><tr><th>run</th>'
        "<th>outcome</th><th>due (UTC)</th><th>started (UTC)</th><th>late by</th>"
        "<th>duration</th><th>host</th><th>attempt</th><th>error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


# -- other pages ---------------------------------------------------------------------------------


def message_page(title: str, message: str, viewer: Viewer) -> str:
    body = f'<h1>{text(title)}</h1><p id="message">{text(message, 1000)}</p>'
    return _frame(title, body, viewer, None)


def login_page(viewer: Viewer, failed: bool = False) -> str:
    error = '<p class="banner" id="login-failed">Wrong credential.</p>' if failed else ""
    body = (
        f"<h1>Sign in</h1>{error}"
        f'<form method="post" action="{viewer.url("/login")}" class="login">{_csrf(viewer)}'
        '<label>User (for a basic-auth file) <input name="user" autocomplete="username">'
        "</label>"
        '<label>Password or token <input name="password" type="password" required '
        'autocomplete="current-password"></label>'
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )
    return _frame("Sign in", body, viewer, None)
