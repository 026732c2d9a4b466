"""Worker-side de-duplication: every beatleader run executes at most once, on any number of workers.

One call in the Celery app module::

    beatleader.dedup.install(app)

Every worker of that app then claims each beatleader run in ZooKeeper (``claims.py``) before its
task body executes, with the app's beatleader settings and ``client.make_client`` (one session
per worker process, opened lazily after any fork). With the beat publishing every run at least
once (same task id on a republish), each run ordinal executes exactly once.

What is guarded: messages whose headers name a beatleader run (``layout.run_headers``) *and*
whose task id is that run's ``layout.run_task_id``. Every other message runs untouched, in the same
process, with one dictionary lookup of overhead.

Guarantees:

* A second delivery of a run, while the first executes or after it ended, is acknowledged,
  logged (logger ``beatleader.dedup``, naming the task id, entry and run) and not executed
  (celery's ``Ignore``: no result is stored over the first execution's).
* A redelivery after the claiming worker died (``acks_late``, kill -9) executes: the dead worker's
  claim is ephemeral and ends with its session; the delivery waits up to about one session
  timeout for it.
* ``task.retry()`` works: the retry (``request.retries`` one higher) may claim the run again,
  earlier attempts may not. A task that raised (failed) is done, as in celery, and is not run again.
* ZooKeeper unreachable (or the settings invalid) when a run arrives: the run is not executed;
  the message is published again with the same id after a growing delay
  (:attr:`DedupPolicy.requeue_limit` times), then dropped with an ERROR. Never executed unguarded.
  A requeued copy, and a retry finding its previous attempt still finishing, are requeued
  rather than dropped when the claim stays held.
* Claims are bounded (see ``claims.py``): about ``dedup_retention / interval + 32`` markers per
  entry.

Not guaranteed:

* A worker killed between the end of the task body and its done marker (three ZooKeeper round
  trips) leaves no marker: a redelivery (``acks_late``) executes the run again.
* Without ``acks_late`` (celery's default acks on receipt), a worker killed mid-run loses that
  run: celery already acknowledged the message.
* A worker that loses its ZooKeeper session while a run executes loses its claim; a duplicate
  delivered after that may run concurrently (logged as ERROR by the first when it completes).
* A ZooKeeper request in flight when the connection drops waits for the reconnection, at most
  ``ClaimPolicy.request_timeout``: the claim is then requeued, the finish retried for
  :attr:`DedupPolicy.finish_timeout`; a delivery can hold its worker slot that long.
* Tasks registered after the worker started consuming are guarded from their second execution
  on (the first is logged as ERROR). Pools tested: prefork, solo, threads (not gevent/eventlet).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from celery import signals
from celery.app.trace import build_tracer
from celery.exceptions import Ignore, Reject, Retry
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from beatleader.config import ConfigError, Settings
from beatleader.runs.records import error_summary, marker_fields
from beatleader.worker.claims import ClaimStore, Outcome, RunKey, Verdict
from beatleader.zk import layout
from beatleader.zk.client import make_client

logger = logging.getLogger("beatleader.dedup")

__all__ = ["REQUEUES_HEADER", "DedupGuard", "DedupPolicy", "Unavailable", "install"]

_HOST = socket.gethostname()
#: Header counting how often a run was published again because ZooKeeper was unreachable.
REQUEUES_HEADER = "beatleader_dedup_requeues"
_WRAPPED = "__beatleader_dedup__"


class Unavailable(Exception):
    """The claim store cannot be reached (or configured) from this worker process."""


class DedupPolicy:
    """Tunables of the worker guard; subclass and pass to :func:`install` to tune."""

    #: Seconds a worker process waits for its ZooKeeper connection before it requeues a run.
    connect_timeout = 10.0
    #: Times a run is published again while ZooKeeper is unreachable, before it is dropped.
    requeue_limit = 20
    #: First requeue delay, seconds; doubles on each requeue up to ``requeue_max_delay``.
    requeue_first_delay = 1.0
    #: Largest requeue delay, seconds (20 requeues: about 8 minutes of delays, plus
    #: ``connect_timeout`` per attempt).
    requeue_max_delay = 30.0
    #: Seconds spent retrying the done marker after a connection loss before giving up (ERROR).
    finish_timeout = 30.0


def install(app: Any, policy: type[DedupPolicy] = DedupPolicy) -> DedupGuard:
    """Guard every task of ``app``, defined before or after this call; idempotent."""
    guard: DedupGuard | None = getattr(app, "_beatleader_dedup", None)
    if guard is not None:
        return guard
    guard = DedupGuard(app, policy)
    app._beatleader_dedup = guard
    app.on_after_finalize.connect(guard.on_finalized, weak=False)
    signals.worker_init.connect(guard.on_worker_init, weak=False)
    signals.worker_process_init.connect(guard.on_process_init, weak=False)
    signals.worker_process_shutdown.connect(guard.on_shutdown, weak=False)
    signals.worker_shutdown.connect(guard.on_shutdown, weak=False)
    signals.task_prerun.connect(guard.on_prerun, weak=False)
    if app.finalized:
        guard.wrap_tasks()
    return guard


class DedupGuard:
    """The guard of one app: wraps its tasks and owns this process's claim store."""

    def __init__(self, app: Any, policy: type[DedupPolicy]) -> None:
        self.app = app
        self.policy = policy
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: KazooClient | None = None
        self._store: ClaimStore | None = None
        self._settings: Settings | None = None
        self._hostname: str | None = None  # the worker's, for tracers rebuilt after wrapping

    # -- wrapping -------------------------------------------------------------------------------

    def wrap_tasks(self) -> int:
        """Wrap the ``run`` of every registered task not wrapped yet; return how many."""
        wrapped = 0
        for task in list(self.app.tasks.values()):
            if self.wrap(task):
                wrapped += 1
        return wrapped

    def wrap(self, task: Any) -> bool:
        run = task.run
        if getattr(run, _WRAPPED, False) or task.name.startswith("celery."):
            return False

        @functools.wraps(run)
        def guarded_run(*args: Any, **kwargs: Any) -> Any:
            return self.execute(task, run, args, kwargs)

        setattr(guarded_run, _WRAPPED, True)
        task.run = guarded_run
        if task.__trace__ is not None:  # a tracer built earlier captured the unwrapped run
            task.__trace__ = build_tracer(
                task.name, task, self.app.loader, self._hostname, app=self.app
            )
        return True

    def on_finalized(self, sender: Any = None, **_: Any) -> None:
        self.wrap_tasks()

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        self._hostname = getattr(sender, "hostname", None)
        self.wrap_tasks()
        try:
            self.settings()
        except ConfigError as exc:
            logger.error("beatleader.dedup: %s; beatleader runs will not execute", exc)

    def on_process_init(self, **_: Any) -> None:
        if self.app.finalized:
            self.wrap_tasks()

    def on_shutdown(self, **_: Any) -> None:
        with self._lock:
            client, pid = self._client, self._pid
            self._client = self._store = None
        if client is not None and pid == os.getpid():
            try:
                client.stop()
                client.close()
            except Exception:
                logger.debug("closing the dedup client failed", exc_info=True)

    def on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        """A task registered after the worker started: guard it from its next execution on."""
        task = sender
        if task is None or getattr(task, "app", None) is not self.app:
            return
        if getattr(task.run, _WRAPPED, False):
            return
        if self.wrap(task) and self.run_key(task.request) is not None:
            logger.error(
                "beatleader.dedup: task %s (%s) was registered after the worker started and "
                "runs unguarded this once",
                task_id,
                task.name,
            )

    # -- one execution ----------------------------------------------------------------------------

    def execute(self, task: Any, run: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        request = task.request
        key = self.run_key(request)
        if key is None:
            return run(*args, **kwargs)
        attempt = _int(getattr(request, "retries", 0))
        requeued = _int(_header(request, REQUEUES_HEADER)) > 0
        store: ClaimStore | None = None
        try:
            store = self.store()
            verdict = store.acquire(key, attempt, self._owner(key), patient=requeued)
        except (Unavailable, KazooException, KazooTimeoutError, OSError) as exc:
            if store is not None:
                store.suspect(key)  # its create may have succeeded with the reply lost
            self.requeue(task, request, key, f"claim store unreachable ({exc})")
        if verdict is Verdict.BUSY:
            self.requeue(task, request, key, verdict.value)
        if verdict is not Verdict.CLAIMED:
            level = logging.INFO if verdict is Verdict.DONE else logging.WARNING
            logger.log(level, "beatleader.dedup: dropped a delivery of %s: %s", key, verdict.value)
            raise Ignore()
        outcome = Outcome.RELEASED
        error: str | None = None
        started = time.monotonic()
        try:
            result = run(*args, **kwargs)
            outcome = Outcome.DONE
            return result
        except Retry as exc:
            outcome = Outcome.RETRYING
            cause = getattr(exc, "exc", None)
            error = error_summary(cause) if isinstance(cause, BaseException) else None
            raise
        except Reject as exc:
            outcome = Outcome.RELEASED if exc.requeue else Outcome.DONE
            raise
        except Ignore:
            outcome = Outcome.DONE
            raise
        except Exception as exc:
            outcome = Outcome.FAILED
            error = error_summary(exc)
            raise
        finally:
            record = marker_fields(None, time.monotonic() - started, _HOST, os.getpid(), error)
            self.finish(store, key, outcome, attempt, record)

    def finish(
        self,
        store: ClaimStore,
        key: RunKey,
        outcome: Outcome,
        attempt: int,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Record the outcome, retrying through connection losses; never raises."""
        deadline = time.monotonic() + self.policy.finish_timeout
        while True:
            try:
                store.finish(key, outcome, attempt, record)
                return
            except Exception as exc:
                transient = isinstance(exc, (KazooException, KazooTimeoutError))
                if time.monotonic() >= deadline or not transient:
                    logger.error(
                        "beatleader.dedup: could not record %s as %s (%r): a redelivery may "
                        "execute it again",
                        key,
                        outcome.value,
                        exc,
                    )
                    return
                time.sleep(0.2)

    def requeue(self, task: Any, request: Any, key: RunKey, why: str) -> NoReturn:
        """Publish the run again later (same id), or drop it after the limit; always raises."""
        count = _int(_header(request, REQUEUES_HEADER))
        limit = self.policy.requeue_limit
        if count >= limit:
            logger.error("beatleader.dedup: %s NOT executed after %d requeues: %s", key, count, why)
            raise Ignore()
        delay = min(self.policy.requeue_max_delay, self.policy.requeue_first_delay * 2**count)
        logger.warning(
            "beatleader.dedup: %s not executed yet: %s; published again in %.1f s (%d of %d)",
            key, why, delay, count + 1, limit,
        )  # fmt: skip
        headers = {**(getattr(request, "headers", None) or {}), REQUEUES_HEADER: count + 1}
        try:
            signature = task.signature_from_request(request, request.args, request.kwargs)
            signature.apply_async(countdown=delay, headers=headers)
        except Exception as publish_error:
            if task.acks_late:
                raise Reject(publish_error, requeue=True) from None
            logger.error(
                "beatleader.dedup: %s lost: could not publish it again: %r", key, publish_error
            )
        raise Ignore()

    # -- what is guarded --------------------------------------------------------------------------

    def run_key(self, request: Any) -> RunKey | None:
        """The run a request is, or None when it is not a genuine beatleader run."""
        root = _header(request, layout.HEADER_ROOT)
        entry = _header(request, layout.HEADER_ENTRY)
        ordinal = _header(request, layout.HEADER_RUN)
        incarnation = _header(request, layout.HEADER_INCARNATION)
        if root is None and entry is None and ordinal is None:
            return None
        task_id = getattr(request, "id", None)
        valid = (
            isinstance(root, str)
            and isinstance(entry, str)
            and isinstance(ordinal, int)
            and not isinstance(ordinal, bool)
            and ordinal >= 0
            and (incarnation is None or layout.is_incarnation(incarnation))
        )
        backfill = _header(request, layout.HEADER_BACKFILL)
        if valid and backfill is not None:
            return self._backfill_key(root, entry, ordinal, backfill, task_id)
        if not valid or task_id != layout.run_task_id(root, entry, ordinal, incarnation):
            logger.warning(
                "beatleader.dedup: task %s carries beatleader headers that do not match its id; "
                "executed unguarded",
                task_id,
            )
            return None
        folder = self._folder(root, entry, incarnation)
        return RunKey(folder=folder, ordinal=ordinal, entry=entry, task_id=task_id)

    def _backfill_key(
        self, root: str, entry: str, ordinal: int, scheduled: Any, task_id: Any
    ) -> RunKey | None:
        """The key of a backfilled run: its entry's folder for its UTC day, by its time."""
        moment = None
        if isinstance(scheduled, str):
            with contextlib.suppress(ValueError):
                moment = datetime.fromisoformat(scheduled)
        genuine = (
            moment is not None
            and moment.tzinfo is not None
            and layout.backfill_time(moment) == scheduled
            and ordinal == layout.backfill_ordinal(moment)
            and task_id == layout.backfill_task_id(root, entry, scheduled)
        )
        if not genuine or moment is None:
            logger.warning(
                "beatleader.dedup: task %s carries backfill headers that do not match its id; "
                "executed unguarded",
                task_id,
            )
            return None
        folder = self._folder(root, layout.backfill_folder_name(entry, moment), None)
        return RunKey(folder=folder, ordinal=ordinal, entry=entry, task_id=task_id)

    def _folder(self, root: str, entry: str, incarnation: str | None) -> str:
        """``dedup/`` folder of an entry's runs: one per incarnation (ordinals restart with one)."""
        try:
            own: str | None = self.settings().path
        except ConfigError:
            own = None  # store() reports it
        return layout.dedup_folder(entry, incarnation, None if root == own else root)

    # -- the process's client -------------------------------------------------------------------

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_app(self.app)
        return self._settings

    def store(self) -> ClaimStore:
        """This process's claim store, connected; a new session after a fork."""
        with self._lock:
            if self._pid != os.getpid() or self._store is None:
                self._open()
            assert self._store is not None and self._client is not None
            client, store = self._client, self._store
        if not client.connected:
            self._wait_connected(client)
        return store

    def _open(self) -> None:
        try:
            settings = self.settings()
        except ConfigError as exc:
            raise Unavailable(str(exc)) from None
        # A client inherited through fork is abandoned, never closed: closing it would end the
        # parent's session.
        client = make_client(settings)
        try:
            client.start(timeout=self.policy.connect_timeout)
        except KazooTimeoutError:
            client.stop()
            raise Unavailable(f"no ZooKeeper connection to {settings.zk_hosts}") from None
        store = ClaimStore(
            client, settings.path, settings.dedup_retention, keep=settings.history_size
        )
        store.on_lost_claim = _report_lost_claim
        self._pid, self._client, self._store = os.getpid(), client, store

    def _wait_connected(self, client: KazooClient) -> None:
        deadline = time.monotonic() + self.policy.connect_timeout
        while not client.connected:
            if time.monotonic() >= deadline:
                raise Unavailable(f"ZooKeeper connection {client.state}")
            time.sleep(0.05)

    def _owner(self, key: RunKey) -> dict[str, Any]:
        return {"task_id": key.task_id, "host": _HOST, "pid": os.getpid()}


def _report_lost_claim(key: RunKey, message: str) -> None:
    logger.error("beatleader.dedup: %s finished but %s; a duplicate may have run", key, message)


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
