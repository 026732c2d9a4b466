"""A TCP proxy between ZooKeeper clients and a server that can lose replies and cut connections.

Tests put it between a beat process and ZooKeeper (``BEATLEADER_ZK_HOSTS=proxy.hosts``) to
reproduce the faults a real network produces at the worst moment:

* :meth:`ZkProxy.drop_next_multi_reply`: the next transaction (multi, op 14) reaches the server
  and commits, its reply is thrown away and the connection is cut: the client sees a connection
  loss for a request that did commit.
* :meth:`ZkProxy.cut_before_multi`: let ``after`` transactions through (request and reply), then
  cut the connection when the next one is sent, before it reaches the server.
* :meth:`ZkProxy.cut`: close every connection now.
* :attr:`ZkProxy.multi_reply_delay`: seconds each transaction's reply is held (a slow disk's
  fsync, a remote quorum): commits take that much longer.
* :meth:`ZkProxy.swallow_handshakes`: the next ``count`` connections are accepted and their
  session handshake is never answered (a server that opened its port before its database is
  loaded, as a restarting ZooKeeper does).

It understands just enough of ZooKeeper's wire protocol: every message is a frame with a 4-byte
big-endian length prefix; the first frame each way is the session handshake; after it a request
starts with ``xid`` (int32) and ``type`` (int32), a reply with ``xid`` (int32), ``zxid`` (int64)
and ``err`` (int32). Replies come in request order; pings (xid -2) and watch events (xid -1)
pass untouched. Not a product component: tests and the benchmark only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

#: ZooKeeper's op code of a multi-op transaction.
MULTI = 14


@dataclass
class _Connection:
    client: socket.socket
    server: socket.socket
    #: xids of multi requests in flight.
    multis: set[int] = field(default_factory=set)
    #: xids whose reply must be dropped (then the connection cut).
    drop: set[int] = field(default_factory=set)
    closed: bool = False
    #: Read what the client sends, forward nothing, answer nothing.
    swallow: bool = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class ZkProxy:
    """Listens on a free loopback port and forwards to ``target`` (``host:port``)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host or "127.0.0.1", int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._drop_next = 0
        self._cut_after: int | None = None
        self._swallow = 0
        self._closed = False
        #: Seconds each transaction's (multi's) reply is held before it is forwarded.
        self.multi_reply_delay = 0.0
        #: Counters the tests can assert on.
        self.multi_requests = 0
        self.multi_replies = 0
        self.dropped_replies = 0
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept, name="zk-proxy", daemon=True)
        self._thread.start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults -----------------------------------------------------------------------------------

    def drop_next_multi_reply(self, count: int = 1) -> None:
        """The next ``count`` transactions commit, but their replies are lost with the link."""
        with self._lock:
            self._drop_next += count

    def cut_before_multi(self, after: int) -> None:
        """Forward ``after`` more transactions, then cut when the one after them is sent."""
        with self._lock:
            self._cut_after = after

    def swallow_handshakes(self, count: int = 1) -> None:
        """The next ``count`` connections get no answer to their handshake (nor to anything)."""
        with self._lock:
            self._swallow += count

    def cut(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            self._cut(connection)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def __enter__(self) -> ZkProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _cut(self, connection: _Connection) -> None:
        if not connection.closed:
            self.cuts += 1
            connection.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            connection = _Connection(client, server)
            with self._lock:
                self._connections = [c for c in self._connections if not c.closed]
                self._connections.append(connection)
                if self._swallow:
                    self._swallow -= 1
                    connection.swallow = True
            for target in (self._requests, self._replies):
                threading.Thread(target=target, args=(connection,), daemon=True).start()

    def _requests(self, connection: _Connection) -> None:
        """Client -> server."""
        first = True
        for frame in _frames(connection.client):
            if connection.swallow:
                continue  # read and forgotten: the client waits for an answer that never comes
            if not first and len(frame) >= 12:  # length prefix, xid, op type
                xid, op = struct.unpack(">ii", frame[4:12])
                if op == MULTI and not self._on_multi_request(connection, xid):
                    break
            first = False
            if not _send(connection.server, frame):
                break
        self._cut(connection)

    def _on_multi_request(self, connection: _Connection, xid: int) -> bool:
        """Record a multi request; False: cut the connection instead of forwarding it."""
        with self._lock:
            self.multi_requests += 1
            if self._cut_after is not None:
                if self._cut_after == 0:
                    self._cut_after = None
                    return False
                self._cut_after -= 1
            connection.multis.add(xid)
            if self._drop_next:
                self._drop_next -= 1
                connection.drop.add(xid)
        return True

    def _replies(self, connection: _Connection) -> None:
        """Server -> client."""
        first = True
        for frame in _frames(connection.server):
            if not first and len(frame) >= 8:  # length prefix, xid, ...
                (xid,) = struct.unpack(">i", frame[4:8])
                if xid in connection.multis:
                    connection.multis.discard(xid)
                    with self._lock:
                        self.multi_replies += 1
                    if self.multi_reply_delay > 0:
                        time.sleep(self.multi_reply_delay)  # replies keep their order
                if xid in connection.drop:
                    with self._lock:
                        self.dropped_replies += 1
                    break
            first = False
            if not _send(connection.client, frame):
                break
        self._cut(connection)


def _frames(sock: socket.socket) -> _FrameIterator:
    return _FrameIterator(sock)


class _FrameIterator:
    """The length-prefixed frames read from ``sock`` (prefix included), until it closes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __iter__(self) -> _FrameIterator:
        return self

    def __next__(self) -> bytes:
        header = _read_exactly(self._sock, 4)
        if header is None:
            raise StopIteration
        (length,) = struct.unpack(">i", header)
        body = _read_exactly(self._sock, length) if length > 0 else b""
        if body is None:
            raise StopIteration
        return header + body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        try:
            chunk = sock.recv(min(remaining, 65536))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True
