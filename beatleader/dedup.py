"""The old path of the worker guard, ``beatleader.dedup.install(app)``:
:mod:`beatleader.worker.guard`.

Kept so that code written for earlier versions keeps working; new code may use either.
"""

from beatleader.worker.guard import (
    REQUEUES_HEADER,
    DedupGuard,
    DedupPolicy,
    Unavailable,
    install,
)

__all__ = ["REQUEUES_HEADER", "DedupGuard", "DedupPolicy", "Unavailable", "install"]
