"""``beatleader.multiread`` on the suite's real ZooKeeper (3.8): node for node what ``get`` gives,
the watches ``get(watch=)`` sets, and the fallback of a server that has no multi-read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.protocol.states import WatchedEvent
from kazoo.security import make_digest_acl

from beatleader.zk import multiread
from tests.harness import connected_client, wait_for
from tests.runtime_support import ReadCounter


def read_all(client: KazooClient, paths: list[str], **kwargs: Any) -> list[Any]:
    """Each node's ``(data, version)``, or the class of its error."""
    found: list[Any] = []
    for result in multiread.read_nodes(client, paths, **kwargs):
        try:
            data, stat = result.get()
        except Exception as exc:
            found.append(type(exc))
        else:
            found.append((data, stat.version))
    return found


def plain_gets(client: KazooClient, paths: list[str]) -> list[Any]:
    found: list[Any] = []
    for path in paths:
        try:
            data, stat = client.get(path)
        except Exception as exc:
            found.append(type(exc))
        else:
            found.append((data, stat.version))
    return found


class Events:
    """A watch callback that keeps what it was called with."""

    def __init__(self) -> None:
        self.seen: list[WatchedEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: WatchedEvent) -> None:
        with self._lock:
            self.seen.append(event)

    def of(self, path: str) -> list[str]:
        with self._lock:
            return [event.type for event in self.seen if event.path == path]


@pytest.fixture
def nodes(zk_client: KazooClient, zk_root: str) -> list[str]:
    """1,200 nodes under ``zk_root`` (three multi-reads), data of every size from empty up."""
    zk_client.ensure_path(zk_root)
    paths = [f"{zk_root}/n{number:04d}" for number in range(1200)]
    for start in range(0, len(paths), 300):
        transaction = zk_client.transaction()
        for path in paths[start : start + 300]:
            transaction.create(path, b"x" * (int(path[-4:]) % 50))
        transaction.commit()
    return paths


@pytest.fixture
def fresh_client(zk_server: Any) -> Iterator[KazooClient]:
    """A client of its own: whether multi-read works is learnt once per client."""
    with connected_client(zk_server.hosts) as client:
        yield client


def test_results_are_those_of_plain_gets_node_for_node_in_three_requests(
    fresh_client: KazooClient, zk_client: KazooClient, zk_root: str, nodes: list[str]
) -> None:
    zk_client.set(nodes[5], b"changed")  # version 1
    secret = f"{zk_root}/secret"
    zk_client.create(secret, b"s", acl=[make_digest_acl("owner", "pw", all=True)])
    paths = [*nodes[:600], f"{zk_root}/missing", secret, *nodes[600:]]
    counter = ReadCounter(fresh_client)

    found = read_all(fresh_client, paths)

    assert counter.requests == 3  # 1,202 nodes: 500 + 500 + 202
    assert found == plain_gets(zk_client, paths)
    assert found[5] == (b"changed", 1)
    assert found[600:602] == [NoNodeError, NoAuthError]
    assert fresh_client in multiread._accepted


def test_a_chrooted_client_reads_under_its_root(
    zk_server: Any, zk_root: str, nodes: list[str]
) -> None:
    with connected_client(zk_server.hosts + zk_root) as chrooted:
        relative = [path[len(zk_root) :] for path in nodes[:20]]
        assert read_all(chrooted, relative) == [(b"x" * n, 0) for n in range(20)]


def test_few_reads_are_plain_gets(fresh_client: KazooClient, nodes: list[str]) -> None:
    counter = ReadCounter(fresh_client)
    few = nodes[: multiread.MIN_BATCH - 1]
    assert read_all(fresh_client, few) == [(b"x" * n, 0) for n in range(len(few))]
    assert counter.requests == len(few)
    assert fresh_client not in multiread._accepted  # no multi-read was sent


def test_watches_fire_for_a_later_change_and_deletion_once_each(
    fresh_client: KazooClient, zk_client: KazooClient, zk_root: str, nodes: list[str]
) -> None:
    events = Events()
    missing = f"{zk_root}/missing"
    fresh_client.get_children(zk_root)  # as the leader lists a folder before reading it
    read_all(fresh_client, [*nodes[:40], missing], watch=events)
    wait_for(lambda: events.of(missing), 10, message="a node gone at the read fires at once")

    zk_client.set(nodes[1], b"new")
    zk_client.delete(nodes[2])
    zk_client.set(nodes[39], b"new")
    wait_for(lambda: len(events.seen) == 4, 10, message=f"three more events: {events.seen}")
    assert events.of(nodes[1]) == ["CHANGED"]
    assert events.of(nodes[2]) == ["DELETED"]
    assert events.of(nodes[39]) == ["CHANGED"]
    assert events.of(missing) == ["DELETED"]
    zk_client.set(nodes[1], b"again")  # a watch fires once, as get's does
    zk_client.set(nodes[3], b"first")
    wait_for(lambda: events.of(nodes[3]), 10, message="a watch not fired yet still fires")
    assert events.of(nodes[1]) == ["CHANGED"]


def test_a_node_changed_after_the_last_reply_before_the_reads_fires_at_once(
    fresh_client: KazooClient, zk_client: KazooClient, zk_root: str, nodes: list[str]
) -> None:
    """The cost of that rule: a client whose last reply is old gets events for nodes written
    since, at once (its caller reads them again: one read each, nothing is missed)."""
    events = Events()
    fresh_client.get_children(zk_root)
    zk_client.set(nodes[3], b"after the listing")
    read_all(fresh_client, nodes[:20], watch=events)
    wait_for(lambda: events.of(nodes[3]), 10, message="the node written since fires")
    assert [event.path for event in events.seen] == [nodes[3]]


def test_a_change_between_the_zxid_seen_and_the_watch_fires_at_once(
    fresh_client: KazooClient, zk_client: KazooClient, nodes: list[str]
) -> None:
    """The guarantee read_nodes rests on: SetWatches as of the zxid seen before the reads."""
    events = Events()
    fresh_client.get(nodes[0])
    seen = fresh_client.last_zxid
    zk_client.set(nodes[7], b"meanwhile")  # after `seen`: the watch must not wait for another
    multiread._set_watches(fresh_client, [nodes[6], nodes[7]], events, seen)
    wait_for(lambda: events.of(nodes[7]), 10, message="the change since `seen` fires")
    assert events.of(nodes[6]) == []
    zk_client.set(nodes[6], b"later")
    wait_for(lambda: events.of(nodes[6]), 10, message="the unchanged node's watch was set")


def test_watches_set_in_several_requests_all_fire(
    fresh_client: KazooClient,
    zk_client: KazooClient,
    zk_root: str,
    nodes: list[str],
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(multiread, "MAX_WATCH_BYTES", 1000)
    events = Events()
    counter = ReadCounter(fresh_client)
    fresh_client.get_children(zk_root)
    read_all(fresh_client, nodes[:100], watch=events)
    assert counter.requests >= 1 + 1 + 5  # a listing, a multi-read, 5 KB of paths in 1 KB chunks
    for path in (nodes[0], nodes[50], nodes[99]):
        zk_client.set(path, b"new")
    wait_for(lambda: len(events.seen) == 3, 10, message="every chunk's watches fire")


def test_large_nodes_come_back_in_one_reply(
    fresh_client: KazooClient, zk_client: KazooClient, zk_root: str
) -> None:
    """A writer filling nodes to ZooKeeper's limit (1 MB each) does not break the read."""
    zk_client.ensure_path(zk_root)
    paths = [f"{zk_root}/big{number}" for number in range(multiread.MIN_BATCH + 2)]
    for path in paths:
        zk_client.create(path, bytes([len(path) % 256]) * 1_000_000)
    counter = ReadCounter(fresh_client)
    assert read_all(fresh_client, paths) == plain_gets(zk_client, paths)
    assert counter.requests == 1


def test_a_server_without_multi_read_is_read_node_by_node(
    fresh_client: KazooClient, nodes: list[str], monkeypatch: Any
) -> None:
    """An opcode this ZooKeeper does not know is refused as 22 is by ZooKeeper 3.5: the server
    answers UnimplementedError and closes the connection; the session lives on."""
    monkeypatch.setattr(multiread.MultiRead, "type", 99)
    session = fresh_client.client_id
    expected = [(b"x" * (n % 50), 0) for n in range(100)]
    attempts = 0
    while True:  # the reads sent right after the refusal may meet the closing connection
        attempts += 1
        wait_for(lambda: fresh_client.connected, 15, message="the client is connected")
        found = read_all(fresh_client, nodes[:100])
        if found == expected:
            break
        assert attempts < 3, found[:3]
    assert fresh_client in multiread._refused
    assert fresh_client.client_id == session
    counter = ReadCounter(fresh_client)
    assert read_all(fresh_client, nodes[:100]) == expected
    assert counter.requests == 100  # node by node from now on


def test_a_refused_set_watches_is_logged(
    fresh_client: KazooClient, zk_root: str, nodes: list[str], monkeypatch: Any, caplog: Any
) -> None:
    """Nobody waits for a SetWatches reply: a refusal must still say so (an opcode ZooKeeper
    does not know stands in for a refusal; the connection closes after it, the session lives)."""
    monkeypatch.setattr(multiread.SetWatches, "type", 98)
    fresh_client.get_children(zk_root)
    assert read_all(fresh_client, nodes[:20], watch=Events()) == [(b"x" * n, 0) for n in range(20)]
    wait_for(
        lambda: [r for r in caplog.records if "refused SetWatches(20 data watches" in r.message],
        10,
        message="one ERROR line for the refused request",
    )
    assert [r.levelname for r in caplog.records if "refused" in r.message] == ["ERROR"]
