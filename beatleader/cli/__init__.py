"""The operator CLI: ``beatleader status|resign|prune|entry ...`` (also ``celery beatleader``).

``main`` is the command group, ``connect`` how a command reaches ZooKeeper (options, settings,
errors as one line), ``entry`` the ``entry`` subcommands. The top layer: it may import every
other package; none imports it.
"""

from beatleader.cli.main import celery_command, main

__all__ = ["celery_command", "main"]
