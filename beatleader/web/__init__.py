"""The web dashboard: the leader, every entry and its runs in a browser; pause, resume, run now.

``beatleader web`` serves it (:mod:`beatleader.cli.web`); :func:`make_dashboard` returns the WSGI
application to mount in a web app of one's own, :class:`AsgiDashboard` its ASGI form (docs/web.md).

One job per module: ``snapshot`` reads (through :mod:`beatleader.ops.status`,
:mod:`beatleader.entries` and :mod:`beatleader.runs.history`, never ZooKeeper directly),
``pages`` renders escaped HTML, ``access`` checks credentials and CSRF tokens, ``app`` routes and
acts, ``asgi`` adapts it to ASGI, ``server`` serves it with the standard library. It stands on
:mod:`beatleader.entries` and :mod:`beatleader.ops`; only :mod:`beatleader.cli` stands on it. It
needs nothing outside the standard library (the ``web`` extra is empty, kept for the future).
"""

from beatleader.web.access import Access, AccessError, read_token, read_users
from beatleader.web.app import Dashboard, WebPolicy, make_dashboard, mount
from beatleader.web.asgi import AsgiDashboard
from beatleader.web.server import make_server, start_server
from beatleader.web.snapshot import Snapshot, SnapshotPolicy, read_snapshot

__all__ = [
    "Access",
    "AccessError",
    "AsgiDashboard",
    "Dashboard",
    "Snapshot",
    "SnapshotPolicy",
    "WebPolicy",
    "make_dashboard",
    "make_server",
    "mount",
    "read_snapshot",
    "read_token",
    "read_users",
    "start_server",
]
