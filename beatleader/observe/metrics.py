"""Prometheus metrics of beatleader (the ``beatleader[prometheus]`` extra, ``prometheus_client``).

Two ways to serve them:

* ``celery beat -S beatleader``: set ``beatleader_metrics_port`` (and optionally
  ``beatleader_metrics_address``, default ``127.0.0.1``); beat serves ``/metrics`` there.
* ``EmbeddedBeat(app, metrics_registry=prometheus_client.REGISTRY)``: the metrics go into that
  registry and the web application serves them on its own ``/metrics`` endpoint.

What is exported (every series has a ``path`` label: the app's root znode):

========================================================  =======================================
``beatleader_is_leader``                                  1 while this instance leads, else 0
``beatleader_zk_connected``                               1 while connected to ZooKeeper, else 0
``beatleader_leadership_changes_total``                   times this instance started or stopped
                                                          leading
``beatleader_commit_seconds`` (histogram)                 duration of each fenced state commit
``beatleader_runs_sent_total{entry}``                     runs this instance published
``beatleader_runs_skipped_total{entry}``                  runs skipped (misfire_grace, a policy)
``beatleader_last_run_timestamp_seconds{entry}``          Unix time this instance last sent it
``beatleader_run_lateness_seconds{entry}``                how late its last run was planned (gauge)
``beatleader_next_run_timestamp_seconds{entry}``          when it falls due next (leader only)
``beatleader_problems_total{kind}``                       problems reported (foreign data, ...)
``beatleader_runs_total{entry,outcome}``                  finished runs (succeeded, failed,
                                                          skipped), counted by the leader
``beatleader_run_duration_seconds{entry}`` (histogram)    task duration of each counted run
``beatleader_entry_running{entry}``                       1 while its newest run is claimed
``beatleader_last_success_timestamp_seconds{entry}``      when its newest success finished
``beatleader_entry_period_seconds{entry}``                interval of an ``every`` entry
========================================================  =======================================

The last five (per-entry health, :mod:`beatleader.runs.metrics`) are read from the worker guard's
records when scraped, by the leader only: per scrape, one listing of each entry's run folder
(pipelined) plus one read per run finished since the previous scrape (one multi-read); nothing in
the beat loop. The first scrape after a takeover counts no run (the old leader did).

Decisions: lateness is a gauge of the last run per entry, not a histogram per entry (buckets times
thousands of entries is too many series); the next-due time is computed when scraped, from the
leader's own schedule, so it costs the beat loop nothing and is absent on followers (whose local
schedule is not the shared one).

Guarantees: the metrics are fed only through :mod:`beatleader.observe` hooks, so a failing metric
never breaks scheduling (:class:`~beatleader.observe.Observers` logs and goes on); one
``PrometheusObserver`` per (registry, path) per process, so counters are never counted twice; a
metrics port that cannot be bound is one ERROR line and beat keeps running without it.

Not guaranteed: counters are per process and restart from zero with it (use ``increase()``/
``rate()``); a killed instance's series vanish with it (alert on ``up`` too); the HTTP endpoint has
no authentication or TLS: bind it to a private address.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app, start_http_server

from beatleader import observe
from beatleader.config import ConfigError, Settings
from beatleader.observe import Observer, Observers


class Scheduler(Protocol):
    """What the metrics read of a scheduler (:class:`beatleader.Scheduler` is one).

    A protocol, so that this layer does not import the scheduler that installs it.
    """

    settings: Settings
    observers: Observers

    @property
    def is_leader(self) -> bool: ...

    @property
    def schedule(self) -> Any: ...


logger = logging.getLogger("beatleader.metrics")

_lock = threading.Lock()


class _Families:
    """The metric families of one registry (prometheus_client refuses to register a name twice)."""

    #: Buckets of ``beatleader_commit_seconds``: one ZooKeeper round trip to a slow quorum.
    commit_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["path", *labels], registry=registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["path", *labels], registry=registry)

        self.is_leader = gauge("beatleader_is_leader", "1 while this instance leads")
        self.zk_connected = gauge("beatleader_zk_connected", "1 while connected to ZooKeeper")
        self.changes = counter(
            "beatleader_leadership_changes", "Times this instance started or stopped leading"
        )
        self.commit_seconds = Histogram(
            "beatleader_commit_seconds",
            "Duration of each fenced state commit",
            ["path"],
            buckets=self.commit_buckets,
            registry=registry,
        )
        self.sent = counter("beatleader_runs_sent", "Runs this instance published", "entry")
        self.skipped = counter(
            "beatleader_runs_skipped", "Runs skipped: later than misfire_grace", "entry"
        )
        self.last_run = gauge(
            "beatleader_last_run_timestamp_seconds", "Unix time this instance last sent", "entry"
        )
        self.lateness = gauge(
            "beatleader_run_lateness_seconds", "Seconds the last run was late", "entry"
        )
        self.problems = counter("beatleader_problems", "Problems reported", "kind")
        self.schedules = _NextRunCollector()
        registry.register(self.schedules)


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_observers: dict[tuple[int, str], PrometheusObserver] = {}


def _families_of(registry: CollectorRegistry) -> _Families:
    with _lock:
        families = _families.get(registry)
        if families is None:
            families = _families[registry] = _Families(registry)
        return families


class PrometheusObserver(Observer):
    """Feeds the hooks of one app (root ``path``) into ``registry``; see the module doc.

    Prefer :func:`observer_for`, which returns the one observer of a (registry, path).
    """

    def __init__(self, path: str, registry: CollectorRegistry | None = None) -> None:
        self.path = path
        self.registry = REGISTRY if registry is None else registry
        self._families = families = _families_of(self.registry)
        families.is_leader.labels(path).set(0)  # the series exist before the first change
        families.zk_connected.labels(path).set(0)
        families.changes.labels(path)
        families.commit_seconds.labels(path)

    def watch(self, scheduler: Scheduler) -> None:
        """Export ``scheduler``'s next-due times while it leads (kept weakly)."""
        self._families.schedules.add(self.path, scheduler)

    def leadership_changed(self, leading: bool, reason: str) -> None:
        self._families.is_leader.labels(self.path).set(1 if leading else 0)
        self._families.changes.labels(self.path).inc()

    def connection_changed(self, state: str) -> None:
        self._families.zk_connected.labels(self.path).set(1 if state == "CONNECTED" else 0)

    def committed(self, runs: int, seconds: float) -> None:
        self._families.commit_seconds.labels(self.path).observe(seconds)

    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        families = self._families
        families.sent.labels(self.path, entry).inc()
        families.last_run.labels(self.path, entry).set(time.time())
        families.lateness.labels(self.path, entry).set(lateness)

    def skipped(self, entry: str, lateness: float) -> None:
        self._families.skipped.labels(self.path, entry).inc()
        self._families.lateness.labels(self.path, entry).set(lateness)

    def problem(self, kind: str, detail: str) -> None:
        self._families.problems.labels(self.path, kind).inc()


def observer_for(path: str, registry: CollectorRegistry | None = None) -> PrometheusObserver:
    """The one :class:`PrometheusObserver` of ``path`` in ``registry`` (default: the global one)."""
    registry = REGISTRY if registry is None else registry
    if not isinstance(registry, CollectorRegistry):
        raise ConfigError(
            f"metrics_registry = {registry!r} is invalid: expected a prometheus_client "
            "CollectorRegistry, e.g. prometheus_client.REGISTRY"
        )
    key = (id(registry), path)
    with _lock:
        observer = _observers.get(key)
        if observer is not None and observer.registry is registry:
            return observer
    observer = PrometheusObserver(path, registry)
    with _lock:
        return _observers.setdefault(key, observer)


class _NextRunCollector:
    """``beatleader_next_run_timestamp_seconds``, computed when scraped, from leading schedulers."""

    def __init__(self) -> None:
        self._schedulers: weakref.WeakValueDictionary[int, Scheduler] = (
            weakref.WeakValueDictionary()
        )
        self._paths: dict[int, str] = {}

    def add(self, path: str, scheduler: Scheduler) -> None:
        with _lock:
            self._schedulers[id(scheduler)] = scheduler
            self._paths[id(scheduler)] = path

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "beatleader_next_run_timestamp_seconds",
            "Unix time the entry falls due next (exported by the leader only)",
            labels=["path", "entry"],
        )
        with _lock:
            schedulers = [(self._paths[key], s) for key, s in self._schedulers.items()]
        now = time.time()
        for path, scheduler in schedulers:
            if scheduler.is_leader:
                for entry, seconds in _remaining(scheduler):
                    family.add_metric([path, entry], now + seconds)
        yield family


def _remaining(scheduler: Scheduler) -> Iterator[tuple[str, float]]:
    """(entry name, seconds until due) for every entry whose schedule can tell."""
    try:
        entries = list(scheduler.schedule.items())
    except RuntimeError:  # resized by the beat thread meanwhile: skip this scrape
        return
    for name, entry in entries:
        try:
            remaining = entry.schedule.remaining_estimate(entry.last_run_at)
            yield name, float(remaining.total_seconds())
        except Exception:  # a custom schedule without remaining_estimate: no next-due time
            continue


_servers: dict[tuple[int, str, int], Any] = {}


def serve(
    port: int, address: str, registry: CollectorRegistry | None = None, web: Any = None
) -> bool:
    """Serve ``registry`` on ``http://address:port/metrics`` once per process; False on failure.

    ``web``: a WSGI application served on every other path of that port (the dashboard, with
    ``beatleader_web``). A port that cannot be bound is one ERROR line, never an exception.
    """
    key = (os.getpid(), address, port)
    with _lock:
        if key in _servers:
            return True
        try:
            if web is None:
                _servers[key] = start_http_server(port, addr=address, registry=registry or REGISTRY)
            else:
                _servers[key] = _serve_with_web(port, address, registry or REGISTRY, web)
        except OSError as exc:
            logger.error(
                "beatleader: cannot serve metrics on %s:%d (%s); beat goes on without them",
                address,
                port,
                exc.strerror or exc,
            )
            return False
    logger.info("beatleader: serving Prometheus metrics on http://%s:%d/metrics", address, port)
    return True


def _serve_with_web(port: int, address: str, registry: CollectorRegistry, web: Any) -> Any:
    """``/metrics`` from ``registry``, every other path from ``web``, on a daemon thread."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics_app(environ, start_response)
        return web(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s", format % args)

    server = make_server(address, port, app, Server, Quiet)
    threading.Thread(target=server.serve_forever, name="beatleader-web", daemon=True).start()
    return server


def install(scheduler: Scheduler) -> None:
    """Wire ``scheduler`` to the global registry and serve it on ``beatleader_metrics_port``.

    Called by the scheduler (``setup_schedule``) when the port is set.
    """
    settings = scheduler.settings
    observer = observer_for(settings.path)
    if observer not in scheduler.observers:
        scheduler.observers.add(observer)
    observer.watch(scheduler)
    if settings.metrics_port is not None:
        factory = observe.web_factory if settings.web else None
        web = factory(settings) if factory is not None else None
        serve(settings.metrics_port, settings.metrics_address, web=web)
        if web is not None:
            logger.info(
                "beatleader: serving the dashboard on http://%s:%d/",
                settings.metrics_address,
                settings.metrics_port,
            )
