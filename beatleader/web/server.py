"""Serve a WSGI application with the standard library: ``wsgiref`` and a thread per request.

What ``beatleader web`` runs (:func:`make_server`, then ``serve_forever``); tests and embedders use
:func:`start_server` to serve on a daemon thread.

Guarantees: an IPv6 address (``::1``) binds an IPv6 socket; port 0 picks a free port
(:attr:`WSGIServer.server_port` tells it); request threads are daemons, so a stuck request does
not keep the process alive; the per-request log lines go to the ``beatleader.web`` logger at
DEBUG, not to stderr. Binding failures raise ``OSError`` to the caller.

Not guaranteed: TLS, HTTP/1.1 keep-alive (each response closes its connection), protection against
slow clients beyond the thread each one holds: keep it on loopback or behind a proxy.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_server

__all__ = ["ThreadingWSGIServer", "make_server", "start_server"]

log = logging.getLogger("beatleader.web")


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server, one daemon thread per request."""

    daemon_threads = True
    allow_reuse_address = True


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(app: Any, address: str = "127.0.0.1", port: int = 0) -> ThreadingWSGIServer:
    """A threading WSGI server of ``app`` bound to ``address:port`` (not serving yet)."""
    server_class = _IPv6Server if ":" in address else ThreadingWSGIServer
    server = _make_server(address, port, app, server_class, _QuietHandler)
    assert isinstance(server, ThreadingWSGIServer)
    return server


def start_server(
    app: Any, address: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """:func:`make_server` serving on a daemon thread; stop it with ``server.shutdown()``."""
    server = make_server(app, address, port)
    thread = threading.Thread(target=server.serve_forever, name="beatleader-web", daemon=True)
    thread.start()
    return server, thread
