"""The old path of ``beatleader.Scheduler``: :mod:`beatleader.beat.scheduler`.

Kept so that code written for earlier versions keeps working; new code may use either.
"""

from beatleader.beat.scheduler import Scheduler

__all__ = ["Scheduler"]
