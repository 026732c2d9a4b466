"""A throwaway PostgreSQL cluster on a loopback port, for tests and examples (not the product).

``with LocalPostgres() as pg: pg.url`` runs ``initdb`` in a fresh temporary folder, starts the
server with ``pg_ctl`` on a free 127.0.0.1 port (trust authentication, ``fsync`` off, its socket
in the data folder), creates one database, and on exit stops the server (``-m immediate``) and
deletes the folder; ``stop_server``/``start_server`` take it away and back in between (an
outage, same port and data). PostgreSQL refuses to run as root: as root every command runs as the
``postgres`` user that Debian's ``postgresql`` package creates (``runuser -u postgres --``), and
the folder belongs to that user; as any other user, as that user.

Guarantees: the cluster is private (own folder, own port, loopback only) and gone after the
``with`` block, even when starting failed half-way; a missing installation raises
:class:`PostgresMissing` with one line saying what to install.

Not guaranteed: durability (``fsync=off``) or security (trust authentication): it is for tests.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from beatleader.testing.localzk import free_port

#: Where Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` (newest version first).
SEARCH = ("/usr/lib/postgresql/*/bin",)


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries (or the ``postgres`` user, when root) are not installed."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``; :class:`PostgresMissing` when there is none."""
    found = sorted(
        (p for pattern in SEARCH for p in Path("/").glob(pattern.lstrip("/"))),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    on_path = shutil.which("initdb")
    candidates = [*found, *([Path(on_path).parent] if on_path else [])]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresMissing(
        "PostgreSQL's initdb/pg_ctl not found (looked in /usr/lib/postgresql/*/bin and PATH): "
        "install Debian's 'postgresql' package (scripts/install-deps.sh does)"
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class LocalPostgres:
    """One private PostgreSQL server and database; see the module docstring."""

    #: Seconds ``start`` waits for the server to accept connections.
    start_timeout = 60.0

    def __init__(self, database: str = "beatleader") -> None:
        self.database = database
        self.bindir = find_bindir()
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.folder: Path | None = None

    @property
    def url(self) -> str:
        """``postgresql://user@127.0.0.1:port/database`` (no password: trust authentication)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        assert self.folder is not None, "not started"
        return self.folder / "data"

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="beatleader-pg-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        assert self.folder is not None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing(
                    "running as root, and there is no 'postgres' user to run PostgreSQL as: "
                    "install Debian's 'postgresql' package"
                ) from None
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start_server()
        self._run(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database
        )

    def start_server(self) -> None:
        """Start the (initialised) server and wait until it accepts connections."""
        assert self.folder is not None, "not started"
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data} -F -c max_connections=100"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "start",
        )

    def stop_server(self) -> None:
        """Stop the server (``-m fast``: clients are disconnected), keeping its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        """Stop the server at once and delete its folder (idempotent)."""
        folder, self.folder = self.folder, None
        if folder is None:
            return
        if (folder / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far (empty when not started)."""
        if self.folder is None:
            return ""
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=self.start_timeout, cwd="/"
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
