"""Helpers of the dashboard tests: ``beatleader web`` as a real subprocess, form posts.

The browser is :func:`beatleader.testing.browser.chromium` (re-exported here).
"""

from __future__ import annotations

import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beatleader.testing.browser import chromium
from beatleader.testing.localproc import LoggedProcess
from tests.harness import REPO_ROOT, wait_for

__all__ = ["WebProcess", "chromium", "post"]


class WebProcess(LoggedProcess):
    """``python -m beatleader.cli web --port 0 ...``; :attr:`url` once it serves."""

    def __init__(
        self, workdir: Path, hosts: str, root: str, args: Sequence[str] = (), env: Any = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "beatleader.cli", "web", "--port", "0"]
        command += ["--zk-hosts", hosts, "--path", root, *args]
        number = len(list(workdir.glob("web-*.log"))) + 1
        super().__init__(command, workdir / f"web-{number}.log", cwd=REPO_ROOT, env=env)
        self.url = wait_for(self._served, 30, message="beatleader web serves")

    def _served(self) -> str | None:
        text = self.log_path.read_text()
        found = re.search(r"serving (http://\S+/)", text)
        if found is None and not self.alive:
            raise AssertionError(f"beatleader web exited {self.returncode}: {text}")
        return found.group(1) if found else None

    def log(self) -> str:
        return self.log_path.read_text()

    def diagnostics(self) -> list[tuple[str, str]]:
        return [(f"web pid={self.pid}", self.log())]


def post(url: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> int:
    """POST a form; the status code (a redirect is not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
