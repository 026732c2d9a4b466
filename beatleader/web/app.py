"""The dashboard as a WSGI application: routes, actions, static files, security headers.

:func:`make_dashboard` builds a :class:`Dashboard` (a WSGI callable) for a Celery app or
:class:`~beatleader.config.Settings`; ``beatleader web`` serves one (:mod:`beatleader.web.server`),
and a web app of one's own mounts it under a prefix (``SCRIPT_NAME``; docs/web.md shows Flask,
Django and FastAPI, :mod:`beatleader.web.asgi` the ASGI form).

Routes: ``GET /`` (overview), ``GET /entries``, ``GET /entry?name=...``, ``GET /api/status``
(the snapshot as JSON), ``GET /static/...``, ``GET|POST /login``, ``POST /logout``,
``POST /action`` (``action`` = ``pause`` | ``resume`` | ``run``, ``name``, ``csrf``).

Guarantees:

* A page answers 200 whatever ZooKeeper holds or whether it answers: an unreachable ZooKeeper is
  a banner (:mod:`beatleader.web.snapshot`); an unexpected error is a 500 page without a traceback
  (the traceback goes to the ``beatleader.web`` logger).
* ``POST /action`` changes something only when, in this order: writes are allowed and a credential
  is configured, the request is authenticated (:mod:`beatleader.web.access`), its ``Origin`` (when
  sent) is this host, and its CSRF token is right; anything else is a 403 and nothing is written.
  The change goes through :class:`beatleader.entries.api.EntryStore` with ``changed_by``
  ``web:<principal> (<user>@<host>)``, on the dashboard's own client: with ZooKeeper auth set it
  writes as that identity.
* Every response carries a Content-Security-Policy allowing only this origin's script and style
  (no inline code), ``X-Frame-Options: DENY``, ``nosniff`` and ``Cache-Control: no-store``.
* The ZooKeeper client is made on the first request (never at import or before a fork) and
  reconnects by itself; :meth:`Dashboard.close` stops it.

Not guaranteed: TLS (serve it behind a proxy for that); that the leader applied an action when the
response is sent (it does within about a second).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from beatleader.config import Settings
from beatleader.entries.api import EntryStore
from beatleader.entries.spec import changed_by
from beatleader.schedules.definitions import DefinitionError
from beatleader.web.access import COOKIE, Access, AccessPolicy
from beatleader.web.pages import (
    Viewer,
    entries_page,
    entry_page,
    login_page,
    message_page,
    overview_page,
)
from beatleader.web.snapshot import ZK_ERRORS, describe_error, read_entry, read_snapshot
from beatleader.zk.client import make_client

__all__ = ["Dashboard", "WebPolicy", "make_dashboard", "mount"]

log = logging.getLogger("beatleader.web")

StartResponse = Callable[..., Any]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript"}
_VERBS = {"pause": "paused", "resume": "resumed", "run": "run requested"}


class WebPolicy:
    """Tunables of the application."""

    #: Longest request body read (form posts are tiny).
    max_body = 16 * 1024
    #: Seconds the first request waits for the new client to connect before it shows a banner.
    first_connect_wait = 3.0


@dataclass(frozen=True)
class _Response:
    status: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class Dashboard:
    """The WSGI application (see the module docstring); build it with :func:`make_dashboard`."""

    def __init__(
        self,
        settings: Settings,
        app: Any = None,
        access: Access | None = None,
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.access = access or Access()
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        folder = resources.files("beatleader.web") / "static"
        self._static = {name: (folder / name).read_bytes() for name in _STATIC}

    @property
    def root(self) -> str:
        return self.settings.path

    @property
    def hosts(self) -> str:
        return self.settings.zk_hosts

    def client(self) -> Any:
        """The dashboard's ZooKeeper client, made and started on first use."""
        with self._lock:
            if self._client is None:
                client = make_client(
                    self.settings,
                    connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
                )
                client.start_async().wait(WebPolicy.first_connect_wait)
                self._client = client
            return self._client

    def close(self) -> None:
        """Stop the client this dashboard made (a client passed in is the caller's)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.stop()
            client.close()

    # -- WSGI ---------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self._route(environ)
        except Exception:  # a page never shows a traceback
            log.exception("beatleader web: error answering %s", environ.get("PATH_INFO"))
            response = self._page("500 Internal Server Error", "Error", "see the server's log")
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Content-Security-Policy", _CSP),
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        start_response(response.status, headers)
        return [response.body]

    def _route(self, environ: dict[str, Any]) -> _Response:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO") or "/")
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        viewer = self._viewer(environ)
        if path.startswith("/static/") and method in ("GET", "HEAD"):
            return self._static_file(path.removeprefix("/static/"))
        if method == "POST":
            form = self._form(environ)
            if form is None:
                return self._page("413 Content Too Large", "Too large", "request body too large")
            if path == "/action":
                return self._action(environ, viewer, form)
            if path == "/login":
                return self._login(environ, viewer, form)
            if path == "/logout":
                return self._logout(environ, viewer, form)
            return self._page("405 Method Not Allowed", "Not allowed", "POST to an unknown path")
        if method not in ("GET", "HEAD") or path in ("/action", "/logout"):
            return self._page("405 Method Not Allowed", "Not allowed", "changes need a POST")
        if path == "/":
            snapshot = read_snapshot(self.client(), self.root, self.hosts, self.app, strips=False)
            return _html(overview_page(snapshot, viewer))
        if path == "/entries":
            snapshot = read_snapshot(self.client(), self.root, self.hosts, self.app)
            return _html(entries_page(snapshot, viewer))
        if path == "/entry":
            name = _one(query, "name")
            if not name:
                return self._page("400 Bad Request", "No entry", "give ?name=<entry>")
            snapshot, row, history = read_entry(
                self.client(), self.root, self.hosts, name, self.app
            )
            page = entry_page(snapshot, row, history, viewer, name, _one(query, "done"))
            found = row is not None or not snapshot.reachable
            return _html(page, "200 OK" if found else "404 Not Found")
        if path == "/api/status":
            snapshot = read_snapshot(self.client(), self.root, self.hosts, self.app)
            return _Response("200 OK", json.dumps(snapshot.as_dict()).encode(), "application/json")
        if path == "/login":
            if not self.access.writable:
                return self._page("404 Not Found", "No sign-in", _WRITES_OFF)
            return _html(login_page(viewer))
        return self._page("404 Not Found", "Not found", "no such page")

    # -- helpers ------------------------------------------------------------------------------

    def _viewer(self, environ: dict[str, Any]) -> Viewer:
        principal = None
        if self.access.writable:
            principal = self.access.principal(
                environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_COOKIE")
            )
        return Viewer(
            base=str(environ.get("SCRIPT_NAME") or "").rstrip("/"),
            writable=self.access.writable and principal is not None,
            principal=principal,
            csrf=self.access.csrf_token(principal),
            login=self.access.writable,
        )

    def _page(
        self, status: str, title: str, message: str, environ: dict[str, Any] | None = None
    ) -> _Response:
        viewer = self._viewer(environ) if environ is not None else Viewer()
        return _html(message_page(title, message, viewer), status)

    def _static_file(self, name: str) -> _Response:
        if name not in _STATIC:
            return self._page("404 Not Found", "Not found", "no such file")
        return _Response("200 OK", self._static[name], _STATIC[name])

    def _form(self, environ: dict[str, Any]) -> dict[str, list[str]] | None:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > WebPolicy.max_body:
            return None
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        return parse_qs(body.decode("utf-8", "replace"))

    def _refusal(
        self, environ: dict[str, Any], viewer: Viewer, form: dict[str, list[str]]
    ) -> str | None:
        """Why a state-changing request is refused (403), or None."""
        if not self.access.allow_write:
            return _WRITES_OFF
        if not self.access.has_credential:
            return "writes need a credential (--token-file or --basic-auth-file); none is set"
        if viewer.principal is None:
            return "sign in first: this needs the dashboard's credential"
        return self._forgery(environ, viewer, form)

    def _forgery(
        self, environ: dict[str, Any], viewer: Viewer, form: dict[str, list[str]]
    ) -> str | None:
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and urlsplit(str(origin)).netloc != environ.get("HTTP_HOST"):
            return "refused: the request comes from another site (Origin)"
        if not self.access.check_csrf(viewer.principal, _one(form, "csrf")):
            return "refused: missing or wrong CSRF token (reload the page)"
        return None

    def _action(
        self, environ: dict[str, Any], viewer: Viewer, form: dict[str, list[str]]
    ) -> _Response:
        refused = self._refusal(environ, viewer, form)
        if refused is not None:
            return self._page("403 Forbidden", "Forbidden", refused, environ)
        verb, name = _one(form, "action"), _one(form, "name")
        if verb not in _VERBS or not name:
            return self._page("400 Bad Request", "Bad request", "give action and name", environ)
        actor = f"web:{viewer.principal} ({changed_by()})"
        store = EntryStore(self.client(), self.root, self.app, actor=actor)
        try:
            if verb == "pause":
                store.pause(name)
            elif verb == "resume":
                store.resume(name)
            else:
                store.run(name)
        except DefinitionError as exc:
            return self._page("400 Bad Request", "Refused", str(exc), environ)
        except ZK_ERRORS as exc:
            problem = describe_error(exc, self.hosts, self.root)
            return self._page("503 Service Unavailable", "ZooKeeper", problem, environ)
        log.info("beatleader web: %s %r by %s", verb, name, actor)
        if "application/json" in str(environ.get("HTTP_ACCEPT", "")):
            body = json.dumps({"done": verb, "name": name, "changed_by": actor}).encode()
            return _Response("200 OK", body, "application/json")
        return _redirect(viewer.url("/entry", name=name, done=f"{_VERBS[verb]} by {actor}"))

    def _login(
        self, environ: dict[str, Any], viewer: Viewer, form: dict[str, list[str]]
    ) -> _Response:
        if not self.access.writable:
            return self._page("403 Forbidden", "Forbidden", _WRITES_OFF)
        if self._forgery(environ, viewer, form) is not None:
            return self._page("403 Forbidden", "Forbidden", "refused: missing CSRF token")
        principal = self.access.login(_one(form, "user") or "", _one(form, "password") or "")
        if principal is None:
            return _html(login_page(viewer, failed=True), "403 Forbidden")
        cookie = (
            f"{COOKIE}={self.access.session_cookie(principal)}; Path={viewer.base or '/'}; "
            f"HttpOnly; SameSite=Strict; Max-Age={int(AccessPolicy.session_seconds)}"
        )
        return _redirect(viewer.url("/entries"), (("Set-Cookie", cookie),))

    def _logout(
        self, environ: dict[str, Any], viewer: Viewer, form: dict[str, list[str]]
    ) -> _Response:
        if self._forgery(environ, viewer, form) is not None:
            return self._page("403 Forbidden", "Forbidden", "refused: missing CSRF token")
        cookie = f"{COOKIE}=; Path={viewer.base or '/'}; HttpOnly; SameSite=Strict; Max-Age=0"
        return _redirect(viewer.url("/"), (("Set-Cookie", cookie),))


_WRITES_OFF = (
    "writes are off: start the dashboard with --allow-write and a credential "
    "(--token-file, --basic-auth-file or beatleader_web_token)"
)


def _html(page: str, status: str = "200 OK") -> _Response:
    return _Response(status, page.encode("utf-8"))


def _redirect(location: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response("303 See Other", b"", "text/plain", (("Location", location), *headers))


def _one(values: dict[str, list[str]], key: str) -> str | None:
    found = values.get(key)
    return found[0] if found else None


def make_dashboard(
    app_or_settings: Any = None,
    *,
    allow_write: bool = False,
    token: str | None = None,
    users: dict[str, str] | None = None,
    client: Any = None,
) -> Dashboard:
    """A :class:`Dashboard` for a Celery app (its ``beatleader_*`` settings) or ``Settings``.

    Read-only unless ``allow_write`` and a credential: ``token`` (default: the app's
    ``beatleader_web_token``) or ``users`` (basic-auth user -> password). ``client``: a started
    KazooClient to use instead of the dashboard's own (then :meth:`Dashboard.close` leaves it).
    """
    if isinstance(app_or_settings, Settings):
        settings, app = app_or_settings, None
    else:
        settings, app = Settings.from_app(app_or_settings), app_or_settings
    access = Access(
        allow_write=allow_write, token=token or settings.web_token, users=dict(users or {})
    )
    return Dashboard(settings, app, access, client)


def mount(app: Any, prefix: str, dashboard: Any) -> Callable[[dict[str, Any], StartResponse], Any]:
    """A WSGI application serving ``dashboard`` under ``prefix`` (``/beatleader``) and every
    other path from ``app``: the way to add the dashboard to a Django project's ``wsgi.py``."""
    base = "/" + prefix.strip("/")

    def dispatch(environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = str(environ.get("PATH_INFO") or "")
        if path == base or path.startswith(base + "/"):
            inner = dict(environ)
            inner["SCRIPT_NAME"] = str(environ.get("SCRIPT_NAME") or "").rstrip("/") + base
            inner["PATH_INFO"] = path[len(base) :] or "/"
            return dashboard(inner, start_response)
        return app(environ, start_response)

    return dispatch
