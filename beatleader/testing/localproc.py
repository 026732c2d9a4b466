"""A child process in its own session whose output goes to a log file.

For the demo, the native topology, the benchmark and the tests; not used by the scheduler itself.

Guarantees:

* The process runs in a new session (its own process group), so a terminal's Ctrl-C reaches
  only the parent; its stdin is ``/dev/null`` and its stdout and stderr are appended to
  ``log_path``.
* Signals go only to a process that has not exited yet; :meth:`LoggedProcess.stop` and
  :meth:`LoggedProcess.wait_exit` reap it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class LoggedProcess:
    """``args`` started at once in their own session, stdout and stderr appended to ``log_path``.

    ``cwd`` and ``env`` default to the parent's; ``name`` (default: the command line) titles
    error messages and :meth:`diagnostics`.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        self.name = name or " ".join(self.args)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.args,
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals from the terminal do not reach it
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal); None while it runs."""
        return self._proc.poll()

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already exited."""
        if self.alive:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: a crash (nothing is flushed or closed). Does not wait for the exit."""
        self.send_signal(signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (the process and any child it forked), then reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait_exit()

    def pause(self) -> None:
        """SIGSTOP: frozen (a GC pause, a VM stall); its sockets stay open."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM: an orderly shutdown request."""
        self.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT: Ctrl-C."""
        self.send_signal(signal.SIGINT)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the process to exit (forever when ``timeout`` is None) and return its code.

        Raises AssertionError, with the log tail, if it still runs after ``timeout`` seconds.
        """
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) still running after {timeout}s; log tail:\n"
                + self.log_tail(60)
            ) from None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, SIGKILL if still running after ``timeout``; reaps it and returns its code."""
        if self.alive:
            self.resume()  # a paused process cannot handle SIGTERM
            self.terminate()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self._proc.wait()

    def log(self) -> str:
        """Everything written to the log file so far (by this process and any before it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int) -> str:
        """The last ``lines`` lines of :meth:`log`."""
        return "\n".join(self.log().splitlines()[-lines:])

    def diagnostics(self) -> list[tuple[str, str]]:
        """(title, text) sections for a failed test's report: the last 80 log lines."""
        return [(f"{self.name} pid={self.pid} rc={self.returncode}", self.log_tail(80))]
