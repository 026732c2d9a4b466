"""``EmbeddedBeat``: run beatleader's beat inside the web application's own processes.

Many teams start periodic tasks from the web app instead of a separate beat service::

    beat = EmbeddedBeat(celery_app).start()   # returns at once
    ...
    beat.status()    # {"running": True, "leader": False, "identity": ..., "pid": ...}
    beat.stop()      # hands leadership over at once, joins the thread

Every process that starts one is a contender in the app's election (several workers of one server
on one machine are simply more contenders); only the leader sends, exactly as with
``celery beat -S beatleader.Scheduler``, because it runs that same scheduler in celery's own beat
loop (``celery.beat.Service``), in a background daemon thread.

Guarantees:

* Nothing reaches the host application: settings are validated in the constructor (a bad value
  raises :class:`~beatleader.ConfigError` there, in the caller); after that, ZooKeeper being
  unreachable at start or lost later only makes the thread wait and log, and any exception escaping
  celery's beat loop is logged and the loop started again after :attr:`EmbeddedBeat.restart_delay`.
* One beat per app per process: ``start()`` of an equivalent instance (same Celery app, same
  ZooKeeper hosts and path) while one runs is a no-op returning the running one, so Django's double
  ``ready()`` or a server hook plus an app factory do not make two contenders.
* ``stop()`` closes the ZooKeeper session at once (the next contender leads immediately), wakes a
  follower waiting in ``tick`` and a leader sleeping between ticks, and joins the thread. ``start``
  and ``stop`` are idempotent; beats still running at interpreter exit are stopped by ``atexit``.
* Fork: a ZooKeeper session cannot cross ``os.fork()``. A beat started in a parent is restarted in
  the forked child with a new thread and a new session (a warning says so); the child never touches
  the parent's session, whose sockets it inherited. The right place to start is after the fork:
  gunicorn ``post_fork``, uwsgi ``@postfork`` (see ``examples/``).

Not guaranteed:

* A process that dies without running ``atexit`` (SIGKILL, ``os._exit``, as in a forked
  ``multiprocessing`` child that inherited a running beat) keeps its contender node until
  ZooKeeper expires its session, ``session_timeout`` later; only then does the next one lead.
* Forks that do not go through ``os.fork()`` (a C extension calling ``fork()``, as uwsgi does
  without ``lazy-apps``) are not seen: start the beat after such a fork yourself.
* Under Django's ``runserver`` autoreloader both the watcher and the served child run the project's
  code; start only where ``os.environ.get("RUN_MAIN") == "true"`` (see the Django example).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import beat

from beatleader.beat.scheduler import Scheduler
from beatleader.config import ConfigError, Settings
from beatleader.observe import Observers

if TYPE_CHECKING:
    from beatleader.observe.metrics import PrometheusObserver

logger = logging.getLogger("beatleader.embedded")

#: Seconds ``stop`` waits for the beat thread unless told otherwise.
STOP_TIMEOUT = 10.0

_Key = tuple[int, str, str]

#: The running beat of each (Celery app, ZooKeeper hosts, path) in this process.
_running: dict[_Key, EmbeddedBeat] = {}
_running_lock = threading.Lock()

#: Beat threads inherited across a fork: never closed in the child (their sockets are the parent's
#: session), kept referenced so that no finalizer ever runs on them.
_inherited: list[_Runner] = []


class EmbeddedBeat:
    """celery beat with :class:`beatleader.Scheduler` in a background thread; see the module doc.

    ``overrides`` are beatleader settings (``zk_hosts``, ``path``, ``session_timeout``,
    ``identity``, ``misfire_grace``) that win over ``app.conf`` and the environment.
    ``metrics_registry``: a ``prometheus_client`` registry (e.g. ``prometheus_client.REGISTRY``)
    to put beatleader's metrics in, so that the web app serves them
    (:mod:`beatleader.observe.metrics`).
    ``scheduler_cls``: :class:`beatleader.Scheduler` (the default) or a subclass, or its dotted
    name, e.g. ``"beatleader.django.DatabaseScheduler"`` for django-celery-beat's tables.
    """

    #: Seconds before celery's beat loop is started again after it failed.
    restart_delay = 5.0

    def __init__(
        self,
        app: Any,
        *,
        metrics_registry: Any = None,
        scheduler_cls: type[Scheduler] | str | None = None,
        **overrides: Any,
    ) -> None:
        self.app = app
        self.settings = Settings.from_app(app, **overrides)
        self._scheduler_cls = _scheduler_class(scheduler_cls)
        self._metrics: PrometheusObserver | None = None
        if metrics_registry is not None:
            self._metrics = _metrics_observer(self.settings.path, metrics_registry)
        self._overrides = overrides
        self._key: _Key = (id(app), self.settings.zk_hosts, self.settings.path)
        self._runner: _Runner | None = None
        self._twin: EmbeddedBeat | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> EmbeddedBeat:
        """Start contending in a background thread and return at once; return the running beat.

        When an equivalent beat already runs in this process, start nothing and return that one
        (this object then reports and stops that one).
        """
        with _running_lock:
            running = _running.get(self._key)
            if running is not None and running is not self:
                logger.info("beatleader: a beat for %s already runs here; reusing it", self._key[2])
                if running._scheduler_cls is not self._scheduler_cls:
                    logger.warning(
                        "beatleader: the beat already running for %s uses %s, not %s; reusing it",
                        self._key[2],
                        running._scheduler_cls.__name__,
                        self._scheduler_cls.__name__,
                    )
                self._twin = running
                return running
            self._twin = None
            if self._runner is None:
                _running[self._key] = self
                self._runner = _Runner(
                    self.app, self.settings, self.restart_delay, self._metrics, self._scheduler_cls
                )
                self._runner.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Release leadership at once and join the thread (at most ``timeout`` seconds)."""
        with _running_lock:
            beat_ = self._twin or self
            self._twin = None
            runner, beat_._runner = beat_._runner, None
            if _running.get(beat_._key) is beat_:
                del _running[beat_._key]
        if runner is not None:
            runner.stop(timeout)

    def __enter__(self) -> EmbeddedBeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state for the app's health endpoint ------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        scheduler = self._scheduler()
        return scheduler is not None and scheduler.is_leader

    def status(self) -> dict[str, Any]:
        """A small JSON-ready summary of this process's beat, for the app's own health endpoint."""
        beat_ = self._twin or self
        runner = beat_._runner
        scheduler = self._scheduler()
        settings = scheduler.settings if scheduler is not None else beat_.settings
        return {
            "running": runner is not None and runner.alive,
            "leader": scheduler is not None and scheduler.is_leader,
            "identity": settings.identity,
            "path": settings.path,
            "zk_connected": scheduler is not None and scheduler.zk_connected,
            "pid": os.getpid(),
        }

    def _scheduler(self) -> Scheduler | None:
        runner = (self._twin or self)._runner
        return runner.scheduler if runner is not None else None

    # -- fork -------------------------------------------------------------------------------------

    def _restart_in_child(self) -> None:
        """In a freshly forked child: abandon the parent's thread and session, start our own."""
        inherited = self._runner
        if inherited is None:
            return
        _inherited.append(inherited)
        self.settings = Settings.from_app(self.app, **self._overrides)  # identity has the new pid
        self._runner = _Runner(
            self.app, self.settings, self.restart_delay, self._metrics, self._scheduler_cls
        )
        self._runner.start()
        logger.warning(
            "beatleader: process %d was forked from %d after EmbeddedBeat.start(); restarting the "
            "beat in the child with its own ZooKeeper session. Start it after forking instead "
            "(gunicorn post_fork, uwsgi @postfork).",
            os.getpid(),
            inherited.pid,
        )


class _Runner:
    """One background thread running celery's beat loop, started again whenever it fails."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        restart_delay: float,
        metrics: PrometheusObserver | None = None,
        scheduler_cls: type[Scheduler] | None = None,
    ) -> None:
        self.pid = os.getpid()
        self._scheduler_cls = scheduler_cls or Scheduler
        self._metrics = metrics
        self._app = app
        self._settings = settings
        self._restart_delay = restart_delay
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._service: _Service | None = None
        self._thread = threading.Thread(target=self._run, name="beatleader-beat", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def scheduler(self) -> Scheduler | None:
        service = self._service
        return service.scheduler if service is not None else None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopping.set()
            service = self._service
        if service is not None:
            service.shutdown()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("beatleader: the beat thread did not finish within %g s", timeout)

    def _run(self) -> None:
        self._app.set_current()
        while not self._stopping.is_set():
            try:
                self._serve()
            except (ConfigError, SystemExit) as exc:  # an operator mistake: one line
                logger.error(
                    "beatleader: the embedded beat cannot start: %s; trying again in %g s",
                    str(exc).removeprefix("beatleader: "),
                    self._restart_delay,
                )
            except Exception:
                logger.exception(
                    "beatleader: the embedded beat failed; restarting in %g s", self._restart_delay
                )
            else:
                if not self._stopping.is_set():
                    logger.warning(
                        "beatleader: the embedded beat loop ended; restarting in %g s",
                        self._restart_delay,
                    )
            self._stopping.wait(self._restart_delay)

    def _serve(self) -> None:
        service = _Service(
            self._app, self._settings, self._stopping, self._metrics, self._scheduler_cls
        )
        with self._lock:
            if self._stopping.is_set():
                service.shutdown()
                return
            self._service = service
        try:
            service.start()
        finally:
            with self._lock:
                self._service = None


class _Service(beat.Service):  # type: ignore[misc]
    """celery's beat loop over a scheduler, stoppable from any thread at once.

    The scheduler is of the class asked for, unchanged (no subclass is made): this runner only
    owns the loop's sleep. celery's loop sleeps in ``time.sleep`` for what ``tick`` returns; here
    the instance's ``tick`` waits that long on the stop event instead and returns 0, so that
    ``stop()`` wakes a leader between ticks at once (a follower is woken by ``close``).
    """

    #: Built in ``__init__``. This shadows celery's lazy ``scheduler`` property, whose lock is
    #: shared by every Service and could be inherited locked across a fork.
    scheduler: Scheduler | None = None

    def __init__(
        self,
        app: Any,
        settings: Settings,
        stopping: threading.Event,
        metrics: PrometheusObserver | None = None,
        scheduler_cls: type[Scheduler] | None = None,
    ) -> None:
        cls = scheduler_cls or Scheduler
        super().__init__(app, scheduler_cls=cls)
        self.scheduler = scheduler = cls(
            app,
            max_interval=self.max_interval,
            beatleader_settings=settings,
            beatleader_observers=Observers() if metrics is None else Observers(metrics),
        )
        tick = scheduler.tick

        def tick_then_wait(*args: Any, **kwargs: Any) -> float:
            stopping.wait(tick(*args, **kwargs))
            return 0.0

        scheduler.tick = tick_then_wait  # type: ignore[method-assign]
        if metrics is not None:
            from beatleader.runs import metrics as run_metrics

            metrics.watch(scheduler)
            run_metrics.watch(scheduler, metrics.registry)

    def shutdown(self) -> None:
        """End the loop and release leadership now, even while a tick is waiting."""
        self.stop()
        if self.scheduler is not None:
            self.scheduler.close()


def _scheduler_class(wanted: type[Scheduler] | str | None) -> type[Scheduler]:
    """``wanted`` (a :class:`Scheduler` subclass or its dotted name) as a class, checked."""
    if wanted is None:
        return Scheduler
    cls: Any = wanted
    if isinstance(wanted, str):
        from kombu.utils.imports import symbol_by_name

        try:
            cls = symbol_by_name(wanted)  # type: ignore[no-untyped-call]
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"scheduler_cls {wanted!r} cannot be imported ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ConfigError(
            f"scheduler_cls must be beatleader.Scheduler or a subclass of it "
            f"(e.g. beatleader.django.DatabaseScheduler), not {wanted!r}"
        )
    return cls


def _metrics_observer(path: str, registry: Any) -> PrometheusObserver:
    try:
        from beatleader.observe.metrics import observer_for
    except ImportError:
        raise ConfigError(
            "metrics_registry needs prometheus_client: pip install 'beatleader[prometheus]'"
        ) from None
    return observer_for(path, registry)


def _restart_all_in_child() -> None:
    global _running_lock
    _running_lock = threading.Lock()  # another thread may have held it at the fork
    for beat_ in list(_running.values()):
        try:
            beat_._restart_in_child()
        except Exception:
            logger.exception(
                "beatleader: could not restart the beat in forked process %d", os.getpid()
            )


@atexit.register
def _stop_all_at_exit() -> None:
    for beat_ in list(_running.values()):
        beat_.stop()


os.register_at_fork(after_in_child=_restart_all_in_child)
