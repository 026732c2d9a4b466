"""The worker side: each beatleader run executes once, on any number of workers.

``guard`` is ``beatleader.dedup.install(app)`` (claims a run before it executes, writes a marker
when it ends), ``claims`` the claim protocol in ZooKeeper, ``markers`` what outlives a claim.

May import: :mod:`beatleader.zk`, :mod:`beatleader.config`, celery's signals and tasks. Never
:mod:`beatleader.beat`: a worker runs without a scheduler.
"""
