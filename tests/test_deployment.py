"""The deployment topology: a three-server ZooKeeper ensemble, three beats, one worker.

The native topology (``scripts/topology.py``, with the test harness's beat and worker processes)
checks what a real ensemble promises: beat leadership survives the loss of ZooKeeper servers
while a quorum lives; without a quorum nothing is sent and no beat exits; when the quorum is back
sending resumes from exactly one instance, and no run is ever sent twice.

The container deployment (``Dockerfile``, ``docker-compose.yml``) is checked statically: there is
no Docker engine here, but ``docker-compose config`` validates and normalises the compose file.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from beatleader.testing.localzk import ZooKeeperServer
from scripts.topology import Instance, NativeTopology
from tests.cluster import (
    assert_runs_at_least_once,
    every,
    now_ms,
    schedule_env,
    sender_pid,
)
from tests.harness import (
    REPO_ROOT,
    BeatProcess,
    FilesystemBroker,
    SentMessage,
    WorkerProcess,
    connected_client,
    contenders,
    wait_for,
)

ENTRY = "tick"
SESSION_TIMEOUT = 6.0
#: Generous bound for anything that involves a ZooKeeper election or a session expiry.
SLOW = 60.0
#: A commit that succeeded just before the quorum was lost may still be published this late.
PUBLISH_GRACE_MS = 1000
_WAITING = re.compile(r"waiting for ZooKeeper at .* \((?P<seconds>\d+) s so far\)")


# -- the native topology -------------------------------------------------------------------------


def harness_spawn(workdir: Path) -> Any:
    """A topology ``spawn`` that starts the harness's processes (``celery -A tests.app``)."""

    def spawn(kind: str, name: str, env: Mapping[str, str]) -> Instance:
        if kind == "beat":
            return BeatProcess(workdir, env, name=name)
        return WorkerProcess(workdir, env, name=name)

    return spawn


@pytest.fixture
def topology(tmp_path: Path, zk_root: str) -> Iterator[NativeTopology]:
    broker_dir = tmp_path / "topology" / "broker"
    env = {
        "TEST_BROKER_DIR": str(broker_dir),
        "TEST_EXECUTION_LOG": str(tmp_path / "executions.jsonl"),
        "PYTHONUNBUFFERED": "1",
        **schedule_env(**{ENTRY: every(1)}),
    }
    topo = NativeTopology(
        tmp_path / "topology",
        path=zk_root,
        session_timeout=SESSION_TIMEOUT,
        env=env,
        spawn=harness_spawn(tmp_path / "procs"),
    )
    try:
        topo.start()
        yield topo
    finally:
        topo.stop()


@pytest.fixture
def ensemble_client(topology: NativeTopology) -> Iterator[KazooClient]:
    with connected_client(topology.zk_hosts, connect_timeout=30) as client:
        yield client


def status_check(topo: NativeTopology) -> int:
    """Exit code of ``beatleader status --check`` against the topology (the health check)."""
    command = [sys.executable, "-c", "from beatleader.cli import main; main()"]
    options = ["--zk-hosts", topo.zk_hosts, "--path", topo.path, "--timeout", "3"]
    result = subprocess.run(
        [*command, "status", "--check", *options], capture_output=True, timeout=60, check=False
    )
    return result.returncode


def sent_after(broker: FilesystemBroker, after_ms: int) -> list[SentMessage]:
    return [m for m in broker.for_entry(ENTRY) if m.sent_ms > after_ms]


def wait_sent_after(broker: FilesystemBroker, after_ms: int, count: int) -> list[SentMessage]:
    def enough() -> list[SentMessage] | None:
        messages = sent_after(broker, after_ms)
        return messages if len(messages) >= count else None

    found: list[SentMessage] = wait_for(
        enough, SLOW, message=f"{count} messages of {ENTRY!r} sent after {after_ms}"
    )
    return found


def leading_node(client: KazooClient, root: str) -> dict[str, Any]:
    node: dict[str, Any] = wait_for(
        lambda: (contenders(client, root) or [None])[0], SLOW, message="a beat leader"
    )
    return node


def wait_quorum_lost(servers: list[ZooKeeperServer]) -> None:
    wait_for(
        lambda: not any(s.is_serving() for s in servers if s.is_running),
        SLOW,
        message="the surviving ZooKeeper server stops serving",
    )


def wait_all_beats_waited(beats: list[Instance], offsets: dict[int, int], seconds: float) -> None:
    """Until every beat has logged, since ``offsets``, that it waited >= ``seconds`` for ZK."""

    def waited_long_enough(beat: Any) -> bool:
        text = beat.log()[offsets[beat.pid] :]
        return any(float(m["seconds"]) >= seconds for m in _WAITING.finditer(text))

    wait_for(
        lambda: all(waited_long_enough(b) for b in beats),
        SLOW,
        message=f"every beat waits for ZooKeeper for {seconds}s",
    )


def assert_all_alive(beats: list[Instance]) -> None:
    exited = [f"{b.name} (pid {b.pid})" for b in beats if not b.alive]
    assert not exited, f"beat processes exited: {exited}"


def test_topology_survives_zookeeper_server_loss_and_quorum_loss(
    topology: NativeTopology, ensemble_client: KazooClient
) -> None:
    broker = FilesystemBroker(topology.broker_dir)
    root = topology.path

    # Steady state: one beat leads and sends; the health check passes.
    leader = leading_node(ensemble_client, root)
    assert status_check(topology) == 0
    first = wait_sent_after(broker, 0, 2)
    assert {sender_pid(m) for m in first} == {leader["pid"]}

    # Kill the ZooKeeper leader: 2 of 3 servers remain, a quorum; the beat leader keeps leading.
    zk_leader = wait_for(topology.ensemble.leader, SLOW, message="a ZooKeeper leader")
    zk_leader.kill()
    killed_ms = now_ms()
    survivors = [s for s in topology.zk_servers if s is not zk_leader]
    wait_for(topology.ensemble.leader, SLOW, message="a new ZooKeeper leader among survivors")
    after_leader_kill = wait_sent_after(broker, killed_ms, 3)
    assert {sender_pid(m) for m in after_leader_kill} == {leader["pid"]}
    assert leading_node(ensemble_client, root)["node"] == leader["node"], "leadership moved"
    assert_all_alive(topology.beats)

    # Kill a follower too: 1 of 3 remains, no quorum. Nothing is sent, no beat exits,
    # and the health check reports ZooKeeper unreachable (2).
    follower = next(s for s in survivors if s.mode() == "follower")
    offsets = {b.pid: len(b.log()) for b in topology.beats}  # harness processes have log()
    follower.kill()
    lost_ms = now_ms()
    wait_quorum_lost(topology.zk_servers)
    assert status_check(topology) == 2
    wait_all_beats_waited(topology.beats, offsets, SESSION_TIMEOUT)
    assert_all_alive(topology.beats)
    regain_ms = now_ms()
    late = sent_after(broker, lost_ms + PUBLISH_GRACE_MS)
    during_outage = [m for m in late if m.sent_ms < regain_ms]
    assert not during_outage, f"sent without a quorum: {[m.task_id for m in during_outage]}"

    # Restart both: the quorum is back; exactly one beat sends again.
    for server in (zk_leader, follower):
        server.launch()
    for server in (zk_leader, follower):
        server.wait_serving(SLOW)
    resumed = wait_sent_after(broker, regain_ms, 3)
    assert len({sender_pid(m) for m in resumed}) == 1, [m.headers["origin"] for m in resumed]
    assert status_check(topology) == 0
    assert_all_alive(topology.beats)

    # at least once: a leader whose session expired with the quorum may leave its last run
    # unmarked, and whoever leads next republishes it (same task id)
    assert_runs_at_least_once(broker.for_entry(ENTRY), root, ENTRY, max_duplicates=1)


# -- the container deployment --------------------------------------------------------------------

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ZK_SERVICES = ("zk1", "zk2", "zk3")


def compose_command() -> list[str]:
    """``docker-compose`` (Debian's package) or the ``docker compose`` plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if shutil.which("docker") and plugin.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("docker-compose is missing: run scripts/install-deps.sh")


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """The compose file as ``docker-compose config`` validates and normalises it."""
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_has_an_ensemble_a_broker_three_beats_and_a_worker(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    assert set(services) == {*ZK_SERVICES, "redis", "beat", "worker"}
    assert services["beat"]["deploy"]["replicas"] == 3
    assert services["redis"]["image"].startswith("redis")
    assert services["worker"]["command"][:4] == ["celery", "-A", "demo_app", "worker"]


def test_compose_zookeeper_servers_form_one_ensemble(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    ids = set()
    for name in ZK_SERVICES:
        service = services[name]
        env = service["environment"]
        assert service["image"].startswith("zookeeper:")
        assert service["hostname"] == name
        ids.add(str(env["ZOO_MY_ID"]))
        listed = dict(item.split("=", 1) for item in env["ZOO_SERVERS"].split())
        assert listed == {
            f"server.{n + 1}": f"{host}:2888:3888;2181" for n, host in enumerate(ZK_SERVICES)
        }
    assert ids == {"1", "2", "3"}


def test_compose_app_points_at_every_zookeeper_and_the_broker(
    compose_config: dict[str, Any],
) -> None:
    for name in ("beat", "worker"):
        env = compose_config["services"][name]["environment"]
        assert env["BEATLEADER_ZK_HOSTS"] == ",".join(f"{zk}:2181" for zk in ZK_SERVICES)
        assert env["DEMO_BROKER_URL"] == "redis://redis:6379/0"
    beat = compose_config["services"]["beat"]
    assert "command" not in beat, "beat runs the image's default command"
    assert set(beat["depends_on"]) >= {*ZK_SERVICES, "redis"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every Dockerfile instruction, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_dockerfile_runs_beat_as_a_non_root_user_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0][0] == "FROM" and "python:3.11" in instructions[0][1]
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    (health,) = [rest for k, rest in instructions if k == "HEALTHCHECK"]
    assert '"beatleader", "status", "--check"' in health
    (cmd,) = [rest for k, rest in instructions if k == "CMD"]
    assert '"beat", "-S", "beatleader.Scheduler"' in cmd


def test_dockerfile_copies_files_that_exist() -> None:
    copied = [rest.split()[:-1] for k, rest in dockerfile_instructions() if k == "COPY"]
    sources = [source for sources in copied for source in sources if not source.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    excluded = [s for s in sources if dockerignored(s)]
    assert not excluded, f"copied but excluded by .dockerignore: {excluded}"


def dockerignored(source: str) -> bool:
    """True when a .dockerignore pattern matches ``source`` or a folder above it."""
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = PurePosixPath(source).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(
        fnmatch.fnmatch(candidate, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(PurePosixPath(candidate).name, pattern.removeprefix("**/"))
        for pattern in patterns
        for candidate in candidates
    )


def test_healthcheck_exit_codes_match_the_cli(tmp_path: Path) -> None:
    """The HEALTHCHECK relies on exit code 2 for an unreachable ZooKeeper."""
    command = [sys.executable, "-c", "from beatleader.cli import main; main()"]
    unreachable = "127.0.0.1:1"
    result = subprocess.run(
        [*command, "status", "--check", "--zk-hosts", unreachable, "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
