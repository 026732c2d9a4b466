"""Contender nodes: their names, their order, and which children of ``election/`` take part.

A contender node is named ``<32 hex>__contender__<10 digits>`` (a uuid4 protection token, the
marker, ZooKeeper's sequence) and is EPHEMERAL. Only such nodes take part in the election; any
other child of ``election/`` (a malformed name, a persistent node, whatever another client put
there) is ignored by the election and by ``beatleader status``, and reported.

Guarantees:

* :func:`sorted_contenders` never raises on any list of names: malformed names are dropped, the
  rest are ordered by (sequence, name), so every reader agrees on the queue.
* :class:`ContenderQueue` reading the queue costs one ``get_children``, whatever its length: a
  node's ``ephemeralOwner`` is learnt from the ``exists`` a follower sets on its predecessor
  (names are unique, so once per name), and a persistent node is ignored from then on. A join
  or a leave costs each instance involved O(1) requests.

Not guaranteed: that an ephemeral, well-formed node belongs to a beatleader instance. A foreign
client holding a live session can still queue such a node; only ZooKeeper ACLs (``client.py``)
keep foreign writers out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kazoo.client import KazooClient

#: Separates the protection token from ZooKeeper's sequence in a contender node's name.
CONTENDER_MARKER = "__contender__"

_CONTENDER_NAME = re.compile(r"[0-9a-f]{32}" + CONTENDER_MARKER + r"[0-9]{10}")


def is_contender_name(name: str) -> bool:
    """True when ``name`` is shaped like the nodes :class:`LeaderElection` creates."""
    return _CONTENDER_NAME.fullmatch(name) is not None


def contender_sequence(node_name: str) -> int:
    """The sequence number ZooKeeper gave a well-formed contender node (its queue position)."""
    return int(node_name.rsplit(CONTENDER_MARKER, 1)[1])


def sorted_contenders(children: Iterable[str]) -> list[str]:
    """The well-formed contender names among ``children``, in queue order (the first leads).

    Persistence is not checked here (names carry no stat); see :class:`ContenderQueue`.
    """
    return sorted(
        (c for c in children if is_contender_name(c)), key=lambda c: (contender_sequence(c), c)
    )


def ignored_reason(name: str, ephemeral_owner: int | None) -> str | None:
    """Why the child ``name`` of ``election/`` does not take part, or None when it does."""
    if not is_contender_name(name):
        return "its name is not <32 hex>__contender__<10 digits>"
    if ephemeral_owner == 0:
        return "it is not ephemeral (no session owns it)"
    return None


@dataclass(frozen=True)
class QueueView:
    """One reading of ``election/``: the contenders in order, and what was ignored and why."""

    contenders: tuple[str, ...]
    #: node name -> why it does not take part.
    ignored: dict[str, str]


class ContenderQueue:
    """Reads the election queue, keeping only well-formed ephemeral nodes; see the module doc."""

    def __init__(self, client: KazooClient, path: str) -> None:
        self._client = client
        self._path = path
        self._owners: dict[str, int] = {}

    def note_owner(self, name: str, owner: int) -> None:
        """Remember the ``ephemeralOwner`` of ``name`` (e.g. the own node, just read)."""
        self._owners[name] = owner

    def owner(self, name: str) -> int | None:
        """The ``ephemeralOwner`` of ``name`` when known (0: a persistent node)."""
        return self._owners.get(name)

    def forget(self, name: str) -> None:
        """Read ``name``'s stat again next time (it may have been replaced)."""
        self._owners.pop(name, None)

    def read(self) -> QueueView:
        """List ``election/``: one request. A well-formed name whose stat is not known yet counts
        as a contender until someone stats it: the follower right behind it does (its
        ``exists`` watch), and :meth:`note_owner` records a persistent one, ignored from then on.
        """
        children = set(self._client.get_children(self._path))
        self._owners = {k: v for k, v in self._owners.items() if k in children}
        ignored = {}
        for name in children:
            reason = ignored_reason(name, self._owners.get(name))
            if reason is not None:
                ignored[name] = reason
        return QueueView(tuple(sorted_contenders(children - ignored.keys())), ignored)
