"""Signal masks that keep SIGTERM/SIGINT out of the gap between a commit and its publish.

Python runs signal handlers in the main thread, but the C-level handler runs in whichever thread
the kernel picks among those that do not block the signal; it only sets a flag, and the main
thread runs the Python handler at its next bytecode, whatever the main thread's own mask says.
So masking the main thread alone is not enough: every other thread must block them too.

* :func:`blocked_in_new_threads`: threads started inside it inherit a mask that blocks SIGTERM and
  SIGINT (POSIX threads inherit the creator's mask), for kazoo's and the election's threads.
* :func:`deferred`: blocks them in the calling main thread for the duration; a signal that arrives
  meanwhile is delivered when the block ends.

Not covered: threads that the host process (or another library) started without the mask; in
``celery beat`` there are none, in a web process running ``EmbeddedBeat`` there may be.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: The signals that stop celery beat gracefully.
HELD = frozenset({signal.SIGTERM, signal.SIGINT})


@contextlib.contextmanager
def blocked_in_new_threads() -> Iterator[None]:
    """Threads started in this block never receive SIGTERM/SIGINT (works in any thread)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT in the main thread for the block; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with blocked_in_new_threads():
        yield
