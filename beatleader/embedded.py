"""The old path of ``beatleader.EmbeddedBeat``: :mod:`beatleader.beat.embedded`.

Kept so that code written for earlier versions keeps working; new code may use either.
"""

from beatleader.beat.embedded import EmbeddedBeat

__all__ = ["EmbeddedBeat"]
