"""The claim store on a real ZooKeeper, without celery: claim, wait, retries, expiry, pruning."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from beatleader.worker.claims import ClaimPolicy, ClaimStore, Outcome, RunKey, Verdict
from beatleader.zk import layout
from tests.harness import ZooKeeperServer, connected_client, wait_for

OWNER = {"task_id": "t", "host": "h", "pid": 1}


class QuickPolicy(ClaimPolicy):
    wait_factor = 0.0
    wait_margin = 0.3
    prune_every = 8


def key(ordinal: int, entry: str = "e") -> RunKey:
    return RunKey(layout.quote_entry_name(entry), ordinal, entry, f"id-{ordinal}")


@pytest.fixture
def stores(zk_server: ZooKeeperServer, zk_root: str) -> Iterator[list[ClaimStore]]:
    """Two claim stores on two sessions (two worker processes)."""
    with (
        connected_client(zk_server.hosts, timeout=2) as a,
        connected_client(zk_server.hosts, timeout=2) as b,
    ):
        yield [ClaimStore(c, zk_root, 3600.0, QuickPolicy) for c in (a, b)]


def test_one_claim_per_run_and_done_is_final(stores: list[ClaimStore]) -> None:
    a, b = stores
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    assert a.acquire(key(1), 0, OWNER) is Verdict.RUNNING  # same process, running
    assert b.acquire(key(1), 0, OWNER) is Verdict.RUNNING  # live holder: waited, then gave up
    a.finish(key(1), Outcome.DONE, 0)
    assert b.acquire(key(1), 0, OWNER) is Verdict.DONE
    assert a.acquire(key(1), 0, OWNER) is Verdict.DONE
    assert b.acquire(key(2), 0, OWNER) is Verdict.CLAIMED


def test_a_failed_run_is_done_and_a_released_one_is_not(stores: list[ClaimStore]) -> None:
    a, b = stores
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    a.finish(key(1), Outcome.FAILED, 0)
    assert b.acquire(key(1), 0, OWNER) is Verdict.DONE
    assert a.acquire(key(2), 0, OWNER) is Verdict.CLAIMED
    a.finish(key(2), Outcome.RELEASED, 0)
    assert b.acquire(key(2), 0, OWNER) is Verdict.CLAIMED


def test_a_waiting_delivery_wakes_when_the_holder_finishes(
    stores: list[ClaimStore], zk_root: str
) -> None:
    a, b = stores
    b.policy = type("Patient", (QuickPolicy,), {"wait_margin": 30.0})
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    verdicts: list[Verdict] = []
    waiter = threading.Thread(target=lambda: verdicts.append(b.acquire(key(1), 0, OWNER)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.3)  # let the waiter block on the claim (a shorter wait only weakens the test)
    a.finish(key(1), Outcome.DONE, 0)
    waiter.join(10)
    assert verdicts == [Verdict.DONE]
    assert time.monotonic() - started < 10


def test_the_claim_of_a_dead_session_expires(zk_server: ZooKeeperServer, zk_root: str) -> None:
    with connected_client(zk_server.hosts, timeout=2) as survivor:
        dying = KazooClient(hosts=zk_server.hosts, timeout=2)
        dying.start(15)
        assert ClaimStore(dying, zk_root, 3600.0, QuickPolicy).acquire(key(1), 0, OWNER) is (
            Verdict.CLAIMED
        )
        dying.stop()  # the session ends, as the server does after a kill -9 and the timeout
        dying.close()
        store = ClaimStore(survivor, zk_root, 3600.0, QuickPolicy)
        assert store.acquire(key(1), 0, OWNER) is Verdict.CLAIMED


def test_only_a_later_attempt_runs_after_a_retry(stores: list[ClaimStore]) -> None:
    a, b = stores
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    a.finish(key(1), Outcome.RETRYING, 0)
    assert b.acquire(key(1), 0, OWNER) is Verdict.DONE  # a duplicate of the first attempt
    assert b.acquire(key(1), 1, OWNER) is Verdict.CLAIMED
    assert a.acquire(key(1), 1, OWNER) is Verdict.RUNNING
    b.finish(key(1), Outcome.DONE, 1)
    assert a.acquire(key(1), 2, OWNER) is Verdict.DONE


def test_a_retry_is_never_dropped_while_its_previous_attempt_holds_the_claim(
    stores: list[ClaimStore],
) -> None:
    a, b = stores
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    # attempt 1 in the same process (threads pool) and in another one: busy, not a duplicate
    assert a.acquire(key(1), 1, OWNER) is Verdict.BUSY
    assert b.acquire(key(1), 1, OWNER) is Verdict.BUSY
    # ... and once attempt 0 has finished with a retry, attempt 1 claims it
    waiter_verdicts: list[Verdict] = []
    b.policy = type("Patient", (QuickPolicy,), {"wait_margin": 30.0})
    waiter = threading.Thread(target=lambda: waiter_verdicts.append(b.acquire(key(1), 1, OWNER)))
    waiter.start()
    time.sleep(0.3)  # let the waiter block on the claim (a shorter wait only weakens the test)
    a.finish(key(1), Outcome.RETRYING, 0)
    waiter.join(10)
    assert waiter_verdicts == [Verdict.CLAIMED]


def test_a_claim_whose_reply_was_lost_is_released_and_a_requeued_copy_waits(
    stores: list[ClaimStore],
) -> None:
    a, b = stores
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    a.finish(key(1), Outcome.RELEASED, 0)
    # as if the create succeeded but its reply was lost: the node exists, nothing runs
    a.client.create(f"{a.folder_path(key(1))}/r{1:020d}", b"{}", ephemeral=True)
    a.suspect(key(1))
    assert b.acquire(key(1), 0, OWNER, patient=True) is Verdict.BUSY  # requeued: not dropped
    assert a.acquire(key(2), 0, OWNER) is Verdict.CLAIMED  # a's next claim releases the suspect
    assert b.acquire(key(1), 0, OWNER, patient=True) is Verdict.CLAIMED


class Interleaved(ClaimStore):
    """Runs ``hook`` once, right after its first look at a run's marker and floor."""

    hook: Callable[[], None] | None = None

    def _settled(self, key: RunKey, attempt: int) -> Verdict | None:
        verdict = super()._settled(key, attempt)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return verdict


def test_a_run_finished_between_the_look_and_the_claim_is_not_run_again(
    stores: list[ClaimStore],
) -> None:
    a, b = stores
    late = Interleaved(b.client, b.root, b.retention, QuickPolicy)
    assert a.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
    late.hook = lambda: a.finish(key(1), Outcome.DONE, 0)  # marker written, claim deleted
    assert late.acquire(key(1), 0, OWNER) is Verdict.DONE
    assert a.client.exists(f"{a.folder_path(key(1))}/r{1:020d}") is None  # no claim left


def test_threads_of_one_process_claim_each_run_once(stores: list[ClaimStore]) -> None:
    a, b = stores
    claimed: list[int] = []
    lock = threading.Lock()

    def deliver(ordinal: int, store: ClaimStore) -> None:
        if store.acquire(key(ordinal), 0, OWNER) is Verdict.CLAIMED:
            with lock:
                claimed.append(ordinal)
            store.finish(key(ordinal), Outcome.DONE, 0)

    threads = [
        threading.Thread(target=deliver, args=(ordinal, store))
        for ordinal in range(1, 21)
        for store in (a, a, a, b)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(claimed) == list(range(1, 21))


def test_markers_older_than_the_retention_are_pruned(
    zk_server: ZooKeeperServer, zk_root: str, zk_client: KazooClient
) -> None:
    with connected_client(zk_server.hosts, timeout=2) as client:
        store = ClaimStore(client, zk_root, 0.5, QuickPolicy)
        for ordinal in range(1, 8):
            assert store.acquire(key(ordinal), 0, OWNER) is Verdict.CLAIMED
            store.finish(key(ordinal), Outcome.DONE, 0)
        assert store.markers(key(1)) == list(range(1, 8))
        old_ctime = client.exists(f"{store.folder_path(key(1))}/d{7:020d}").ctime
        wait_for(lambda: _server_ms(client, zk_root) > old_ctime + 600, 10, message="0.6 s")
        assert store.acquire(key(8), 0, OWNER) is Verdict.CLAIMED
        store.finish(key(8), Outcome.DONE, 0)  # 8 % prune_every == 0: prunes 1..7
        assert store.markers(key(1)) == [8]
        assert store.acquire(key(3), 0, OWNER) is Verdict.EXPIRED  # at or below the floor
        assert store.acquire(key(9), 0, OWNER) is Verdict.CLAIMED


def _server_ms(client: KazooClient, root: str) -> int:
    """ZooKeeper's clock: the mtime of a probe write."""
    path = f"{root}/clock"
    client.ensure_path(path)
    return int(client.set(path, b"").mtime)


def test_a_request_to_an_unresponsive_zookeeper_is_bounded(
    private_zk_server: ZooKeeperServer, zk_root: str
) -> None:
    policy = type("Impatient", (QuickPolicy,), {"request_timeout": 1.0})
    with connected_client(private_zk_server.hosts, timeout=30) as client:
        store = ClaimStore(client, zk_root, 3600.0, policy)
        assert store.acquire(key(1), 0, OWNER) is Verdict.CLAIMED
        private_zk_server.pause()  # SIGSTOP: the connection stays up, nothing answers
        try:
            started = time.monotonic()
            with pytest.raises(KazooTimeoutError):
                store.finish(key(1), Outcome.DONE, 0)
            assert time.monotonic() - started < 5
        finally:
            private_zk_server.resume()
        store.finish(key(1), Outcome.DONE, 0)  # the same session goes on once it answers
        assert store.acquire(key(1), 0, OWNER) is Verdict.DONE


@pytest.mark.parametrize("garbage", [b"\xff", b"[" * 100_000, b"[]", b'{"attempt": 1e999}'])
def test_hostile_marker_and_claim_data_decide_without_raising(
    stores: list[ClaimStore], zk_server: ZooKeeperServer, garbage: bytes
) -> None:
    """A marker any client wrote is a finished run (never run again); a foreign claim a live
    holder (waited for). Neither raises in the worker, whatever its bytes."""
    a, b = stores
    marked = key(1)
    a.zk.create(a._marker_path(marked), garbage, makepath=True)
    assert a.acquire(marked, 0, OWNER) is Verdict.DONE
    with connected_client(zk_server.hosts, timeout=2) as other:
        held = key(2)
        other.create(a._claim_path(held), garbage, makepath=True, ephemeral=True)
        assert b.acquire(held, 0, OWNER) is Verdict.RUNNING
