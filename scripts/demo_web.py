"""beatleader's web demo: the dashboard of a live three-instance cluster.

Starts a local ZooKeeper, one worker and three beat instances of ``scripts/demo_app.py`` (two static
entries), adds a runtime entry, and serves ``beatleader web --allow-write`` on
``http://127.0.0.1:<port>/`` with a token written to a file (printed, to sign in and try pause,
resume and run now). After ``--kill-leader-after`` seconds the leader is SIGKILLed: the overview
shows another instance take over. Runs until Ctrl-C, or for ``--seconds``.

``--screenshots DIR`` saves the overview, entries and an entry page as PNG files there with
headless Chromium (selenium; what docs/img/ holds) and exits.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from demo_app import TASK_NAME
from kazoo.client import KazooClient
from topology import NativeTopology, stop_uninterrupted

from beatleader.entries.api import EntryStore
from beatleader.ops.status import read_leader
from beatleader.testing.localproc import LoggedProcess
from beatleader.testing.localzk import missing_requirements

REPO = Path(__file__).resolve().parent.parent
RUNTIME_ENTRY = "report-every-3s"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="beatleader web demo: 3 beats, 1 worker")
    parser.add_argument("--port", type=int, default=8642, help="dashboard port (default 8642)")
    parser.add_argument(
        "--seconds", type=float, default=0, help="stop after this long (default: at Ctrl-C)"
    )
    parser.add_argument(
        "--kill-leader-after",
        type=float,
        default=30,
        help="SIGKILL the leader after this many seconds (0: never; default 30)",
    )
    parser.add_argument("--screenshots", type=Path, help="save screenshots in this folder, exit")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder with the logs")
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def start_web(topo: NativeTopology, port: int, token_file: Path) -> tuple[LoggedProcess, str]:
    command = [sys.executable, "-m", "beatleader.cli", "web", "--port", str(port)]
    command += ["--zk-hosts", topo.zk_hosts, "--path", topo.path]
    command += ["--allow-write", "--token-file", str(token_file)]
    log = topo.procs_dir / "web.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    web = LoggedProcess(command, log, cwd=REPO, env=env, name="web")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"serving (http://\S+/)", log.read_text())
        if found:
            return web, found.group(1)
        if not web.alive:
            raise SystemExit(f"beatleader web exited: {log.read_text().strip()}")
        time.sleep(0.1)
    raise SystemExit("beatleader web did not start within 30 s")


def screenshots(url: str, token: str, folder: Path) -> None:
    from selenium.webdriver.common.by import By

    from beatleader.testing.browser import chromium

    folder.mkdir(parents=True, exist_ok=True)
    with chromium(1360, 820) as driver:
        driver.get(url + "login")
        driver.find_element(By.NAME, "password").send_keys(token)
        driver.find_element(By.ID, "sign-in").click()
        time.sleep(1)  # the redirect's page load
        for name, path in (
            ("web-overview.png", ""),
            ("web-entries.png", "entries"),
            ("web-entry.png", "entry?name=every-1s"),
        ):
            driver.get(url + path)
            driver.save_screenshot(str(folder / name))
            say(f"saved {folder / name}")


def run_demo(args: argparse.Namespace, base_dir: Path) -> None:
    topo = NativeTopology(base_dir, zk_servers=1, beats=3, session_timeout=3)
    try:
        say(f"starting ZooKeeper, 1 worker and 3 beat instances in {base_dir}")
        topo.start()
        client = KazooClient(hosts=topo.zk_hosts)
        client.start(timeout=30)
        try:
            EntryStore(client, topo.path).add(
                RUNTIME_ENTRY, task=TASK_NAME, every="3s", args=[RUNTIME_ENTRY]
            )
            token = secrets.token_urlsafe(16)
            token_file = base_dir / "web-token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            web, url = start_web(topo, args.port, token_file)
            say(f"dashboard: {url}  (sign in with the token {token} to pause, resume, run now)")
            serve(args, topo, client, url, token)
            web.terminate()
            web.wait_exit(10)
        finally:
            client.stop()
            client.close()
    finally:
        stop_uninterrupted(topo)


def serve(
    args: argparse.Namespace, topo: NativeTopology, client: KazooClient, url: str, token: str
) -> None:
    started = time.monotonic()
    killed = False
    shown = None
    while args.seconds <= 0 or time.monotonic() - started < args.seconds:
        leader = read_leader(client, topo.path)
        name = leader.info.identity if leader and leader.info else None
        if name != shown:
            say(f"leader: {name or 'none'}")
            shown = name
        elapsed = time.monotonic() - started
        if args.screenshots and elapsed > 15:
            screenshots(url, token, args.screenshots)
            return
        if not killed and args.kill_leader_after > 0 and elapsed > args.kill_leader_after:
            beat = topo.beat_by_pid(leader.info.pid) if leader and leader.info else None
            if beat is not None:
                say(f"SIGKILL of the leader {beat.name} (pid {beat.pid}): watch the overview")
                os.kill(beat.pid, signal.SIGKILL)
                killed = True
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("demo: missing " + "; ".join(missing) + " (run scripts/demo-web.sh)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    base_dir = Path(tempfile.mkdtemp(prefix="beatleader-web-demo-"))
    try:
        run_demo(args, base_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; everything was stopped", flush=True)
        return 0
    finally:
        if args.keep:
            print(f"logs: {base_dir}/procs", flush=True)
        else:
            shutil.rmtree(base_dir, ignore_errors=True)
    return 0


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
