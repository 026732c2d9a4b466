"""Runs, not sends: what each run of an entry did (``records.py``), read back (``history.py``).

The worker guard writes a record when a run starts (its claim) and when it ends (its marker); the
leader keeps, in each entry's state, the last runs it sent or skipped. This package owns the JSON of
those records and the reader that merges them into one history per entry; it never writes.
"""

from beatleader.runs.records import Outcome, RunRecord

__all__ = ["Outcome", "RunRecord"]
