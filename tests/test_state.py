"""The fenced commit against a real ZooKeeper: it commits only for a live contender node."""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient

from beatleader.layout import EntryState
from beatleader.state import StateStore, Write
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


def test_commit_reports_a_version_conflict_and_writes_nothing(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    store.commit(fence, [Write("a", _state(1), None), Write("b", _state(1), None)])
    outcome = store.commit(fence, [Write("a", _state(2), 0), Write("b", _state(2), 7)])
    assert outcome.conflicts == ["b"] and not outcome.committed and not outcome.lost_leadership
    assert store.load()["a"].state == _state(1)


def test_large_batches_are_split_and_all_commit(zk_client, zk_root, fence) -> None:
    store = StateStore(zk_client, zk_root)
    writes = [Write(f"e{i}", _state(1), None) for i in range(600)]
    outcome = store.commit(fence, writes)
    assert outcome.ok and len(outcome.committed) == 600
    assert len(store.load()) == 600
