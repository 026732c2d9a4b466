"""The dashboard as an ASGI application, for FastAPI, Starlette and other ASGI servers.

:class:`AsgiDashboard` wraps a WSGI :class:`~beatleader.web.app.Dashboard` (or any WSGI callable):
each HTTP request's body is read (at most :attr:`WebPolicy.max_body` bytes, a larger one is a 413),
the WSGI application runs on a worker thread (``asyncio.to_thread``: its ZooKeeper reads block)
and its response is sent in one piece. Mounted under a prefix (``app.mount("/beatleader", ...)``),
the scope's ``root_path`` becomes ``SCRIPT_NAME``, so the dashboard's links stay under it.
``lifespan`` messages are acknowledged; the shutdown closes the dashboard's client.

Not guaranteed: streaming (responses are small pages) or websockets (refused).
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from beatleader.web.app import WebPolicy

__all__ = ["AsgiDashboard"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiDashboard:
    """An ASGI application serving the WSGI application ``wsgi``."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"beatleader web serves HTTP, not {scope['type']}")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > WebPolicy.max_body:
                await _plain(send, 413, b"request body too large")
                return
            if not message.get("more_body"):
                break
        environ = _environ(scope, bytes(body))
        status, headers, chunks = await asyncio.to_thread(self._run, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": chunks})

    def _run(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        found: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], _exc: Any = None) -> Any:
            found["status"], found["headers"] = status, headers
            return lambda _data: None

        result = self.wsgi(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        code = int(str(found["status"]).split(" ", 1)[0])
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in found["headers"]]
        return code, headers, data

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                close = getattr(self.wsgi, "close", None)
                if close is not None:
                    await asyncio.to_thread(close)
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    root = str(scope.get("root_path") or "")
    path = str(scope.get("path") or "/")
    if root and path.startswith(root):  # Starlette keeps the prefix in ``path``
        path = path[len(root) :] or "/"
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": root,
        "PATH_INFO": path,
        "QUERY_STRING": bytes(scope.get("query_string") or b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": str(client[0]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers") or ():
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name != "CONTENT_LENGTH":
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
