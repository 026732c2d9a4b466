"""Writing runtime definitions, pauses and run-now requests as ``beatleader entry`` would.

The nodes are the layout's (``layout.py``) and the definitions ``definitions.py``'s codec, written
with a plain kazoo client, so the tests exercise the leader side alone.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from beatleader.schedules.definitions import Definition
from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from beatleader.zk.multiread import MULTI_READ
from tests.harness import connected_client, wait_for

RECORD_TASK = "tests.app.record"


def definition(schedule: dict[str, Any], *args: Any, enabled: bool = True) -> Definition:
    """A valid definition of ``tests.app.record`` (its first argument names the execution)."""
    return Definition(
        task=RECORD_TASK,
        schedule=schedule,
        args=tuple(args),
        enabled=enabled,
        changed_by="test",
        changed_at=layout.utc_now_iso(),
    ).validated()


def put_definition(client: KazooClient, root: str, name: str, found: Definition) -> None:
    """Create or overwrite the definition node of ``name``."""
    put_raw(client, root, name, found.encode())


def put_raw(client: KazooClient, root: str, name: str, data: bytes) -> None:
    path = layout.definition_path(root, name)
    if client.exists(path) is None:
        client.create(path, data, makepath=True)
    else:
        client.set(path, data)


def remove_definition(client: KazooClient, root: str, name: str) -> None:
    client.delete(layout.definition_path(root, name))


def marker() -> bytes:
    return json.dumps({"changed_by": "test", "changed_at": layout.utc_now_iso()}).encode()


def pause(client: KazooClient, root: str, name: str) -> None:
    client.create(layout.paused_entry_path(root, name), marker(), makepath=True)


def resume(client: KazooClient, root: str, name: str) -> None:
    client.delete(layout.paused_entry_path(root, name))


def request_run(client: KazooClient, root: str, name: str) -> str:
    """Create one run-now request of ``name``; returns its path."""
    path: str = client.create(
        layout.request_prefix(root, name), marker(), sequence=True, makepath=True
    )
    return path


def requests(client: KazooClient, root: str) -> list[str]:
    try:
        return sorted(client.get_children(layout.requests_path(root)))
    except NoNodeError:
        return []


def bulk_definitions(
    client: KazooClient, root: str, count: int, make: Callable[[int], tuple[str, Definition]]
) -> None:
    """Create ``count`` definition nodes in transactions of 1,000."""
    client.ensure_path(layout.definitions_path(root))
    for first in range(0, count, 1000):
        transaction = client.transaction()
        for number in range(first, min(first + 1000, count)):
            name, found = make(number)
            transaction.create(layout.definition_path(root, name), found.encode())
        results = transaction.commit()
        bad = [r for r in results if isinstance(r, Exception)]
        assert not bad, bad[:3]


class ReadCounter:
    """Counts what a kazoo client sends: every request, and every node it reads.

    It wraps ``KazooClient._call``, the one path of every kazoo request (a ping excepted), so a
    multi-read (``beatleader.multiread``) counts one request and one read per node it names; a
    get, a listing or an exists counts one of each; a SetWatches or a write is a request only.
    """

    #: Request types that read one node: exists, getData, getChildren, getChildren2.
    SINGLE_READS = frozenset({3, 4, 8, 12})

    def __init__(self, client: KazooClient) -> None:
        self.reset()
        call = client._call

        def counted(request: Any, async_object: Any) -> Any:
            self.requests += 1
            self.kinds.append(type(request).__name__)
            if request.type == MULTI_READ:
                self.paths.extend(request.paths)
            elif request.type in self.SINGLE_READS:
                self.paths.append(request.path)
            return call(request, async_object)

        client._call = counted  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        """Nodes read (a multi-read's nodes each)."""
        return len(self.paths)

    def under(self, *folders: str) -> list[str]:
        """The paths read under any of ``folders``."""
        return [p for p in self.paths if any(p.startswith(f + "/") or p == f for f in folders)]

    def reset(self) -> None:
        self.requests = 0
        self.kinds: list[str] = []
        self.paths: list[str] = []


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


# -- scale: the figures of test_runtime_scale.py and scripts/benchmark.py -------------------------


@dataclass(frozen=True)
class ChangeCost:
    """One change of one definition, as the leader saw it."""

    what: str
    #: Nodes the leader's client read from the write to the change applied (get/list/exists),
    #: but for those under ``election/`` (the PeerWatch's, which come when they come).
    reads: int
    #: Requests of the leader's session in that time (the server's ``lcxid``; None: not read).
    requests: int | None
    #: What the leader's client sent meanwhile, by request type (every request, reads or not).
    sent: tuple[str, ...]
    #: Seconds from the write to the change applied, the leader ticking every ``TICK`` s.
    seconds: float


@dataclass(frozen=True)
class ScaleFigures:
    definitions: int
    #: Whether every entry had a run state (entries that have run) at the takeover.
    with_state: bool
    #: Seconds of the takeover tick: run state, every definition, the heap.
    takeover_s: float
    #: Of which: the run state (``StateStore.load``: its reads queue behind the definitions',
    #: sent first) and the definitions (sending their reads, then taking and applying them).
    state_load_s: float
    definitions_load_s: float
    #: Nodes read by the takeover (a multi-read's nodes each), and the requests it sent.
    takeover_reads: int
    takeover_requests: int
    changes: list[ChangeCost]


#: Longest sleep between the leader's ticks while a change is measured.
TICK = 0.005


def measure_scale(
    server: Any,
    root: str,
    count: int,
    make_scheduler: Callable[[], Any],
    with_state: bool = False,
) -> ScaleFigures:
    """Write ``count`` definitions (and run states), let a new leader take over, change one.

    Nothing is due meanwhile (every hour, last run now), so every request is the runtime's.
    """

    def name(number: int) -> str:
        return f"runtime-{number:05d}"

    with connected_client(server.hosts) as client:
        bulk_definitions(
            client, root, count, lambda n: (name(n), definition({"every": 3600}, name(n)))
        )
        if with_state:
            bulk_states(client, root, [name(n) for n in range(count)])
        scheduler = make_scheduler()
        try:
            wait_for(lambda: scheduler.is_leader, 30, message="the scheduler leads")
            counter = ReadCounter(scheduler._zk)
            loads = {"load": 0.0, "definitions": 0.0}
            for method, target, key in (
                ("load", scheduler._store, "load"),
                ("_prefetch_dynamic", scheduler, "definitions"),
                ("_load_dynamic", scheduler, "definitions"),
            ):
                setattr(target, method, _timing(loads, key, getattr(target, method)))
            _, takeover_s = timed(scheduler.tick)
            assert len(scheduler.dynamic_names) == count, len(scheduler.dynamic_names)
            takeover_reads, takeover_requests = counter.total, counter.requests
            # the takeover's SetWatches are not waited for: one round trip drains them (a
            # session's requests are answered in order), so the server's count starts after them
            scheduler._zk.exists("/")
            session = scheduler._zk.client_id[0]
            steps: list[tuple[str, Callable[[], None], Callable[[], bool]]] = [
                (
                    "update one",
                    lambda: put_definition(client, root, name(7), definition(HOUR_S, "new")),
                    lambda: scheduler.schedule[name(7)].args == ["new"],
                ),
                (
                    "add one",
                    lambda: put_definition(client, root, "added", definition(HOUR_S, "a")),
                    lambda: "added" in scheduler.schedule,
                ),
                (
                    "remove one",
                    lambda: remove_definition(client, root, name(8)),
                    lambda: name(8) not in scheduler.schedule,
                ),
            ]
            changes = []
            for what, change, applied in steps:
                counter.reset()
                before = _lcxid(server, session)
                started = time.perf_counter()
                change()
                while not applied():
                    time.sleep(min(scheduler.tick(), TICK))
                seconds = time.perf_counter() - started
                sent = tuple(counter.kinds)
                # a request the client just sent may not be in the server's lcxid yet (seen in
                # CI: 1 counted of 2 sent); give the server 2 s to count what was sent
                if before is not None:
                    counted = before + len(sent)
                    with contextlib.suppress(AssertionError):
                        wait_for(
                            lambda n=counted: (_lcxid(server, session) or 0) >= n,  # type: ignore[misc]
                            2.0,
                            interval=0.02,
                        )
                after = _lcxid(server, session)
                requests = after - before if after is not None and before is not None else None
                # the election's own reads (PeerWatch follows election/ on every instance, at
                # its own times) are not the change's: the runtime's are every other one
                elected = counter.under(layout.election_path(root))
                reads = counter.total - len(elected)
                changes.append(ChangeCost(what, reads, requests, sent, seconds))
        finally:
            scheduler.close()
    return ScaleFigures(
        count,
        with_state,
        takeover_s,
        loads["load"],
        loads["definitions"],
        takeover_reads,
        takeover_requests,
        changes,
    )


def _timing(seconds: dict[str, float], key: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def timed_call(*args: Any) -> Any:
        value, took = timed(lambda: call(*args))
        seconds[key] += took
        return value

    return timed_call


def bulk_states(client: KazooClient, root: str, names: list[str]) -> None:
    """A run state for each of ``names``: three runs, the last one now (published)."""
    client.ensure_path(layout.entries_path(root))
    state = EntryState(layout.utc_now_iso(), 3, None, "test").encode()
    for first in range(0, len(names), 1000):
        transaction = client.transaction()
        for entry in names[first : first + 1000]:
            transaction.create(layout.entry_path(root, entry), state)
        results = transaction.commit()
        bad = [r for r in results if isinstance(r, Exception)]
        assert not bad, bad[:3]


HOUR_S = {"every": 3600}


def _lcxid(server: Any, session: int) -> int | None:
    for connection in server.connections():
        if connection.get("sid") == session:
            return int(connection["lcxid"])
    return None
