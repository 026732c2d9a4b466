"""The dashboard's WSGI and ASGI applications in this process, on the suite's real ZooKeeper.

Hostile trees (garbage, huge and script-named nodes written with a plain client), an unreachable
ZooKeeper, the credential and CSRF checks of every state-changing request, mounting under a
prefix, and ``beatleader web``'s bad-input exits. The browser tests are in test_web_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from beatleader.config import Settings
from beatleader.entries.api import EntryStore
from beatleader.web import Access, AsgiDashboard, Dashboard, make_dashboard
from beatleader.web.access import COOKIE, AccessError, read_users
from beatleader.zk import layout
from tests.runtime_support import put_raw

XSS = "<script>alert(1)</script>"
TOKEN = "a-token-of-the-test"


def call(
    app: Any,
    path: str,
    method: str = "GET",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    script_name: str = "",
) -> tuple[str, dict[str, str], str]:
    """(status, headers, body) of one request to the WSGI ``app``."""
    path, _, query = path.partition("?")
    body = urlencode(form or {}).encode()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": script_name,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "localhost",
        "wsgi.input": io.BytesIO(body),
    }
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    found: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        found["status"], found["headers"] = status, dict(response_headers)

    data = b"".join(app(environ, start_response))
    return found["status"], found["headers"], data.decode()


@pytest.fixture
def settings(zk_server, zk_root) -> Settings:
    return Settings.from_app(None, zk_hosts=zk_server.hosts, path=zk_root)


@pytest.fixture
def dashboard(settings, zk_client):
    return Dashboard(settings, None, Access(allow_write=True, token=TOKEN), zk_client)


def test_hostile_nodes_render_as_text_and_do_not_break_a_page(
    dashboard, zk_client, zk_root
) -> None:
    put_raw(zk_client, zk_root, XSS, b'{"task": "t", "schedule": {"every": 5}}')
    put_raw(zk_client, zk_root, "garbage", b"\xff\xfe not json")
    zk_client.create(layout.entry_path(zk_root, "huge"), b"[" * 200_000, makepath=True)
    zk_client.create(layout.entry_path(zk_root, '"><img src=x onerror=alert(1)>'), b"{}")
    zk_client.create(f"{layout.election_path(zk_root)}/<b>x", b"\x00junk", makepath=True)
    status, headers, body = call(dashboard, "/api/status")  # JSON: not HTML, never sniffed
    assert status.startswith("200") and headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff" and json.loads(body)["reachable"]
    for page in ("/", "/entries", "/entry?name=" + XSS, "/entry?name=huge"):
        status, headers, body = call(dashboard, page)
        assert status.startswith("200"), (page, status, body[:300])
        assert "<script>alert" not in body and "<img src=x" not in body, page
        assert "script-src 'self'" in headers["Content-Security-Policy"]
    _status, _headers, body = call(dashboard, "/entries")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "invalid" in body  # the garbage definition is listed as such
    _status, _headers, body = call(dashboard, "/")
    assert "ignoring election node" in body  # the foreign election child is warned about
    status, _headers, body = call(dashboard, "/entry?name=nothing-of-that-name")
    assert status.startswith("404") and "No such entry" in body


def test_an_unreachable_zookeeper_is_a_banner_not_an_error(zk_root) -> None:
    settings = Settings.from_app(None, zk_hosts="127.0.0.1:1", path=zk_root)
    app = make_dashboard(settings)
    try:
        for page in ("/", "/entries", "/entry?name=x"):
            status, _headers, body = call(app, page)
            assert status.startswith("200"), (page, status)
            assert 'id="banner"' in body and "ZooKeeper unreachable at 127.0.0.1:1" in body
        _status, _headers, body = call(app, "/api/status")
        assert json.loads(body)["reachable"] is False
    finally:
        app.close()


def test_writes_need_allow_write_a_credential_and_the_csrf_token(
    settings, zk_client, zk_root
) -> None:
    store = EntryStore(zk_client, zk_root)
    store.add("job", task="proj.job", every="1h")
    form = {"action": "pause", "name": "job"}
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    read_only = Dashboard(settings, None, Access(token=TOKEN), zk_client)
    assert call(read_only, "/action", "POST", form, bearer)[0].startswith("403")
    no_credential = Dashboard(settings, None, Access(allow_write=True), zk_client)
    assert call(no_credential, "/action", "POST", form)[0].startswith("403")

    access = Access(allow_write=True, token=TOKEN, users={"alice": "wonderland"})
    app = Dashboard(settings, None, access, zk_client)
    assert call(app, "/action", "POST", form)[0].startswith("403")  # anonymous
    assert call(app, "/action", "POST", form, {"Authorization": "Bearer nope"})[0][:3] == "403"
    assert call(app, "/action", "POST", form, bearer)[0].startswith("403")  # no CSRF token
    wrong_csrf = {**form, "csrf": access.csrf_token("someone else")}
    assert call(app, "/action", "POST", wrong_csrf, bearer)[0].startswith("403")
    good = {**form, "csrf": access.csrf_token("token")}
    other_site = {**bearer, "Origin": "http://evil.example"}
    assert call(app, "/action", "POST", good, other_site)[0].startswith("403")
    assert call(app, "/action", "GET", good, bearer)[0].startswith("405")
    assert store.get("job")[0].enabled  # nothing was written

    status, headers, _body = call(app, "/action", "POST", good, bearer)
    assert status.startswith("303") and "done=paused" in headers["Location"]
    definition = store.get("job")[0]
    assert not definition.enabled and definition.changed_by.startswith("web:token (")

    basic = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    resume = {"action": "resume", "name": "job", "csrf": access.csrf_token("alice")}
    status, _headers, body = call(
        app, "/action", "POST", resume, {"Authorization": basic, "Accept": "application/json"}
    )
    assert status.startswith("200") and json.loads(body)["done"] == "resume"
    assert store.get("job")[0].changed_by.startswith("web:alice (")
    unknown = {"action": "run", "name": "no-such", "csrf": access.csrf_token("alice")}
    status, _headers, body = call(app, "/action", "POST", unknown, {"Authorization": basic})
    assert status.startswith("400") and "no such entry" in body


def test_the_login_form_sets_a_session_cookie_that_authorises_the_page(
    dashboard, zk_client, zk_root
) -> None:
    status, _headers, body = call(dashboard, "/login")
    assert status.startswith("200") and 'name="csrf"' in body
    anonymous_csrf = dashboard.access.csrf_token(None)
    failed = call(dashboard, "/login", "POST", {"password": "wrong", "csrf": anonymous_csrf})
    assert failed[0].startswith("403") and "Wrong credential" in failed[2]
    assert call(dashboard, "/login", "POST", {"password": TOKEN})[0].startswith("403")  # CSRF
    status, headers, _body = call(
        dashboard, "/login", "POST", {"password": TOKEN, "csrf": anonymous_csrf}
    )
    assert status.startswith("303")
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in headers["Set-Cookie"]
    assert "SameSite=Strict" in headers["Set-Cookie"]
    EntryStore(zk_client, zk_root).add("job", task="proj.job", every="1h")
    _status, _headers, body = call(dashboard, "/entries", headers={"Cookie": cookie})
    assert 'data-action="pause"' in body and "signed in as" in body
    _status, _headers, body = call(dashboard, "/entries")
    assert 'data-action="pause"' not in body
    forged = cookie[:-4] + ("0000" if not cookie.endswith("0000") else "1111")
    _status, _headers, body = call(dashboard, "/entries", headers={"Cookie": forged})
    assert 'data-action="pause"' not in body


def test_mounted_under_a_prefix_every_link_stays_under_it(dashboard) -> None:
    _status, _headers, body = call(dashboard, "/", script_name="/ops/beatleader")
    assert 'href="/ops/beatleader/static/dashboard.css"' in body
    assert 'href="/ops/beatleader/entries"' in body
    status, headers, body = call(dashboard, "/static/dashboard.js")
    assert status.startswith("200") and headers["Content-Type"] == "text/javascript"
    assert call(dashboard, "/static/../app.py")[0].startswith("404")


def test_the_asgi_form_serves_the_same_pages(dashboard, zk_client, zk_root) -> None:
    EntryStore(zk_client, zk_root).add(XSS, task="proj.job", every="1h")
    app = AsgiDashboard(dashboard)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/beatleader/entries",
        "root_path": "/beatleader",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    body = sent[1]["body"].decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert 'href="/beatleader/entries"' in body


def test_basic_auth_files_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "users"
    good.write_text("# who may write\nalice:wonderland\n\nbob:builder\n")
    assert read_users(str(good)) == {"alice": "wonderland", "bob": "builder"}
    bad = tmp_path / "bad"
    bad.write_text("alice:wonderland\nno colon here\n")
    with pytest.raises(AccessError, match=r"line 2: expected 'user:password'"):
        read_users(str(bad))
    with pytest.raises(AccessError, match="cannot read it"):
        read_users(str(tmp_path / "missing"))


def web_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", "web", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow-write"], "--allow-write needs a credential"),
        (["--allow-write", "--token", "short"], "at least 8 characters"),
        (["--basic-auth-file", "/nonexistent/users"], "--basic-auth-file /nonexistent/users"),
        (["--port", "70000"], "--port"),
    ],
)
def test_beatleader_web_refuses_bad_input_in_one_line(args: list[str], message: str) -> None:
    result = web_cli("--zk-hosts", "127.0.0.1:1", "--timeout", "1", *args)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_beatleader_web_cannot_bind_a_taken_port(zk_server, zk_root) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = web_cli("--zk-hosts", zk_server.hosts, "--path", zk_root, "--port", port)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_celery_beat_serves_the_read_only_dashboard_beside_its_metrics(
    beats, zk_client, zk_root
) -> None:
    import urllib.request

    from beatleader.testing.localzk import free_port
    from tests.cluster import every, schedule_env
    from tests.harness import contenders, wait_for
    from tests.web_support import post

    port = free_port()
    env = {
        **schedule_env(**{XSS: every(3600)}),
        "BEATLEADER_METRICS_PORT": str(port),
        "BEATLEADER_WEB": "true",
    }
    beat = beats(env=env)
    beat.wait_for_log(r"serving the dashboard on http://127\.0\.0\.1:\d+/", 30)
    wait_for(lambda: contenders(zk_client, zk_root), 20, message="the beat contends")
    url = f"http://127.0.0.1:{port}/"

    def page(path: str) -> str:
        with urllib.request.urlopen(url + path, timeout=30) as response:
            return str(response.read().decode())

    assert wait_for(lambda: f'data-pid="{beat.pid}"' in page(""), 20, message="the leader")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page("entries")
    assert "beatleader_" in page("metrics")
    assert post(url + "action", {"action": "pause", "name": XSS}) == 403  # read-only


def test_beatleader_web_true_needs_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from beatleader.config import ConfigError

    monkeypatch.setenv("BEATLEADER_WEB", "true")
    with pytest.raises(ConfigError, match=r"BEATLEADER_WEB.*: true needs beatleader_metrics_port"):
        Settings.from_app(None)
    monkeypatch.setenv("BEATLEADER_WEB", "maybe")
    with pytest.raises(ConfigError, match=r"BEATLEADER_WEB"):
        Settings.from_app(None)


def test_the_web_demo_serves_a_live_cluster_and_shows_its_failover(tmp_path: Path) -> None:
    """``scripts/demo-web.sh``'s program, as the README runs it, for a short while."""
    import re

    from tests.harness import REPO_ROOT

    command = [sys.executable, "scripts/demo_web.py", "--port", "0", "--seconds", "14"]
    command += ["--kill-leader-after", "4"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", result.stdout), result.stdout
    leaders = re.findall(r"leader: (beat-\d)", result.stdout)
    killed = re.search(r"SIGKILL of the leader (beat-\d)", result.stdout)
    assert killed and leaders[0] == killed.group(1), result.stdout
    assert len(set(leaders)) == 2, result.stdout  # another instance took over


def test_with_zookeeper_auth_the_dashboard_writes_as_its_own_identity(beats, zk_server) -> None:
    import uuid

    from kazoo.security import make_acl, make_digest_acl

    from tests.cluster import ENTRY, every, schedule_env
    from tests.harness import connected_client
    from tests.security import APP_PASSWORD, AUTH, as_env

    root = f"/bltest-secure/{uuid.uuid4().hex}/app"
    beat = beats(env={**schedule_env(**{ENTRY: every(1)}), "BEATLEADER_PATH": root,
                      **as_env({"zk_auth": AUTH})})  # fmt: skip
    beat.wait_for_log(r"beatleader: leading", 30)
    marker = layout.paused_entry_path(root, ENTRY)
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    stranger = make_dashboard(
        Settings.from_app(None, zk_hosts=zk_server.hosts, path=root),
        allow_write=True,
        token=TOKEN,
    )
    owner = make_dashboard(
        Settings.from_app(None, zk_hosts=zk_server.hosts, path=root, zk_auth=AUTH),
        allow_write=True,
        token=TOKEN,
    )
    try:
        form = {"action": "pause", "name": ENTRY, "csrf": stranger.access.csrf_token("token")}
        status, _headers, body = call(stranger, "/action", "POST", form, bearer)
        assert status.startswith("503") and "NoAuthError" in body  # ZooKeeper refused it
        assert ENTRY in call(stranger, "/entries")[2]  # it still reads (world-readable)
        with connected_client(zk_server.hosts, zk_auth=AUTH) as client:
            assert client.exists(marker) is None

            form["csrf"] = owner.access.csrf_token("token")
            assert call(owner, "/action", "POST", form, bearer)[0].startswith("303")
            acl = [make_digest_acl("app", APP_PASSWORD, all=True)]
            assert client.get_acls(marker)[0] == [*acl, make_acl("world", "anyone", read=True)]
            assert b'"changed_by": "web:token (' in client.get(marker)[0]
    finally:
        stranger.close()
        owner.close()
