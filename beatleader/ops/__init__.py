"""What operators read and do from outside a beat: status, its warnings, prune, rendering.

``status`` reads what beatleader keeps in ZooKeeper (``model`` is what it returns), ``diagnose``
says what is wrong with it, ``render`` prints it, ``prune`` removes state no instance schedules,
``runtimeplans`` shows runtime definitions as plans.

Read-only except ``prune`` and ``resign`` (``status.resign_leader``). May import:
:mod:`beatleader.zk`, :mod:`beatleader.election.contenders`, :mod:`beatleader.schedules`,
:mod:`beatleader.config`. Nothing imports it but :mod:`beatleader.entries` and
:mod:`beatleader.cli`.
"""
