"""Leader election among beat instances: ephemeral sequential contender nodes, one leader.

``leader`` is the recipe (constructor: client, path, identifier, as kazoo's recipes), ``contenders``
names and orders the contender nodes, ``pacing`` decides when a contender may queue or lead again,
``peers`` catches misconfigured peers (another app or another schedule on the same path).

Guarantees: at most one instance believes it leads while its session lives; the fence a leader
commits under is its own contender node. May import: :mod:`beatleader.zk`,
:mod:`beatleader.observe`, :mod:`beatleader.config`. It knows nothing of celery or entries.
"""
