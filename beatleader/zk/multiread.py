"""Many node reads in few ZooKeeper requests: the multi-read of ZooKeeper 3.6+, with a fallback.

A takeover reads every entry's run state and every runtime definition: 20,000 nodes for 10,000
runtime entries that have run. kazoo sends one request per loop of its connection thread, woken
once per request, and tops out near 3,500 reads/s on two cores. ZooKeeper 3.6 added
``multiRead`` (opcode 22): a list of getData / getChildren operations answered in one reply, each
operation with its own result or error. kazoo 2.11 does not offer it; :class:`MultiRead` is the
request, built the way kazoo builds its own (``kazoo.protocol.serialization.Transaction``), and
sent through ``KazooClient._call``, the path every kazoo request takes.

:func:`read_nodes` is the function callers use (:func:`read_children` lists a folder first): it
sends the reads of ``paths`` now, in batches of :data:`MAX_OPS`, and returns one result per path
with kazoo's ``get()`` contract (``(data, stat)``, or that node's error: ``NoNodeError``,
``NoAuthError``, ...). ZooKeeper sets no watch for a read inside a multi-read, so a data watch
asked for is set by :class:`SetWatches` (the request clients send after a reconnect), as of the
zxid this client had seen before the reads: the server fires at once the watch of a node that
changed since, or is gone, and sets the others. Fewer than :data:`MIN_BATCH` reads are plain
``get_async`` calls, the watch set with the read.

Guarantees: results are those of plain ``get`` calls, node by node; a watched node's change after
its read is never missed (it may also fire for a change just before the read: one more read for
the caller). A server without multi-read (older than 3.6) answers the first batch, sent alone,
``UnimplementedError`` and closes the connection (the session lives on): that client reads node
by node (pipelined ``get_async``) for the rest of its life, one WARNING says so, and the reads
sent right after the refusal may meet the closing connection (``ConnectionLoss``, as after any
disconnection). A SetWatches the server refuses is logged (ERROR); nobody waits for its reply.

Not guaranteed: that the reads of different batches see one moment of the tree (neither do
pipelined gets); a bound on a reply's size other than :data:`MAX_OPS` nodes of at most
ZooKeeper's node size each; that kazoo's private ``_call``, ``_data_watchers`` and ``last_zxid``
keep their shape after kazoo 2.11 (node-by-node reads are taken if ``_call`` is missing; run
``tests/test_multiread.py`` on a kazoo upgrade).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    EXCEPTIONS,
    ConnectionClosedError,
    ConnectionLoss,
    MarshallingError,
    NoNodeError,
    SessionExpiredError,
    UnimplementedError,
)
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.serialization import (
    MultiHeader,
    int_struct,
    long_struct,
    multiheader_struct,
    read_buffer,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import WatchedEvent, ZnodeStat

logger = logging.getLogger("beatleader.multiread")

#: Most node reads in one multi-read request: its reply stays a few hundred KB for typical nodes.
MAX_OPS = 500

#: ZooKeeper's opcodes: multiRead, and the getData operation inside it; -1 is an operation's error.
MULTI_READ = 22
GET_DATA = 4
ERROR = -1
SET_WATCHES = 101

#: Largest SetWatches request (bytes of paths), as ZooKeeper's Java client splits its own.
MAX_WATCH_BYTES = 128 * 1024

#: Fewer reads than this go node by node (one request each, the watch set with the read).
MIN_BATCH = 8

#: Errors that mean the connection or session went away (not a refusal of the request).
CONNECTION_LOST = (ConnectionLoss, ConnectionClosedError, SessionExpiredError)

Watcher = Callable[[WatchedEvent], None]
Result = tuple[bytes, ZnodeStat]

#: Clients whose server answered a multi-read with UnimplementedError, and clients known to take it.
_refused: weakref.WeakSet[KazooClient] = weakref.WeakSet()
_accepted: weakref.WeakSet[KazooClient] = weakref.WeakSet()


class MultiRead:
    """getData of every path of ``paths`` (chrooted already) in one request; see the module doc.

    ZooKeeper sets no watch for the reads of a multi-read (the flag is ignored, measured on 3.8):
    :class:`SetWatches` sets them.
    """

    type = MULTI_READ

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __repr__(self) -> str:
        return f"MultiRead({len(self.paths)} nodes, first {self.paths[0]!r})"

    def serialize(self) -> bytearray:
        buffer = bytearray()
        op = multiheader_struct.pack(GET_DATA, False, -1)
        for path in self.paths:
            buffer += op
            buffer += write_string(path)
            buffer += b"\x00"
        buffer += multiheader_struct.pack(-1, True, -1)
        return buffer

    def deserialize(self, data: bytes, offset: int) -> list[Result | Exception]:
        """Called by kazoo's connection thread, before it reads the next reply."""
        results: list[Result | Exception] = []
        header, offset = MultiHeader.deserialize(data, offset)
        while not header.done:
            if header.type == GET_DATA:
                value, offset = read_buffer(data, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(data, offset))
                offset += stat_struct.size
                results.append((value, stat))
            elif header.type == ERROR:
                code = int_struct.unpack_from(data, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise MarshallingError(f"multi-read reply has an operation of type {header.type}")
            header, offset = MultiHeader.deserialize(data, offset)
        if len(results) != len(self.paths):
            found = f"{len(results)} results for {len(self.paths)} reads"
            raise MarshallingError(f"multi-read reply has {found}")
        return results


class SetWatches:
    """Data watches on ``paths`` (chrooted already), as of ``relative_zxid``: the request every
    ZooKeeper client sends after a reconnect (kazoo 2.11 has none). The server fires at once the
    watch of a node changed after ``relative_zxid`` (NodeDataChanged) or gone (NodeDeleted), and
    sets the others. It checks no ACL: a watch tells only that a node changed."""

    type = SET_WATCHES

    def __init__(self, relative_zxid: int, paths: Sequence[str]) -> None:
        self.relative_zxid = relative_zxid
        self.paths = paths

    def __repr__(self) -> str:
        return f"SetWatches({len(self.paths)} data watches, as of zxid {self.relative_zxid:#x})"

    def serialize(self) -> bytearray:
        buffer = bytearray(long_struct.pack(self.relative_zxid))
        buffer += int_struct.pack(len(self.paths))
        for path in self.paths:
            buffer += write_string(path)
        buffer += int_struct.pack(0) + int_struct.pack(0)  # no exists, no child watches
        return buffer

    def deserialize(self, data: bytes, offset: int) -> bool:
        return True  # the reply is its header only


class _BatchResult:
    """One node's result in a batch, with ``IAsyncResult.get``'s contract."""

    __slots__ = ("_index", "batch")

    def __init__(self, batch: IAsyncResult, index: int) -> None:
        self.batch = batch
        self._index = index

    def get(self) -> Result:
        result = self.batch.get()[self._index]
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]


def read_nodes(
    client: KazooClient, paths: Sequence[str], watch: Watcher | None = None
) -> list[Any]:
    """Send a read of each of ``paths`` now; one result per path (``.get()``), in order.

    With ``watch``, each node gets a data watch that calls it, as ``get(path, watch=watch)``
    sets one: a node changed after its read fires it, and so does (at once) a node that is gone
    or that changed after the last reply this client had before the reads (ZooKeeper compares
    with that zxid). Callers list the folder first, so that these extra events are rare; each
    costs its caller one more read, never a missed change.
    """
    if len(paths) < MIN_BATCH or not _multi_read_usable(client):
        return _node_by_node(client, paths, watch)
    seen_zxid = client.last_zxid
    full = [(client.chroot or "") + path for path in paths]
    batches = [full[start : start + MAX_OPS] for start in range(0, len(full), MAX_OPS)]
    results: list[Any] = []
    if client not in _accepted:
        first = _probe(client, batches.pop(0))
        if first is None:  # refused: this client reads node by node from now on
            return _node_by_node(client, paths, watch)
        results.extend(first)
    for batch in batches:
        results.extend(_send_reads(client, batch))
    if watch is not None:
        _set_watches(client, full, watch, seen_zxid)
    return results


def list_children(client: KazooClient, folder: str) -> list[str]:
    """The children of ``folder``; [] when it does not exist (other errors are raised)."""
    try:
        return list(client.get_children(folder))
    except NoNodeError:
        return []


def read_children(client: KazooClient, folder: str) -> dict[str, Result]:
    """Every child of ``folder``: its name -> ``(data, stat)``, read by :func:`read_nodes`.

    A missing folder is empty and a child deleted meanwhile is skipped; any other error (an ACL
    that denies the listing or a read, the connection) is raised, as ``get`` raises it.
    """
    children = list_children(client, folder)
    found: dict[str, Result] = {}
    paths = [f"{folder}/{child}" for child in children]
    for child, result in zip(children, read_nodes(client, paths), strict=True):
        try:
            data, stat = result.get()
        except NoNodeError:
            continue
        found[child] = (data or b"", stat)
    return found


def _node_by_node(client: KazooClient, paths: Sequence[str], watch: Watcher | None) -> list[Any]:
    """A pipelined ``get_async`` per path, the watch set with each read."""
    return [client.get_async(path, watch=watch) for path in paths]


def _multi_read_usable(client: KazooClient) -> bool:
    return client not in _refused and callable(getattr(client, "_call", None))


def _probe(client: KazooClient, paths: Sequence[str]) -> list[_BatchResult] | None:
    """The first multi-read of a client, sent alone: None if the server has none."""
    results = _send_reads(client, paths)
    try:
        results[0].batch.get()
    except UnimplementedError:
        _refused.add(client)
        logger.warning(
            "beatleader: this ZooKeeper server has no multi-read (it is older than 3.6) and "
            "closed the connection on one; reading node by node from now on (slower takeovers)"
        )
        return None
    except Exception:  # the connection's error (not the server's answer): each result has it
        return results
    _accepted.add(client)
    return results


def _set_watches(client: KazooClient, paths: list[str], watch: Watcher, zxid: int) -> None:
    """Data watches calling ``watch`` on ``paths``, in requests of at most MAX_WATCH_BYTES.

    The watcher is put in kazoo's table first: the server sends the events of nodes changed
    since ``zxid`` before its reply, and kazoo looks the table up when an event arrives.
    """
    watchers = client._data_watchers
    chunk: list[str] = []
    size = 0
    for path in paths:
        watchers[path].add(watch)
        chunk.append(path)
        size += len(path) + 4
        if size >= MAX_WATCH_BYTES:
            _send_watches(client, SetWatches(zxid, chunk))
            chunk, size = [], 0
    if chunk:
        _send_watches(client, SetWatches(zxid, chunk))


def _send_watches(client: KazooClient, request: SetWatches) -> None:
    """Send ``request`` without waiting; a refusal is logged (a lost connection ends the
    leadership that asked for the watches, so it is not)."""
    reply = _send(client, request)

    def check(done: IAsyncResult) -> None:
        error = done.exception
        if error is not None and not isinstance(error, CONNECTION_LOST):
            logger.error(
                "beatleader: ZooKeeper refused %r (%r): changes of those nodes are seen at the "
                "next takeover",
                request,
                error,
            )

    reply.rawlink(check)


def _send_reads(client: KazooClient, paths: Sequence[str]) -> list[_BatchResult]:
    """One multi-read of ``paths`` (chrooted already): a result per path."""
    batch = _send(client, MultiRead(paths))
    return [_BatchResult(batch, index) for index in range(len(paths))]


def _send(client: KazooClient, request: Any) -> IAsyncResult:
    """Queue ``request`` on kazoo's connection; its reply comes in the result."""
    reply = client.handler.async_result()
    client._call(request, reply)
    return reply
