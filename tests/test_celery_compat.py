"""Behaviour that depends on celery's beat internals; scripts/test-lowest-celery.sh runs it against
the lowest supported celery as well as the newest.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.schedules import schedule

from beatleader import EmbeddedBeat
from tests.app import make_app
from tests.cluster import ENTRY
from tests.harness import FilesystemBroker, wait_for


class _Broken(schedule):  # type: ignore[misc]
    """A schedule whose ``is_due`` raises (a bug in a custom schedule class)."""

    def is_due(self, last_run_at: Any) -> Any:
        raise ValueError("broken schedule")


def _app(broker_dir: Path) -> Celery:
    app = make_app(
        {"TEST_BROKER_DIR": str(broker_dir), "TEST_SCHEDULE": '{"every second": {"every": 1}}'},
        set_as_current=False,
    )
    app.conf.beat_schedule["broken"] = {
        "task": "tests.app.record",
        "schedule": _Broken(timedelta(seconds=1)),
        "args": ["broken"],
    }
    return app


def test_an_entry_whose_is_due_raises_does_not_stop_the_others(
    zk_server, zk_root, broker_dir, caplog
) -> None:
    broker = FilesystemBroker(broker_dir)
    with caplog.at_level(logging.INFO, logger="beatleader"):
        beat = EmbeddedBeat(
            _app(broker_dir), zk_hosts=zk_server.hosts, path=zk_root, session_timeout=5
        ).start()
        try:
            wait_for(lambda: broker.count(ENTRY) >= 3, 30, message="three sends of the good entry")
        finally:
            beat.stop()
    assert broker.count("broken") == 0
    messages = [r.getMessage() for r in caplog.records]
    # reported by beatleader, or by celery itself where its is_due catches the error (5.7)
    reported = ("cannot tell when 'broken' is due", "Cannot calculate the next run of 'broken'")
    assert any(text in m for m in messages for text in reported), messages
    assert not [m for m in messages if "embedded beat failed" in m]
