"""The deployment topology without containers: a ZooKeeper ensemble, N beats and a worker.

By hand (from the repository root; Ctrl-C stops everything)::

    python3 scripts/topology.py                 # 3 ZooKeeper servers, 3 beats, 1 worker
    python3 scripts/topology.py --zk-servers 1  # a standalone ZooKeeper instead

It prints the ``beatleader status`` command to watch the election, and where every log is.

From code (the demo and ``tests/test_deployment.py``)::

    with NativeTopology(base_dir, beats=3) as topo:   # started, stopped on exit
        topo.ensemble.leader().kill()

Guarantees:

* ZooKeeper comes from :mod:`beatleader.testing.localzk` (loopback, throwaway, not for production).
* Every beat gets ``BEATLEADER_ZK_HOSTS`` (all ensemble members), ``BEATLEADER_PATH``,
  ``BEATLEADER_SESSION_TIMEOUT`` and ``BEATLEADER_IDENTITY`` = its name (``beat-1`` ...).
* Processes run in their own session (a terminal's Ctrl-C reaches only this script) and
  :meth:`NativeTopology.stop` stops all of them (SIGTERM, then SIGKILL) and the ZooKeeper
  servers, whatever state they are in; it is safe to call twice.
* The default processes run ``scripts/demo_app.py`` on kombu's filesystem transport in
  ``<base_dir>/broker``; a test passes its own ``spawn`` (e.g. the test harness's processes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from beatleader.testing.localproc import LoggedProcess
from beatleader.testing.localzk import ZooKeeperServer, missing_requirements
from beatleader.testing.zkensemble import ZooKeeperEnsemble

SCRIPTS_DIR = Path(__file__).resolve().parent
DEMO_APP = "demo_app"
DEFAULT_PATH = "/beatleader/demo"
#: Seconds a stopping process gets between SIGTERM and SIGKILL.
STOP_GRACE = 10.0


class Instance(Protocol):
    """What the topology needs of a started beat or worker process."""

    name: str

    @property
    def pid(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


#: (kind "beat" or "worker", name, environment overrides) -> a started process.
Spawn = Callable[[str, str, Mapping[str, str]], Instance]


class CeleryInstance(LoggedProcess):
    """``python -m celery -A demo_app <beat|worker> ...`` logging to ``<workdir>/<name>.log``."""

    def __init__(self, kind: str, name: str, env: Mapping[str, str], workdir: Path) -> None:
        self.kind = kind
        args = beat_args(workdir / f"{name}.schedule") if kind == "beat" else worker_args(name)
        super().__init__(
            [sys.executable, "-m", "celery", "-A", DEMO_APP, *args],
            workdir / f"{name}.log",
            cwd=workdir,
            env=celery_environment(env),
            name=name,
        )

    def close(self) -> None:
        """SIGTERM (an orderly stop), SIGKILL after :data:`STOP_GRACE`; reaps the process."""
        self.stop(STOP_GRACE)


def beat_args(schedule_file: Path) -> list[str]:
    return [
        "beat",
        "-S",
        "beatleader.Scheduler",
        "--loglevel=INFO",
        "--schedule",
        str(schedule_file),
    ]


def worker_args(name: str) -> list[str]:
    return [
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        f"--hostname={name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def celery_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus ``overrides``, with ``scripts/`` on ``PYTHONPATH``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **overrides}
    paths = [str(SCRIPTS_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class NativeTopology:
    """``zk_servers`` ZooKeeper servers (1: standalone), ``beats`` beat instances, ``workers``."""

    def __init__(
        self,
        base_dir: Path,
        *,
        zk_servers: int = 3,
        beats: int = 3,
        workers: int = 1,
        path: str = DEFAULT_PATH,
        session_timeout: float = 3.0,
        env: Mapping[str, str] | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.broker_dir = self.base_dir / "broker"
        self.procs_dir = self.base_dir / "procs"
        self.execution_log = self.base_dir / "executions.jsonl"
        self.path = path
        self.session_timeout = session_timeout
        self.beat_count = beats
        self.worker_count = workers
        self.extra_env = dict(env or {})
        self.spawn: Spawn = spawn or self._spawn_celery
        self.ensemble = ZooKeeperEnsemble(self.base_dir / "zookeeper", size=zk_servers)
        self.beats: list[Instance] = []
        self.workers: list[Instance] = []

    # -- where things are ------------------------------------------------------------------------

    @property
    def zk_hosts(self) -> str:
        """The kazoo hosts string listing every ZooKeeper server."""
        return self.ensemble.hosts

    @property
    def zk_servers(self) -> list[ZooKeeperServer]:
        return self.ensemble.servers

    def env(self) -> dict[str, str]:
        """Environment overrides every beat and worker gets (beats add their identity)."""
        return {
            "BEATLEADER_ZK_HOSTS": self.zk_hosts,
            "BEATLEADER_PATH": self.path,
            "BEATLEADER_SESSION_TIMEOUT": f"{self.session_timeout:g}",
            "DEMO_BROKER_DIR": str(self.broker_dir),
            "DEMO_EXECUTION_LOG": str(self.execution_log),
            **self.extra_env,
        }

    def status_command(self) -> str:
        """The CLI command that shows this topology's election and entry state."""
        return f"beatleader status --zk-hosts {self.zk_hosts} --path {self.path}"

    def beat_by_pid(self, pid: int) -> Instance | None:
        return next((b for b in self.beats if b.pid == pid), None)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, zk_timeout: float = 60) -> None:
        """Start ZooKeeper (waiting until it serves), then the worker(s) and the beats."""
        missing = missing_requirements()
        if missing:
            raise RuntimeError("cannot run ZooKeeper, missing: " + "; ".join(missing))
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self.procs_dir.mkdir(parents=True, exist_ok=True)
        self.ensemble.start(zk_timeout)
        for number in range(1, self.worker_count + 1):
            self.workers.append(self.spawn("worker", f"worker-{number}", self.env()))
        for number in range(1, self.beat_count + 1):
            self.start_beat(f"beat-{number}")

    def start_beat(self, name: str) -> Instance:
        """Start one more beat instance called ``name``."""
        beat = self.spawn("beat", name, {**self.env(), "BEATLEADER_IDENTITY": name})
        self.beats.append(beat)
        return beat

    def stop(self) -> None:
        """Stop every beat, then the workers, then ZooKeeper; never raises for a dead process."""
        try:
            close_all([*self.beats, *self.workers])
        finally:
            self.ensemble.stop()

    def diagnostics(self) -> list[tuple[str, str]]:
        """(title, text) log sections of every process, for a failed test's report."""
        sections = self.ensemble.diagnostics()
        for instance in [*self.beats, *self.workers]:
            report = getattr(instance, "diagnostics", None)
            if callable(report):
                sections.extend(report())
        return sections

    def _spawn_celery(self, kind: str, name: str, env: Mapping[str, str]) -> Instance:
        return CeleryInstance(kind, name, env, self.procs_dir)

    def __enter__(self) -> NativeTopology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_uninterrupted(topo: NativeTopology) -> None:
    """:meth:`NativeTopology.stop` with Ctrl-C and SIGTERM ignored until it is done."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        topo.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def close_all(instances: Sequence[Instance]) -> None:
    """Close the instances in parallel (each may take up to its stop grace)."""
    threads = [threading.Thread(target=i.close, daemon=True) for i in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- by hand -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--zk-servers", type=int, default=3, help="ZooKeeper servers (default 3)")
    parser.add_argument("--beats", type=int, default=3, help="beat instances (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="workers (default 1)")
    parser.add_argument("--session-timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--dir", type=Path, help="working folder (default: a new temp folder)")
    return parser.parse_args(argv)


def describe(topo: NativeTopology) -> str:
    """What runs where, and how to look at it."""
    lines = [f"ZooKeeper: {topo.zk_hosts}"]
    lines += [
        f"  server {s.server_id or 1}: port {s.port}, log {s.log_path}" for s in topo.zk_servers
    ]
    lines += [f"  {i.name}: pid {i.pid}" for i in [*topo.beats, *topo.workers]]
    lines += [
        f"logs: {topo.procs_dir}",
        f"executions: {topo.execution_log}",
        "",
        "watch the election:",
        f"  {topo.status_command()} --watch",
        "kill the leader (its pid is in the status output) with kill -9 <pid> and watch again.",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base_dir = args.dir or Path(tempfile.mkdtemp(prefix="beatleader-topology-"))
    topo = NativeTopology(
        base_dir,
        zk_servers=args.zk_servers,
        beats=args.beats,
        workers=args.workers,
        session_timeout=args.session_timeout,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        topo.start()
        print(describe(topo), flush=True)
        signal.pause()  # until Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        stop_uninterrupted(topo)
    return 0


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
