"""The celery scheduler: elected, fenced, at least once (``beatleader.Scheduler``).

``scheduler`` is the one scheduler class (celery's hooks, the takeover, the tick top to bottom);
it holds its parts: ``leadership`` (one session's client, contender and fence, peer check),
``publishing`` (the outbox after a commit), the ``sources`` (runtime definitions, rows) and
``dynamic``'s change queue. ``state`` is the fenced batched commit and the takeover read,
``planning`` the pure decisions, ``sigmask`` keeps signals out of the gap between commit and
publish, ``embedded`` runs the scheduler inside a web server.

May import: :mod:`beatleader.election`, :mod:`beatleader.schedules`, :mod:`beatleader.zk`,
:mod:`beatleader.observe`, :mod:`beatleader.config`. Never :mod:`beatleader.ops`,
:mod:`beatleader.entries` or :mod:`beatleader.cli`, which stand on it.
"""
