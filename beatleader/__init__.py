"""beatleader: run Celery beat on every instance; ZooKeeper elects the one that sends.

Use ``celery -A proj beat -S beatleader.Scheduler`` (or ``-S beatleader``) on every instance.
"""

from beatleader import observe as _observe
from beatleader._version import __version__
from beatleader.beat.embedded import EmbeddedBeat
from beatleader.beat.scheduler import Scheduler
from beatleader.config import ConfigError, Settings

__all__ = ["ConfigError", "EmbeddedBeat", "Scheduler", "Settings", "__version__"]


def _dashboard(settings: Settings) -> object:
    """The read-only dashboard a beat serves on its metrics port (``beatleader_web``)."""
    from beatleader.web import make_dashboard

    return make_dashboard(settings)


_observe.web_factory = _dashboard
