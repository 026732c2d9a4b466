"""What an entry is and when it is due: runtime definitions, their checks, schedule types.

``definitions`` are the JSON stored under ``definitions/`` (validated by ``checks``), ``types``
holds the schedules celery lacks (a one-off, a zoned crontab following ``dstcron``'s cron DST
rules), ``describe`` says what each schedule version holds, for operators.

Pure data and time arithmetic: no ZooKeeper client, no broker. May import: celery's schedules,
:mod:`beatleader.zk.layout` (encodings), :mod:`beatleader.config`.
"""
