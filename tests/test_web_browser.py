"""The dashboard in a real browser (Debian's headless Chromium) against live beats and workers.

``beatleader web`` runs as a subprocess on the suite's ZooKeeper; three ``celery beat`` processes
(and a worker where executions are counted) run the test app. What the page shows is read from
the DOM the browser built, after the page's own script refreshed it (no reload by the test).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from beatleader.entries.api import EntryStore
from beatleader.zk import layout
from tests.app import RECORD_TASK, make_app
from tests.cluster import ENTRY, every, leader_process, schedule_env, start_instances
from tests.dedup_tasks import FAIL_TASK
from tests.harness import contenders, read_executions, wait_for
from tests.web_support import WebProcess, chromium, post

XSS = "<script>alert(1)</script>"


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture
def web(tmp_path: Path, zk_server, zk_root):
    started: list[WebProcess] = []

    def start(*args: str) -> WebProcess:
        process = WebProcess(tmp_path / "web", zk_server.hosts, zk_root, args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill_group()


def attribute(driver, element_id: str, name: str | None = None) -> str:
    """An element's attribute (or text), "" while the page's script swaps the content."""
    try:
        element = driver.find_element(By.ID, element_id)
        return str(element.text if name is None else element.get_attribute(name))
    except StaleElementReferenceException:  # replaced by a refresh between find and read
        return ""


def settled(read, message: str = "the page"):
    """``read()``'s value, read again when a refresh replaced an element under it."""

    def attempt():
        try:
            return read()
        except StaleElementReferenceException:
            return None

    return wait_for(attempt, 10, message=message)


def leader_pid_shown(driver) -> str:
    return attribute(driver, "leader", "data-pid")


def test_the_overview_follows_a_sigkill_of_the_leader_and_hostile_names_are_text(
    beats, zk_client, zk_root, web, browser
) -> None:
    env = schedule_env(**{ENTRY: every(1), XSS: every(3600)})
    processes = start_instances(beats, zk_client, zk_root, 3, env)
    old = leader_process(processes, zk_client, zk_root)
    dashboard = web()

    browser.get(dashboard.url)
    wait_for(lambda: leader_pid_shown(browser) == str(old.pid), 20, message="the leader shown")
    shown = settled(
        lambda: [
            r.get_attribute("data-pid")
            for r in browser.find_elements(By.CSS_SELECTOR, "#contenders tbody tr")
        ]
    )
    assert shown == [str(c["pid"]) for c in contenders(zk_client, zk_root)]
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for(lambda: body.get_attribute("data-live") == "1", 10, message="the script runs")

    old.kill()
    new_pid = wait_for(
        lambda: (p := leader_pid_shown(browser)) not in ("", str(old.pid)) and p,
        30,
        message="the page shows a new leader without a reload",
    )
    assert int(new_pid) == contenders(zk_client, zk_root)[0]["pid"] != old.pid
    assert int(new_pid) in {p.pid for p in processes if p is not old}

    browser.get(dashboard.url + "entries")
    names = settled(
        lambda: [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#entries td.name a")]
    )
    assert XSS in names  # shown as its text, not run as a script
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (raises when no alert is open)
    assert browser.find_elements(By.CSS_SELECTOR, "#entries td.name script") == []
    settled(
        lambda: (
            next(
                a
                for a in browser.find_elements(By.CSS_SELECTOR, "#entries td.name a")
                if a.text == XSS
            ).click()
            or True
        )
    )
    wait_for(lambda: attribute(browser, "entry-name") == XSS, 10, message="the entry page")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


#: Seconds to watch that the worker executes nothing more (several periods of a 1 s entry).
QUIET = 3.0


def executed(log: Path, name: str) -> int:
    return sum(1 for e in read_executions(log) if e["name"] == name)


def quiet(log: Path, name: str, allowed: int) -> int:
    """Watch ``QUIET`` seconds: at most ``allowed`` more executions of ``name``; the count."""
    before = executed(log, name)
    time.sleep(QUIET)  # an observation window: nothing may happen in it
    after = executed(log, name)
    assert after - before <= allowed, f"{name}: {after - before} more executions"
    return after


def click(driver, entry: str, action: str) -> None:
    """Press ``action``'s button in ``entry``'s row (again if a refresh replaced the row)."""

    def press() -> bool:
        for row in driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr"):
            if row.get_attribute("data-entry") == entry:
                row.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
                return True
        raise AssertionError(f"no row {entry!r}")

    settled(press, f"{action} {entry}")


def fetch_status(driver, url: str, body: str) -> int:
    """The status of a POST the page's origin makes with ``fetch`` (the browser's cookies)."""
    return int(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', body: arguments[1], headers:"
            " {'Content-Type': 'application/x-www-form-urlencoded'}, redirect: 'manual'})"
            ".then(r => done(r.status)).catch(e => done(-1));",
            url,
            body,
        )
    )


def test_pause_resume_and_run_now_from_the_page_change_what_the_worker_executes(
    beats, workers, zk_client, zk_root, web, browser, execution_log, tmp_path
) -> None:
    env = {
        **schedule_env(
            **{ENTRY: every(1), "hourly": every(3600), "flaky": every(2, task=FAIL_TASK)}
        ),
        "TEST_DEDUP": "1",
    }
    workers(env=env).wait_ready()
    start_instances(beats, zk_client, zk_root, 3, env)
    store = EntryStore(zk_client, zk_root, make_app(env, set_as_current=False))
    store.add("dyn", task=RECORD_TASK, every="1s", args=["dyn"])
    token = tmp_path / "token"
    token.write_text("a-token-for-the-test\n")
    dashboard = web("--allow-write", "--token-file", str(token))
    wait_for(lambda: executed(execution_log, "dyn") >= 2, 30, message="dyn runs")

    # no credential: no buttons, and a POST is refused, by the browser's fetch and by a client
    browser.get(dashboard.url + "entries")
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
    action = dashboard.url + "action"
    assert fetch_status(browser, action, "action=pause&name=dyn&csrf=x") == 403
    assert post(action, {"action": "pause", "name": "dyn", "csrf": "x"}) == 403
    wrong = {"Authorization": "Bearer not-the-token"}
    assert post(action, {"action": "run", "name": "hourly"}, wrong) == 403
    right = {"Authorization": "Bearer a-token-for-the-test"}
    assert post(action, {"action": "run", "name": "hourly", "csrf": "x"}, right) == 403  # CSRF
    assert not zk_client.exists(layout.requests_path(zk_root))  # no run-now request, ever
    assert store.get("dyn")[0].enabled
    assert not zk_client.exists(layout.paused_entry_path(zk_root, "dyn"))

    browser.get(dashboard.url + "login")
    browser.find_element(By.NAME, "password").send_keys("a-token-for-the-test")
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#entries"), 10, message="entries")

    click(browser, "dyn", "pause")
    wait_for(lambda: browser.find_elements(By.ID, "done"), 10, message="paused")
    definition = store.get("dyn")[0]
    assert not definition.enabled
    assert definition.changed_by.startswith("web:token (")
    paused = quiet(execution_log, "dyn", allowed=1)  # at most the run committed before
    quiet(execution_log, "dyn", allowed=0)

    browser.get(dashboard.url + "entries")
    click(browser, ENTRY, "pause")  # a static entry: a paused/ marker
    wait_for(lambda: browser.find_elements(By.ID, "done"), 10, message="paused")
    note, _stat = zk_client.get(layout.paused_entry_path(zk_root, ENTRY))
    assert b'"changed_by": "web:token (' in note
    quiet(execution_log, ENTRY, allowed=1)
    stopped = quiet(execution_log, ENTRY, allowed=0)

    browser.get(dashboard.url + "entries")
    click(browser, "hourly", "run")
    wait_for(lambda: executed(execution_log, "hourly") == 1, 20, message="hourly runs once")
    quiet(execution_log, "hourly", allowed=0)
    assert executed(execution_log, "hourly") == 1

    browser.get(dashboard.url + "entries")
    click(browser, "dyn", "resume")
    wait_for(lambda: browser.find_elements(By.ID, "done"), 10, message="resumed")
    wait_for(lambda: executed(execution_log, "dyn") >= paused + 2, 20, message="dyn again")
    assert executed(execution_log, ENTRY) == stopped  # still paused


def test_a_zookeeper_outage_is_a_banner_on_the_open_page_and_clears_after(
    private_zk_server, zk_root, tmp_path, browser
) -> None:
    from tests.harness import connected_client

    with connected_client(private_zk_server.hosts) as client:
        client.ensure_path(layout.election_path(zk_root))
    dashboard = WebProcess(tmp_path / "web", private_zk_server.hosts, zk_root, ["--timeout", "2"])
    try:
        browser.get(dashboard.url)

        def state() -> str:
            return attribute(browser, "zk-state")

        assert state() == "ZooKeeper reachable"
        assert browser.find_elements(By.ID, "banner") == []
        private_zk_server.kill()
        wait_for(lambda: state() == "ZooKeeper unreachable", 30, message="the page turns red")
        banner = wait_for(lambda: attribute(browser, "banner"), 10, message="the banner")
        assert banner.startswith(f"ZooKeeper unreachable at {private_zk_server.hosts}")
        private_zk_server.start()
        wait_for(lambda: state() == "ZooKeeper reachable", 30, message="the page recovers")
        assert browser.find_elements(By.ID, "banner") == []
        assert dashboard.alive
    finally:
        dashboard.kill_group()
