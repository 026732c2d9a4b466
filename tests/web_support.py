"""Helpers of the dashboard tests: ``beatleader web`` as a real subprocess, headless Chromium.

Chromium and its driver are Debian's (``chromium``, ``chromium-driver``; scripts/install-deps.sh),
driven with selenium. Chromium starts with the flags a machine without network needs (no
background networking, component updates, sync or QUIC; they stall it otherwise) and a fresh
profile folder per test.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from beatleader.testing.localproc import LoggedProcess
from tests.harness import REPO_ROOT, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


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


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="beatleader-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
