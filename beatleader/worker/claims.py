"""Claims on beatleader runs in ZooKeeper: who executes run N of an entry, and whether it is done.

Under the worker's root (``Settings.path``), one folder per entry and incarnation of its state
(``layout.dedup_path``; ``<entry>`` is the quoted entry name, plus NUL and the incarnation for
runs that carry one, so an entry whose state was deleted and created again gets a new folder)::

    dedup/<entry>                 persistent, JSON {"floor": F}: every run <= F is treated as done
    dedup/<entry>/r<ordinal>      EPHEMERAL, JSON owner (task id, host, pid, attempt): running
    dedup/<entry>/d<ordinal>      persistent, JSON {"state", "attempt", "task_id"} and the run's
                                  record (``beatleader/runs/records.py``): finished

Guarantees:

* **Atomic claim**: a run is claimed by creating its ephemeral ``r`` node; ZooKeeper lets exactly
  one session create it. The ``d`` marker is written and the claim deleted in one transaction
  that first checks the claim is still this session's.
* **A dead claimant does not block the run**: its ephemeral claim disappears with its session
  (the session timeout after a kill -9); a delivery that finds a claim held by another session
  waits for it up to :attr:`ClaimPolicy.wait_factor` session timeouts before it calls the run a
  duplicate of a live execution.
* **Retries**: a ``d`` marker in state ``retrying`` with attempt ``a`` lets attempt ``a + 1``
  (celery's ``request.retries``) claim the run again, and no earlier attempt. A retry that finds
  an earlier attempt still holding the claim past the wait gets ``BUSY`` (requeue), never a drop.
* **Bounded**: markers older than the retention are pruned, under a floor raised first
  (``claimmarkers.py``, which owns the markers, the floor and their JSON).

Not guaranteed:

* A worker whose session expires while its run executes loses its claim: a duplicate delivered
  after that can run concurrently. The completing worker logs it (``lost_claim``).
* A run at or below the floor (older than the retention) is never executed again, even if it
  never ran (``claimmarkers.py``).
* Without ``zk_auth``, any ZooKeeper client can write here: a foreign ``d`` marker or floor
  silences runs (unreadable data is treated as "done", never as "run again"). With auth, the
  ACLs of ``client.acl_for`` keep other identities out.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from beatleader.worker.markers import (
    MarkerFolder,
    MarkerPolicy,
    Outcome,
    RunKey,
    allows,
    decode,
    encode,
    int_or_zero,
)

__all__ = ["ClaimPolicy", "ClaimStore", "MarkerPolicy", "Outcome", "RunKey", "Verdict"]


class Verdict(Enum):
    """What a delivery of a run may do."""

    CLAIMED = "claimed"  # execute it, then finish()
    DONE = "already executed"  # drop
    RUNNING = "being executed by a live worker"  # drop
    EXPIRED = "older than the claim retention"  # drop
    BUSY = "a previous attempt still holds the claim"  # a retry: requeue, do not drop


class ClaimPolicy(MarkerPolicy):
    """Tunables of the claim store; subclass or patch to tune (the markers': ``MarkerPolicy``)."""

    #: A claim of another session is waited for up to this many session timeouts (plus
    #: ``wait_margin``) before the delivery is called a duplicate of a live execution.
    wait_factor = 1.0
    #: Seconds added to the wait above.
    wait_margin = 1.0
    #: Locks serialising the claims of one run within a process (striped by run).
    key_locks = 64


class ClaimStore(MarkerFolder):
    """Claims of one worker process, through one started client (thread-safe)."""

    policy: type[ClaimPolicy]

    def __init__(
        self,
        client: KazooClient,
        root: str,
        retention: float,
        policy: type[ClaimPolicy] = ClaimPolicy,
        keep: int = 0,
    ) -> None:
        self.client = client
        #: The client's requests, each waiting at most ``policy.request_timeout``.
        self.zk: Any = _Bounded(client, policy.request_timeout)
        self.root = root
        self.retention = retention
        #: The newest markers kept whatever their age (``beatleader_history_size``).
        self.keep = keep
        self.policy = policy
        self._lock = threading.Lock()
        #: (folder, ordinal) -> attempt, of the runs this process executes now.
        self._running: dict[tuple[str, int], int] = {}
        self._folders: set[str] = set()
        self._suspects: set[RunKey] = set()
        self._key_locks = [threading.Lock() for _ in range(self.policy.key_locks)]
        #: Called with (key, message) when an execution finds its claim was lost.
        self.on_lost_claim: Callable[[RunKey, str], None] = lambda key, message: None

    # -- claim ------------------------------------------------------------------------------

    def _claim_path(self, key: RunKey) -> str:
        return f"{self.folder_path(key)}/r{key.ordinal:020d}"

    def acquire(
        self, key: RunKey, attempt: int, owner: dict[str, Any], *, patient: bool = False
    ) -> Verdict:
        """Claim ``key`` for ``attempt`` or say why not; waits for a claim of another execution.

        ``patient``: a claim still held after the wait gives ``BUSY`` (requeue), not ``RUNNING``
        (drop); for a delivery that was requeued, whose own earlier claim may be the holder.
        """
        self._release_suspects()
        self._ensure_folder(key)
        # One acquire per run at a time in this process: a thread must not take another
        # thread's fresh claim (same session, not yet marked running) for a leftover.
        with self._key_locks[hash((key.folder, key.ordinal)) % len(self._key_locks)]:
            return self._acquire(key, attempt, owner, patient)

    def _acquire(self, key: RunKey, attempt: int, owner: dict[str, Any], patient: bool) -> Verdict:
        deadline: float | None = None
        while True:
            verdict = self._try_claim(key, attempt, owner)
            if verdict is not None:
                return verdict
            try:
                data, holder = self.zk.get(self._claim_path(key))
            except NoNodeError:
                continue  # released meanwhile: look again
            held_attempt = int_or_zero(decode(data).get("attempt"))
            if holder.ephemeralOwner == self._session_id():
                with self._lock:
                    running = self._running.get((key.folder, key.ordinal))
                if running is None:  # a leftover of ours (e.g. a create whose reply was lost)
                    self._write_claim(key, attempt, owner, holder.version)
                    return self._mark_running(key, attempt)
                if attempt <= running:
                    return Verdict.RUNNING  # this very process executes it right now
            now = self._now()
            if deadline is None:
                deadline = now + self._wait_seconds()
            if now >= deadline:
                # a retry must not be lost to a slow previous attempt: the caller requeues it
                busy = patient or attempt > held_attempt
                return Verdict.BUSY if busy else Verdict.RUNNING
            self._wait_released(key, deadline - now)

    def _try_claim(self, key: RunKey, attempt: int, owner: dict[str, Any]) -> Verdict | None:
        verdict = self._settled(key, attempt)
        if verdict is not None:
            return verdict
        try:
            self.zk.create(
                self._claim_path(key), encode({**owner, "attempt": attempt}), ephemeral=True
            )
        except NodeExistsError:
            return None
        # A finisher (marker + claim deletion, one transaction) or a pruner may have acted
        # between the look above and the create: the create succeeded after them, so a second
        # look from this session sees what they wrote.
        verdict = self._settled(key, attempt)
        if verdict is not None:
            self._delete_own_claim(key)
            return verdict
        return self._mark_running(key, attempt)

    def _settled(self, key: RunKey, attempt: int) -> Verdict | None:
        """DONE or EXPIRED when ``attempt`` of ``key`` may not run whoever claims it; else None."""
        marker = self._marker(key)
        if marker is not None and not allows(marker, attempt):
            return Verdict.DONE
        if marker is None and key.ordinal <= self._floor(key):
            return Verdict.EXPIRED
        return None

    def suspect(self, key: RunKey) -> None:
        """A claim of ``key`` may have been created though its reply was lost: release it later."""
        with self._lock:
            self._suspects.add(key)

    def _release_suspects(self) -> None:
        with self._lock:
            suspects = [k for k in self._suspects if (k.folder, k.ordinal) not in self._running]
        for key in suspects:
            self._delete_own_claim(key)
            with self._lock:
                self._suspects.discard(key)

    def _mark_running(self, key: RunKey, attempt: int) -> Verdict:
        with self._lock:
            self._running[(key.folder, key.ordinal)] = attempt
        return Verdict.CLAIMED

    def _write_claim(self, key: RunKey, attempt: int, owner: dict[str, Any], version: int) -> None:
        # our own node changed or vanished: finish() notices and reports
        with contextlib.suppress(BadVersionError, NoNodeError):
            self.zk.set(self._claim_path(key), encode({**owner, "attempt": attempt}), version)

    def _holder(self, key: RunKey) -> ZnodeStat | None:
        """The stat of ``key``'s claim, None when nobody holds it."""
        return self.zk.exists(self._claim_path(key))

    def _wait_released(self, key: RunKey, seconds: float) -> None:
        released = threading.Event()
        stat = self.zk.exists(self._claim_path(key), watch=lambda _event: released.set())
        if stat is not None:
            released.wait(seconds)

    # -- finish -----------------------------------------------------------------------------

    def finish(
        self,
        key: RunKey,
        outcome: Outcome,
        attempt: int,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Record how the claimed execution of ``key`` ended and drop the claim.

        ``record``: the run's record fields for its marker (``runs.records.marker_fields``; the
        claim's ``ctime`` is added as ``started``).
        """
        try:
            if outcome is Outcome.RELEASED:
                self._delete_own_claim(key)
            else:
                self._write_marker(key, outcome, attempt, record or {})
                if outcome is not Outcome.RETRYING and key.ordinal % self.policy.prune_every == 0:
                    self.prune(key)
        finally:
            with self._lock:
                self._running.pop((key.folder, key.ordinal), None)

    def _write_marker(
        self, key: RunKey, outcome: Outcome, attempt: int, record: dict[str, Any]
    ) -> None:
        claim = self._holder(key)
        if claim is None or claim.ephemeralOwner != self._session_id():
            self.on_lost_claim(key, "its claim expired while it executed (session lost)")
            claim = None
        started = {"started": round(claim.ctime / 1000.0, 3)} if claim is not None else {}
        fields = {**record, **started}
        data = encode(
            {**fields, "state": outcome.value, "attempt": attempt, "task_id": key.task_id}
        )
        marker = self.zk.exists(self._marker_path(key))
        transaction = self.client.transaction()
        if claim is not None:
            transaction.check(self._claim_path(key), claim.version)
            transaction.delete(self._claim_path(key))
        if marker is None:
            transaction.create(self._marker_path(key), data)
        else:
            transaction.set_data(self._marker_path(key), data, marker.version)
        results = transaction.commit_async().get(timeout=self.policy.request_timeout)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:  # another process changed the claim or marker between our reads: redo
            self.on_lost_claim(key, f"its claim changed under it ({errors[0]!r})")
            self._write_marker_plain(key, data)

    def _write_marker_plain(self, key: RunKey, data: bytes) -> None:
        try:
            self.zk.create(self._marker_path(key), data)
        except NodeExistsError:
            self.zk.set(self._marker_path(key), data)

    def _delete_own_claim(self, key: RunKey) -> None:
        claim = self._holder(key)
        if claim is not None and claim.ephemeralOwner == self._session_id():
            with contextlib.suppress(BadVersionError, NoNodeError):
                self.zk.delete(self._claim_path(key), claim.version)

    # -- helpers ----------------------------------------------------------------------------

    def _session_id(self) -> int | None:
        client_id = self.client.client_id
        return client_id[0] if client_id else None

    def _wait_seconds(self) -> float:
        session = float(self.client._session_timeout) / 1000.0  # negotiated, milliseconds
        return self.policy.wait_factor * session + self.policy.wait_margin

    @staticmethod
    def _now() -> float:
        return time.monotonic()


class _Bounded:
    """``client.get(...)`` etc. as ``client.get_async(...).get(timeout=...)``."""

    def __init__(self, client: KazooClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self._client, f"{name}_async")

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return call(*args, **kwargs).get(timeout=self._timeout)

        return bounded
