"""A throwaway local ZooKeeper server on loopback (an ensemble of them: ``zkensemble.py``).

For the demo (``scripts/demo.py``), the native deployment topology (``deploy/topology.py``) and
the tests; **not for production**: it binds 127.0.0.1 only, disables fsync (``forceSync=no``)
and uses a 200 ms tick so that sessions and elections are fast. It runs the ZooKeeper 3.8 of
Debian's ``zookeeper`` package (jars in ``/usr/share/java``) with the ``java`` on ``PATH``;
:func:`missing_requirements` says what is absent.

The JVM is started directly (``java -cp ... QuorumPeerMain zoo.cfg``) rather than through
Debian's ``zkServer.sh``: its ``zkEnv.sh`` overwrites ``ZOOCFGDIR`` and ``ZOO_LOG_DIR`` with the
system paths, and the jar ships without an slf4j binding, so the script gives no logs. Here the
server logs (log4j console appender) go to ``<base_dir>/zookeeper.log``, appended across restarts.

Guarantees:

* Every server runs in its own process group on a port that was free when it was chosen; its
  client port and data directory stay the same across restarts.
* :meth:`ZooKeeperServer.start` returns only once the server serves requests. A standalone server
  answers ``ruok`` with ``imok`` *before* it has loaded its database (other commands then say
  "not currently serving requests"), so it waits for ``imok`` and then for ``srvr`` to report a
  ``Mode:``; an ensemble member reports a mode only once a quorum has formed.
* No JVM outlives the Python process that started it normally (an ``atexit`` hook kills leftovers;
  a SIGKILLed parent cannot run it, so call ``stop()`` in a ``finally``).
"""

from __future__ import annotations

import atexit
import re
import shutil
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from beatleader.testing.localproc import LoggedProcess

JAVA_LIB = Path("/usr/share/java")
#: zookeeper.jar's manifest lists its own dependencies; the two others give it a log binding.
CLASSPATH_JARS = ("zookeeper.jar", "slf4j-log4j12.jar", "log4j-1.2.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
JVM_OPTIONS = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # faster JVM start; a test server needs no C2
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.jmx.log4j.disable=true",
)
LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
# one line per four-letter-word poll is noise
log4j.logger.org.apache.zookeeper.server.NIOServerCnxn=WARN
log4j.logger.org.apache.zookeeper.server.command.FourLetterCommands=WARN
"""
NOT_SERVING = "not currently serving requests"

_handed_out_ports: set[int] = set()
_live_processes: set[LoggedProcess] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before by this process."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def missing_requirements() -> list[str]:
    """What this machine lacks to run a local ZooKeeper (empty when nothing is missing)."""
    missing = []
    if shutil.which("java") is None:
        missing.append("java (Debian package default-jre-headless)")
    if not (JAVA_LIB / "zookeeper.jar").exists():
        missing.append(f"{JAVA_LIB / 'zookeeper.jar'} (Debian package zookeeper)")
    return missing


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: never leave a JVM behind when the test process exits."""
    for proc in list(_live_processes):
        proc.kill()
        proc.wait_exit()


class ZooKeeperServer:
    """One ZooKeeper server process; standalone unless ``ensemble`` is given.

    The client port and data directory stay the same across :meth:`restart`, so data and
    (unexpired) sessions survive a short restart.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        server_id: int | None = None,
        ensemble: Mapping[int, tuple[int, int, int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        """``ensemble`` maps server id -> (client, quorum, election) ports, this one included."""
        self.base_dir = Path(base_dir)
        self.port = port if port is not None else free_port()
        self.server_id = server_id
        self.ensemble = dict(ensemble) if ensemble else None
        self.extra_config = dict(extra_config or {})
        self.data_dir = self.base_dir / "data"
        self.config_path = self.base_dir / "zoo.cfg"
        self.log_path = self.base_dir / "zookeeper.log"
        self._proc: LoggedProcess | None = None
        self._write_config()

    # -- configuration ---------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The zoo.cfg settings, in file order."""
        cfg: dict[str, Any] = {
            "tickTime": 200,
            "initLimit": 25,
            "syncLimit": 10,
            "minSessionTimeout": 400,
            "maxSessionTimeout": 60000,
            "clientPortAddress": "127.0.0.1",
            "clientPort": self.port,
            "dataDir": str(self.data_dir),
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "forceSync": "no",  # test data need not reach the disk platter
            "autopurge.purgeInterval": 0,
        }
        if self.ensemble:
            cfg["cnxTimeout"] = 1000
            for sid, (client, quorum, election) in sorted(self.ensemble.items()):
                cfg[f"server.{sid}"] = f"127.0.0.1:{quorum}:{election};127.0.0.1:{client}"
        cfg.update(self.extra_config)
        return cfg

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.config().items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        (self.base_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        if self.ensemble:
            if self.server_id is None:
                raise ValueError("an ensemble member needs a server_id")
            (self.data_dir / "myid").write_text(f"{self.server_id}\n")

    def command(self) -> list[str]:
        """The java command line that runs this server."""
        java = shutil.which("java") or "/usr/bin/java"
        jars = [str(JAVA_LIB / jar) for jar in CLASSPATH_JARS if (JAVA_LIB / jar).exists()]
        return [
            java,
            *JVM_OPTIONS,
            f"-Dlog4j.configuration=file:{self.base_dir / 'log4j.properties'}",
            f"-Dzookeeper.log.dir={self.base_dir}",
            "-cp",
            ":".join(jars),
            MAIN_CLASS,
            str(self.config_path),
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The kazoo hosts string of this server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.alive

    def launch(self) -> None:
        """Start the JVM without waiting for it to serve."""
        if self.is_running:
            raise RuntimeError(f"ZooKeeper on port {self.port} is already running")
        self._write_config()
        with open(self.log_path, "ab") as log:
            log.write(f"==== launching at {time.time():.3f}\n".encode())
        self._proc = LoggedProcess(self.command(), self.log_path, cwd=self.base_dir)
        _live_processes.add(self._proc)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it serves requests."""
        self.launch()
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 30) -> None:
        """Wait until ``ruok`` says ``imok`` and ``srvr`` reports a mode; raise on timeout/exit."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running:
                raise RuntimeError(
                    f"ZooKeeper on port {self.port} exited (rc={self._returncode()}):\n"
                    + self.log_tail()
                )
            if self.is_serving():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ZooKeeper on port {self.port} not serving after {timeout}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.02)

    def is_serving(self) -> bool:
        """True when the server answers ``ruok`` and serves requests."""
        try:
            if self.four_letter("ruok", timeout=0.5) != "imok":
                return False
            return "Mode:" in self.four_letter("srvr", timeout=0.5)
        except OSError:
            return False

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower``; None when not serving."""
        try:
            match = re.search(r"^Mode: (\S+)", self.four_letter("srvr", timeout=1), re.M)
        except OSError:
            return None
        return match.group(1) if match else None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        returncode = proc.stop(timeout)
        _live_processes.discard(proc)
        return returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash: nothing is flushed or closed); returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        proc.kill()
        returncode = proc.wait_exit()
        _live_processes.discard(proc)
        return returncode

    def restart(self, timeout: float = 30) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        if self._proc is not None:
            self._proc.pause()

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None:
            self._proc.resume()

    def _returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the server logged so far (all runs; nothing before the first launch)."""
        return self._proc.log() if self._proc is not None else ""

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc is not None else ""

    def diagnostics(self) -> list[tuple[str, str]]:
        """(title, text) sections for a failed test's report."""
        return [(f"zookeeper {self.hosts} pid={self.pid}", self.log_tail(40))]

    def four_letter(self, cmd: str, timeout: float = 2.0) -> str:
        """Send a four-letter-word command (``ruok``, ``srvr``, ``cons``, ``mntr`` ...).

        Reads until the server closes the socket. A server that is not serving yet may never
        close it (ZooKeeper 3.8 bug), so on timeout whatever arrived is returned; TimeoutError
        only when nothing arrived.
        """
        chunks: list[bytes] = []
        with self.four_letter_socket(timeout) as sock:
            sock.sendall(cmd.encode("ascii"))
            deadline = time.monotonic() + timeout
            try:
                while True:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if cmd == "ruok" and b"".join(chunks) == b"imok":
                        break
            except (TimeoutError, ConnectionResetError, ssl.SSLError):
                if not chunks:
                    raise TimeoutError(f"no answer to {cmd!r} from {self.hosts}") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def four_letter_socket(self, timeout: float) -> socket.socket:
        """A connected socket for one four-letter word (a subclass may wrap it in TLS)."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def connections(self) -> list[dict[str, Any]]:
        """The ``cons`` output, one dict per client connection (see :func:`parse_cons`)."""
        return parse_cons(self.four_letter("cons"))

    def session_timeout_ms(self, session_id: int) -> int | None:
        """The session timeout the server granted ``session_id`` (``cons`` field ``to``)."""
        for conn in self.connections():
            if conn.get("sid") == session_id:
                return int(conn["to"])
        return None

    def mntr(self) -> dict[str, str]:
        """The ``mntr`` output as a dict of strings (``zk_ephemerals_count`` ...)."""
        out: dict[str, str] = {}
        for line in self.four_letter("mntr").splitlines():
            key, _, value = line.partition("\t")
            if key:
                out[key] = value
        return out


_CONS_LINE = re.compile(
    r"^\s*/(?P<ip>[^\s\[]+):(?P<port>\d+)\[(?P<interest>\d+)\]\((?P<fields>.*)\)"
)
_HEX_FIELDS = {"sid", "lcxid", "lzxid"}
_FLOAT_FIELDS = {"avglat"}


def parse_cons(text: str) -> list[dict[str, Any]]:
    """Parse ``cons`` lines such as::

        /127.0.0.1:39962[1](queued=0,recved=4,sent=4,sid=0x100000c5a300000,lop=GETD,
        est=1795783420588,to=800,lcxid=0x2,lzxid=0x2,lresp=809722,llat=1,minlat=0,...)

    into dicts: ``ip`` (str), ``port``/``interest`` (int), ``sid``/``lcxid``/``lzxid`` (int from
    hex), ``avglat`` (float), ``lop`` (str), every other field an int. Connections without a
    session (like the one asking ``cons``) have only queued/recved/sent.
    """
    conns: list[dict[str, Any]] = []
    for line in text.splitlines():
        match = _CONS_LINE.match(line)
        if not match:
            continue
        conn: dict[str, Any] = {
            "ip": match["ip"],
            "port": int(match["port"]),
            "interest": int(match["interest"]),
        }
        for item in match["fields"].split(","):
            key, _, value = item.partition("=")
            conn[key] = _cons_value(key, value)
        conns.append(conn)
    return conns


def _cons_value(key: str, value: str) -> Any:
    try:
        if key in _HEX_FIELDS:
            return int(value, 16)
        if key in _FLOAT_FIELDS:
            return float(value)
        return int(value)
    except ValueError:
        return value
