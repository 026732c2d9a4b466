"""Where beatleader keeps things in ZooKeeper, and how their data is encoded.

Under an app's root path (``/beatleader/<app.main>`` by default)::

    election/<uuid>__contender__<seq>   EPHEMERAL|SEQUENTIAL, one per running instance, JSON
                                        ContenderInfo; the lowest sequence leads (``election.py``
                                        names and orders them).
    entries/<quoted entry name>         persistent JSON EntryState, written only by the leader
                                        through the fenced commit (see ``state.py``).
    schedules/<fingerprint>             persistent JSON object {entry name: {task, schedule, ...}}
                                        of one schedule version (older versions: a JSON list of
                                        the names); content-addressed, written once by any
                                        instance (``schedules.py``).
    sources/<source>                    persistent JSON object in the schedules/ format: the entries
                                        a source of dynamic entries holds now (``django``: the
                                        rows of django-celery-beat); written by the leader only,
                                        fenced (``beatleader/django/describe.py``).
    clock                               persistent JSON {identity, local_time}; the leader writes it
                                        to read ZooKeeper's server time (its ``mtime``);
                                        ``planning.py``, ``clockview.py``.
    dedup/<quoted entry>/...            workers' run claims (``dedup.install``, ``claims.py``).
    definitions/<quoted entry name>     persistent JSON runtime entry definition, written by
                                        ``beatleader entry`` / ``entries.py`` (``definitions.py``).
    paused/<quoted entry name>          persistent JSON {changed_by, changed_at}: a static entry
                                        that is paused (runtime entries use their ``enabled``).
    requests/<quoted name>__run__<seq>  persistent SEQUENTIAL JSON {changed_by, changed_at}: one
                                        extra run now, consumed by the leader's fenced commit.
    backfills/<quoted name>__run__<seq> persistent SEQUENTIAL JSON {from, to, max, changed_by,
                                        changed_at}: the runs of a past range (``backfill.py``);
                                        the leader marks it accepted under the fence, publishes
                                        its runs, then deletes it under the fence.

Entry names are percent-quoted so that any Celery entry name (spaces, slashes, non-ASCII) is a
single valid znode name; :func:`unquote_entry_name` gives the original back. This module only
names and encodes: it never talks to ZooKeeper.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote

ELECTION = "election"
ENTRIES = "entries"
SCHEDULES = "schedules"
CLOCK = "clock"
SOURCES = "sources"
DEDUP = "dedup"
DEFINITIONS = "definitions"
PAUSED = "paused"
REQUESTS = "requests"
BACKFILLS = "backfills"
#: Between the quoted entry name and the sequence number of a run request node.
REQUEST_MARKER = "__run__"

#: Namespace of the deterministic task ids (uuid5 of path, entry name and run ordinal).
TASK_ID_NAMESPACE = uuid.UUID("6f6c2d55-9b1e-4c1b-a7f4-626561746c64")


def source_path(root: str, source: str) -> str:
    """The descriptions of the dynamic entries of one source (``schedules.py`` format)."""
    return f"{root}/{SOURCES}/{source}"


def election_path(root: str) -> str:
    return f"{root}/{ELECTION}"


def entries_path(root: str) -> str:
    return f"{root}/{ENTRIES}"


def schedule_path(root: str, fingerprint: str) -> str:
    """JSON list of the entry names of the schedule with this fingerprint."""
    return f"{root}/{SCHEDULES}/{fingerprint}"


def clock_path(root: str) -> str:
    """The node whose ``mtime`` tells the leader ZooKeeper's server time."""
    return f"{root}/{CLOCK}"


def dedup_path(root: str) -> str:
    """Parent of the workers' run claims, one folder per entry (``claims.py``)."""
    return f"{root}/{DEDUP}"


def entry_path(root: str, name: str) -> str:
    return f"{entries_path(root)}/{quote_entry_name(name)}"


def definitions_path(root: str) -> str:
    """Parent of the runtime entry definitions (``definitions.py``)."""
    return f"{root}/{DEFINITIONS}"


def definition_path(root: str, name: str) -> str:
    return f"{definitions_path(root)}/{quote_entry_name(name)}"


def paused_path(root: str) -> str:
    """Parent of the pause markers of static entries."""
    return f"{root}/{PAUSED}"


def paused_entry_path(root: str, name: str) -> str:
    return f"{paused_path(root)}/{quote_entry_name(name)}"


def requests_path(root: str) -> str:
    """Parent of the run-now requests."""
    return f"{root}/{REQUESTS}"


def request_prefix(root: str, name: str) -> str:
    """The path to create, SEQUENTIAL, for one run-now request of ``name``."""
    return f"{requests_path(root)}/{quote_entry_name(name)}{REQUEST_MARKER}"


def backfills_path(root: str) -> str:
    """Parent of the backfill requests."""
    return f"{root}/{BACKFILLS}"


def backfill_prefix(root: str, name: str) -> str:
    """The path to create, SEQUENTIAL, for one backfill request of ``name``."""
    return f"{backfills_path(root)}/{quote_entry_name(name)}{REQUEST_MARKER}"


def request_entry_name(node: str) -> str | None:
    """The entry name of a request node's name (``<quoted>__run__<seq>``), None if not one."""
    quoted, marker, seq = node.rpartition(REQUEST_MARKER)
    if not marker or not quoted or not (seq.isascii() and seq.isdigit()):
        return None
    return unquote_entry_name(quoted)


def quote_entry_name(name: str) -> str:
    """A znode-safe name for ``name`` ('/' and every unsafe byte percent-encoded)."""
    quoted = quote(name, safe="")
    # "." and ".." are reserved znode names; "%2E" unquotes back to ".".
    return quoted.replace(".", "%2E") if quoted.strip(".") == "" else quoted


def unquote_entry_name(quoted: str) -> str:
    return unquote(quoted)


def dedup_folder(
    entry_name: str, incarnation: str | None = None, foreign_root: str | None = None
) -> str:
    """The name of the ``dedup/`` folder of an entry's runs: one per incarnation.

    ``foreign_root``: the beat's root when it is not the worker's own (the worker's claims then
    live under the worker's root, named after both).
    """
    name = entry_name if foreign_root is None else f"{foreign_root}\x00{entry_name}"
    if incarnation is not None:
        name = f"{name}\x00{incarnation}"
    return quote_entry_name(name)


def run_task_id(root: str, entry_name: str, ordinal: int, incarnation: str | None = None) -> str:
    """The task id of run number ``ordinal`` of entry ``entry_name``: same run, same id.

    ``incarnation`` (:attr:`EntryState.incarnation`) tells apart the lives of an entry whose state
    was deleted and created again (``prune``, a deleted tree): their ordinals restart, their ids
    do not repeat. None: state written before incarnations existed (the ids it always had).
    """
    name = f"{root}\x00{entry_name}\x00{ordinal}"
    if incarnation is not None:
        name = f"{name}\x00{incarnation}"
    return str(uuid.uuid5(TASK_ID_NAMESPACE, name))


def backfill_time(scheduled: datetime) -> str:
    """The canonical text of a backfilled run's scheduled time: UTC, to the millisecond."""
    return scheduled.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def backfill_task_id(root: str, entry_name: str, scheduled: str) -> str:
    """The task id of the backfilled run of ``entry_name`` scheduled at ``scheduled``
    (:func:`backfill_time`): the same whoever publishes it and however often it is asked for;
    unlike :func:`run_task_id`, it does not depend on the entry's run count or incarnation."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{root}\x00{entry_name}\x00backfill\x00{scheduled}"))


def backfill_day(scheduled: datetime) -> str:
    """The UTC day of a backfilled run (its claims folder, ``dedup_folder``)."""
    return scheduled.astimezone(timezone.utc).date().isoformat()


def backfill_ordinal(scheduled: datetime) -> int:
    """A backfilled run's number in its day's claims folder: milliseconds since 00:00 UTC, + 1."""
    moment = scheduled.astimezone(timezone.utc)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return (moment - midnight) // timedelta(milliseconds=1) + 1


def backfill_folder_name(entry_name: str, scheduled: datetime) -> str:
    """The name, before quoting, of the claims folder of ``entry_name``'s backfilled runs of one
    UTC day (one folder a day keeps their ordinals, and so the claims' floor, in time order)."""
    return f"{entry_name}\x00backfill\x00{backfill_day(scheduled)}"


def new_incarnation() -> str:
    """A fresh :attr:`EntryState.incarnation`: 16 random hex digits."""
    return uuid.uuid4().hex[:16]


#: Message headers that mark a task message as one run of a beatleader entry (``dedup.py``).
HEADER_ROOT = "beatleader_root"
HEADER_ENTRY = "beatleader_entry"
HEADER_RUN = "beatleader_run"
HEADER_INCARNATION = "beatleader_incarnation"
#: On a backfilled run only: its scheduled time (:func:`backfill_time`).
HEADER_BACKFILL = "beatleader_backfill"


def run_headers(
    root: str, entry_name: str, ordinal: int, incarnation: str | None = None
) -> dict[str, str | int]:
    """The headers beatleader adds to run ``ordinal`` of ``entry_name`` under ``root``."""
    headers: dict[str, str | int] = {
        HEADER_ROOT: root,
        HEADER_ENTRY: entry_name,
        HEADER_RUN: ordinal,
    }
    if incarnation is not None:
        headers[HEADER_INCARNATION] = incarnation
    return headers


def backfill_headers(root: str, entry_name: str, scheduled: datetime) -> dict[str, str | int]:
    """The headers of the backfilled run of ``entry_name`` scheduled at ``scheduled``."""
    return {
        HEADER_ROOT: root,
        HEADER_ENTRY: entry_name,
        HEADER_RUN: backfill_ordinal(scheduled),
        HEADER_BACKFILL: backfill_time(scheduled),
    }


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class ContenderInfo:
    """What each instance publishes in its contender node, for operators and the CLI."""

    identity: str
    host: str
    pid: int
    version: str
    started_at: str
    fingerprint: str
    #: The Celery app's name (``app.main``); None in nodes of versions that did not publish it.
    app: str | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ContenderInfo | None:
        """The info in ``data``, or None when it is not a beatleader contender's ("foreign").

        Strict: every field present with its exact JSON type (``pid`` an int, not a bool), or None;
        ``app`` may be absent or null (older versions did not publish it).
        """
        fields = _json_object(data)
        values: dict[str, Any] = {}
        for name, kind in _CONTENDER_FIELD_TYPES.items():
            value = fields.get(name)
            if type(value) is not kind:
                return None
            values[name] = value
        app = fields.get("app")
        if app is not None and type(app) is not str:
            return None
        return cls(**values, app=app)


#: The exact JSON type of each ContenderInfo field (``type(value) is`` this, so no bool for int).
_CONTENDER_FIELD_TYPES: dict[str, type] = {
    "identity": str,
    "host": str,
    "pid": int,
    "version": str,
    "started_at": str,
    "fingerprint": str,
}


@dataclass(frozen=True)
class EntryState:
    """The shared state of one schedule entry: what a new leader continues from.

    ``total_run_count`` is the ordinal of the latest committed run (its task id is
    :func:`run_task_id` of it); ``published`` says whether that run is known to be published
    (the outbox, see ``scheduler.py``). Data written before the outbox existed has no
    ``published`` field and reads as published (that version published right after committing).
    Times are ZooKeeper server time (the reference clock, see ``planning.py``).
    """

    last_run_at: str | None  # UTC, ISO 8601
    total_run_count: int
    last_task_id: str | None
    written_by: str
    #: Runs skipped because they were later than the misfire grace.
    skipped_count: int = 0
    #: False from the commit of run ``total_run_count`` until it is known to be published.
    published: bool = True
    #: Random, set when the state is first created (or replaces unreadable data) and kept by
    #: every later write: part of the task ids (:func:`run_task_id`), so an entry whose state
    #: was deleted and created again does not reuse the ids (and worker claims) of its past.
    #: None: written by a version without incarnations; its next run gets one.
    incarnation: str | None = None
    #: The last runs the leader sent or skipped, oldest first: ``[ordinal, at, kind]`` each
    #: (``beatleader/runs/records.py`` reads them; here only their shape is kept: a list of
    #: 3-item lists, at most :data:`MAX_RECENT`; anything else reads as no record).
    recent: tuple[Any, ...] = ()

    def encode(self) -> bytes:
        fields: dict[
            str, Any
        ] = {  # by hand: dataclasses.asdict is a deep copy, slow for thousands a second
            "last_run_at": self.last_run_at,
            "last_task_id": self.last_task_id,
            "published": self.published,
            "skipped_count": self.skipped_count,
            "total_run_count": self.total_run_count,
            "written_by": self.written_by,
        }
        if self.incarnation is not None:
            fields["incarnation"] = self.incarnation
        if self.recent:
            fields["recent"] = self.recent
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> EntryState | None:
        """The state in ``data``, or None when it is unreadable (see :meth:`parse`)."""
        return cls.parse(data)[0]

    @classmethod
    def parse(cls, data: bytes) -> tuple[EntryState | None, str]:
        """``(state, "")``, or ``(None, why)`` when ``data`` is not a valid entry state.

        Every field is checked: types (no bool for a count), finite non-negative counts, an
        ISO 8601 ``last_run_at`` with a time zone.
        """
        try:
            value = json.loads(data.decode() if data else "null")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: Recursion
            return None, f"not JSON ({type(exc).__name__})"
        if not isinstance(value, dict):
            return None, f"not a JSON object: {_short(data)}"
        problem = _entry_problem(value)
        if problem:
            return None, problem
        return cls(
            last_run_at=value.get("last_run_at"),
            total_run_count=value.get("total_run_count", 0),
            last_task_id=value.get("last_task_id"),
            written_by=value.get("written_by", ""),
            skipped_count=value.get("skipped_count", 0),
            published=value.get("published", True),
            incarnation=value.get("incarnation"),
            recent=_recent(value.get("recent")),
        ), ""


#: Most leader records kept in an entry's state (``beatleader_history_size`` is at most this).
MAX_RECENT = 1000
#: Longest ``kind`` of a leader record (``sent``, ``skipped:<reason>``).
MAX_RECORD_KIND = 64


def _recent(value: Any) -> tuple[Any, ...]:
    """The well-shaped items of a stored ``recent``: ``[ordinal or null, number, short text]``;
    anything else (a foreign writer's garbage) is dropped here, so a leader carries over only
    records of this shape (and of bounded size) into its next write."""
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value[-MAX_RECENT:] if _is_record(item))


def _is_record(item: Any) -> bool:
    if not isinstance(item, list) or len(item) != 3:
        return False
    ordinal, at, kind = item
    return (
        (ordinal is None or (type(ordinal) is int and ordinal >= 0))
        and type(at) in (int, float)
        and type(kind) is str
        and len(kind) <= MAX_RECORD_KIND
    )


def _entry_problem(fields: dict[str, Any]) -> str:
    """Why ``fields`` is not a valid :class:`EntryState` ("" when it is)."""
    if "total_run_count" not in fields:
        return "no total_run_count"
    for name in ("total_run_count", "skipped_count"):
        count = fields.get(name, 0)
        if type(count) is not int or count < 0:
            return f"{name} is not a non-negative integer: {count!r}"
    for name in ("last_task_id", "written_by"):
        text = fields.get(name)
        if text is not None and not isinstance(text, str):
            return f"{name} is not a string: {text!r}"
    incarnation = fields.get("incarnation")
    if incarnation is not None and not is_incarnation(incarnation):
        return f"incarnation is not 1 to 32 hex digits: {incarnation!r}"
    if not isinstance(fields.get("published", True), bool):
        return f"published is not a boolean: {fields.get('published')!r}"
    last_run_at = fields.get("last_run_at")
    if last_run_at is None:
        return ""
    try:
        moment = datetime.fromisoformat(last_run_at) if isinstance(last_run_at, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        return f"last_run_at is not an ISO 8601 time with a zone: {last_run_at!r}"
    return ""


def is_incarnation(value: Any) -> bool:
    """Whether ``value`` is a well-formed incarnation: 1 to 32 lowercase hex digits."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 32
        and all(c in "0123456789abcdef" for c in value)
    )


def _short(data: bytes, limit: int = 60) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


def json_object(data: bytes) -> dict[str, Any]:
    """``data`` as a JSON object; {} for anything else (garbage, deep nesting, not an object)."""
    return _json_object(data)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode() if data else "null")
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return {}
    return value if isinstance(value, dict) else {}
