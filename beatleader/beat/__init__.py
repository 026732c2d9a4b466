"""The celery scheduler: elected, fenced, at least once (``beatleader.Scheduler``).

``scheduler`` is celery's hooks, the session and the takeover; ``leading`` plans, commits and
publishes (the tick's leader half), ``publishing`` is the outbox after a commit, ``state`` the
fenced batched commit and the takeover read, ``planning`` the pure decisions, ``dynamic`` the
entries that change while beat runs, from the ``sources`` (runtime definitions, rows), ``sigmask``
keeps signals out of the gap between commit and publish, ``embedded`` runs it inside a web server.

May import: :mod:`beatleader.election`, :mod:`beatleader.schedules`, :mod:`beatleader.zk`,
:mod:`beatleader.observe`, :mod:`beatleader.config`. Never :mod:`beatleader.ops`,
:mod:`beatleader.entries` or :mod:`beatleader.cli`, which stand on it.
"""
