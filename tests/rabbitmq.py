"""A throwaway RabbitMQ broker for the tests: Debian's ``rabbitmq-server`` on free loopback ports.

Everything of the node is private to one :class:`RabbitMQServer`: its node name
(``bltest-<random>@localhost``), AMQP port, Erlang distribution port, its own ``epmd`` on a free
port (``ERL_EPMD_PORT``, so neither a system epmd on 4369 nor another test's node is touched),
the Mnesia and log folders, the config, an empty plugin list (no management plugin) and an
Erlang cookie in a private ``HOME``. ``/etc/rabbitmq/rabbitmq-env.conf`` is not read.

Debian's ``/usr/sbin/rabbitmq-server`` and ``/usr/sbin/rabbitmqctl`` switch to the ``rabbitmq``
user when run as root (``su rabbitmq``), which cannot write the test's folders and would use that
user's cookie; the scripts in ``/usr/lib/rabbitmq/bin`` are called instead, as the current user.

Guarantees:

* :meth:`RabbitMQServer.start` returns only once an AMQP connection (kombu) to the node succeeds;
  it raises, with the log tail, if the node exits or the deadline passes first.
* :meth:`RabbitMQServer.restart` keeps the node name, the ports and the data: durable queues and
  persistent messages survive it.
* :meth:`RabbitMQServer.stop` asks the node to stop (``rabbitmqctl stop``), waits for the VM to
  exit and kills its process group if it does not.

``missing_requirements()`` says what the machine lacks; :func:`skip_or_fail_without_rabbitmq`
skips a test module then, or fails it when ``BEATLEADER_REQUIRE_RABBITMQ=1`` (``scripts/test.sh``
sets it: there, a missing broker is an install error, not a reason to test less).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from beatleader.testing.localproc import LoggedProcess
from tests.harness import free_port, wait_for

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
REQUIRE_ENV = "BEATLEADER_REQUIRE_RABBITMQ"


def missing_requirements() -> list[str]:
    """What this machine lacks to run a throwaway RabbitMQ (empty when nothing is missing)."""
    missing = [str(path) for path in (SERVER, CTL) if not os.access(path, os.X_OK)]
    if shutil.which("epmd") is None:
        missing.append("epmd (Erlang)")
    return missing


def skip_or_fail_without_rabbitmq() -> None:
    """At a test module's top: skip it without RabbitMQ, or fail if it is required."""
    missing = missing_requirements()
    if not missing:
        return
    reason = f"Debian's rabbitmq-server is not installed (missing: {', '.join(missing)})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1: run scripts/install-deps.sh", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


class RabbitMQServer:
    """One RabbitMQ node of its own on 127.0.0.1, with the default ``guest`` user (loopback)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = f"bltest-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.ctl_dist_port = free_port()
        self.home = self.workdir / "home"
        self.log_path = self.workdir / "rabbitmq-server.log"
        self._server: LoggedProcess | None = None
        self._epmd: LoggedProcess | None = None
        self._write_files()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _write_files(self) -> None:
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def env(self) -> dict[str, str]:
        """The environment of this node's scripts (server and ``rabbitmqctl``)."""
        base = self.workdir
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }

    @property
    def alive(self) -> bool:
        return self._server is not None and self._server.alive

    def start(self, timeout: float = 60) -> None:
        """Start epmd (once) and the node; wait until an AMQP connection succeeds."""
        if self._epmd is None or not self._epmd.alive:
            self._epmd = LoggedProcess(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                self.workdir / "epmd.log",
                env=self.env(),
            )
        self._server = server = LoggedProcess(
            [str(SERVER)], self.log_path, cwd=self.workdir, env=self.env(), name=self.node
        )
        try:
            wait_for(lambda: not server.alive or self.ping(), timeout, interval=0.2)
        except AssertionError:
            raise RuntimeError(
                f"RabbitMQ {self.node} on port {self.port} accepted no AMQP connection in "
                f"{timeout}s:\n{server.log_tail(40)}\n{self.node_log_tail(40)}"
            ) from None
        if not server.alive:
            raise RuntimeError(
                f"rabbitmq-server exited with {server.returncode}:\n{server.log_tail(40)}\n"
                f"{self.node_log_tail(40)}"
            )

    def ping(self) -> bool:
        """True when an AMQP connection as ``guest`` opens."""
        connection = Connection(self.url, connect_timeout=1)
        try:
            connection.connect()
            return True
        except Exception:
            return False
        finally:
            connection.release()

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS`` as the current user; output captured."""
        return subprocess.run(
            [str(CTL), "-n", self.node, *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, timeout: float = 30) -> None:
        """``rabbitmqctl stop``; kill the node's process group if it has not exited in time."""
        server = self._server
        if server is None or not server.alive:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)
        try:
            server.wait_exit(timeout)
        except AssertionError:
            server.kill_group()

    def kill(self) -> None:
        """SIGKILL the node (its process group): a crash."""
        if self._server is not None:
            self._server.kill_group()

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again: same node name, ports and data."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the node and this server's epmd."""
        try:
            self.stop()
        finally:
            if self._server is not None and self._server.alive:
                self._server.kill_group()
            if self._epmd is not None:
                self._epmd.kill_group()

    def node_log_tail(self, lines: int) -> str:
        try:
            logs = sorted((self.workdir / "log").glob("*.log"))
            text = "\n".join(path.read_text(errors="replace") for path in logs)
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> list[tuple[str, str]]:
        """(title, text) sections for a failed test's report."""
        console = self._server.log_tail(40) if self._server is not None else ""
        return [(f"rabbitmq {self.node} port={self.port}", f"{console}\n{self.node_log_tail(80)}")]

    def __enter__(self) -> RabbitMQServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
