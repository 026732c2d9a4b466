"""The fenced commit against a real ZooKeeper: it commits only for a live contender node."""

from __future__ import annotations

import time

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_acl

from beatleader.beat.state import StateStore, Write
from beatleader.zk.layout import EntryState, entry_path
from tests.harness import contender_prefix


def _state(count: int) -> EntryState:
    return EntryState("2026-01-01T00:00:00+00:00", count, f"id-{count}", "test")


@pytest.fixture
def fence(zk_client: KazooClient, zk_root: str) -> str:
    path: str = zk_client.create(
        contender_prefix(zk_root), b"{}", ephemeral=True, sequence=True, makepath=True
    )
    return path


def test_commit_creates_then_updates_entries(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    assert store.load() == {}
    first = store.commit(fence, [Write("a b/é", _state(1), None), Write("x", _state(1), None)])
    assert first.ok and first.committed == {"a b/é": 0, "x": 0}
    second = store.commit(fence, [Write("a b/é", _state(2), 0)])
    assert second.ok and second.committed == {"a b/é": 1}
    loaded = store.load()
    assert loaded["a b/é"].state == _state(2) and loaded["a b/é"].version == 1
    assert loaded["x"].state == _state(1)


def test_commit_fails_whole_when_the_fence_node_is_gone(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    zk_client.delete(fence)
    outcome = store.commit(fence, [Write("a", _state(1), None)])
    assert outcome.lost_leadership and not outcome.committed
    assert store.load() == {}


def test_a_version_conflict_is_reported_and_does_not_block_the_rest(
    zk_client, zk_root, fence
) -> None:
    store = StateStore(zk_client, zk_root)
    store.commit(fence, [Write("a", _state(1), None), Write("b", _state(1), None)])
    outcome = store.commit(fence, [Write("a", _state(2), 0), Write("b", _state(2), 7)])
    assert outcome.conflicts == ["b"] and outcome.committed == {"a": 1}
    assert not outcome.lost_leadership and not outcome.ok
    loaded = store.load()
    assert loaded["a"].state == _state(2) and loaded["b"].state == _state(1)


def test_a_read_only_entry_does_not_block_its_batch(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    names = [f"e{i}" for i in range(5)]
    store.commit(fence, [Write(n, _state(1), None) for n in names])
    zk_client.set_acls(entry_path(zk_root, "e2"), [make_acl("world", "anyone", read=True)])
    outcome = store.commit(fence, [Write(n, _state(2), 0) for n in names])
    assert set(outcome.failed) == {"e2"} and "NoAuth" in outcome.failed["e2"]
    assert sorted(outcome.committed) == ["e0", "e1", "e3", "e4"]
    loaded = store.load()
    assert [loaded[n].state.total_run_count for n in names] == [2, 2, 1, 2, 2]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"[]",
        b'{"total_run_count": "7"}',
        b'{"total_run_count": true}',
        b'{"total_run_count": -1}',
        b'{"total_run_count": 1e309}',
        b'{"total_run_count": 3, "last_run_at": "yesterday"}',
        b'{"total_run_count": 3, "last_run_at": "2026-01-01T00:00:00"}',
        b'{"total_run_count": 3, "published": "no"}',
        b"\xff\xfe",
    ],
)
def test_load_reports_unreadable_entry_data_with_version_and_mtime(
    zk_client, zk_root, fence, data: bytes
) -> None:
    store = StateStore(zk_client, zk_root)
    store.commit(fence, [Write("a", _state(4), None)])
    zk_client.set(entry_path(zk_root, "a"), data)
    found = store.load()["a"]
    assert found.state is None and found.problem and found.version == 1
    assert abs(found.mtime - time.time()) < 60


def test_server_time_is_zookeepers_clock(zk_client, zk_root) -> None:
    store = StateStore(zk_client, zk_root)
    assert abs(store.server_time() - time.time()) < 5  # same machine: same clock
    assert abs(store.server_time() - time.time()) < 5  # the node exists now: set only


def test_large_batches_are_split_and_all_commit(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    writes = [Write(f"e{i}", _state(1), None) for i in range(600)]
    outcome = store.commit(fence, writes)
    assert outcome.ok and len(outcome.committed) == 600
    assert len(store.load()) == 600
