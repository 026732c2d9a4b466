"""kombu's filesystem transport with atomic puts, for the demo and the tests (not product).

kombu's filesystem transport creates a message file under its final name and fills it afterwards,
while its consumer moves and reads files without the lock: a worker that lists the folder in
between reads an empty file, fails with ``JSONDecodeError`` and stops ("Unrecoverable error").
This transport writes each message under a temporary name the consumer ignores (it only takes
names ending in ``.<queue>.msg``) and renames it into place, which is atomic on one file system.

Use it with :func:`register`, then ``broker_url = "atomicfs://"`` and the usual
``broker_transport_options`` of the filesystem transport.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

#: The URL scheme :func:`register` adds.
SCHEME = "atomicfs"


class Channel(filesystem.Channel):
    """A filesystem channel whose ``_put`` publishes a complete file or nothing."""

    # kombu's own two base classes name the second parameter differently (message / payload).
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    """Make ``atomicfs://`` name this transport (idempotent)."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
