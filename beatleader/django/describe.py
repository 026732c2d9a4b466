"""``sources/django``: what the database schedule holds, for ``beatleader status`` and ``prune``.

The static schedule is published per fingerprint under ``schedules/`` by every instance; the
database entries change while beat runs, so the leader publishes them in the same format
(``schedules.encode_schedule``) under ``sources/django`` whenever the set it schedules changed,
in a transaction with the fence (``check`` of its own contender node), so an ex-leader cannot
overwrite a newer description. ``status`` reads every ``sources/*`` node as one more schedule.

Guarantees: written only by the leader, only when the content changed, fenced; a failure is
logged (once per change) and retried with the next change check, never raised.

Not guaranteed: that the node is current between a change and the next check of the change
marker, or after the last leader stopped (it then shows the last schedule a leader had).
"""

from __future__ import annotations

import logging
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

from beatleader.schedules.describe import describe_entry, encode_schedule
from beatleader.zk import layout

logger = logging.getLogger("beatleader.django")

#: The source name under ``sources/``.
SOURCE = "django"


def publish_rows(client: Any, root: str, fence: str, entries: list[Any]) -> None:
    """Write ``sources/django`` describing ``entries``, fenced by the contender node ``fence``."""
    path = layout.source_path(root, SOURCE)
    data = encode_schedule([describe_entry(entry) for entry in entries])
    for _ in range(2):
        try:
            _, stat = client.get(path)
        except NoNodeError:
            client.ensure_path(f"{root}/{layout.SOURCES}")
            transaction = client.transaction()
            transaction.check(fence, 0)
            transaction.create(path, data)
        else:
            transaction = client.transaction()
            transaction.check(fence, 0)
            transaction.set_data(path, data, version=stat.version)
        results = transaction.commit()
        if not any(isinstance(r, KazooException) for r in results):
            return
        if not any(isinstance(r, NodeExistsError | BadVersionError) for r in results):
            raise RuntimeError(f"the fenced write of {path} failed: {results!r}")
    raise RuntimeError(f"{path} changed under the leader twice in a row")
