"""The one place where beatleader makes a ZooKeeper client: hosts, auth, TLS, ACLs, retry, logging.

Every connection goes through :func:`make_client`: the scheduler's, ``EmbeddedBeat``'s (it runs the
scheduler), the CLI's and the test harness's. What it decides:

* **Auth**: ``digest`` credentials are sent with every (re)connect (kazoo re-sends ``auth_data``
  after a reconnect and after session expiry); ``sasl`` uses SASL DIGEST-MD5 (needs ``pure-sasl``).
* **ACLs** (:func:`acl_for`): with auth configured, every znode beatleader creates grants all
  permissions to the configured identity only, plus read to the world when
  ``zk_world_readable`` (so ``beatleader status`` works without credentials). Without auth,
  ZooKeeper's default open ACL applies, and foreign data is validated on every read instead.
* **TLS**: ``use_ssl`` with the configured CA, client certificate and key; hostname checking is
  on unless turned off (kazoo's own default is off).
* **Retry**: reconnect attempts never stop, and their pause grows to at most a quarter of the
  session timeout (:attr:`ClientPolicy.reconnect_fraction`), so a session survives a short quorum
  loss instead of expiring while the client sleeps between rounds.
* **Logging**: kazoo logs under ``beatleader.kazoo``. Unless that logger's level is set by the
  application, :class:`KazooLogFilter` keeps it quiet: kazoo's INFO lines and its per-attempt
  reconnect warnings are dropped (one a second while ZooKeeper is down), other warnings pass at
  most once a minute each, errors always pass. beatleader logs connection state changes itself
  (``beatleader.client``, INFO), and the election logs "waiting for ZooKeeper" with doubling pauses.

Not decided here: what happens when the connection fails (the election and the scheduler retry
forever, the CLI gives up after ``--timeout``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry
from kazoo.security import ACL, make_acl, make_digest_acl

from beatleader.config import Settings, ZkAuth

#: Name of the logger kazoo's own messages go to.
KAZOO_LOGGER = "beatleader.kazoo"

logger = logging.getLogger(__name__)


class KazooLogFilter(logging.Filter):
    """Quiets kazoo's chatter on ``beatleader.kazoo`` while the application left its level unset."""

    #: kazoo's message templates repeated on every reconnect attempt: never shown by default.
    reconnect_chatter = frozenset(
        {
            "Connection dropped: %s",
            "Connection time-out: %s",
            "Transition to CONNECTING",
        }
    )
    #: Seconds before the same other warning (e.g. "Cannot resolve %s: %s") passes again.
    repeat_after = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            logging.getLogger(record.name).level != logging.NOTSET
            or record.levelno >= logging.ERROR
        ):
            return True  # configured by the application, or an error: always shown
        if record.levelno < logging.WARNING or record.msg in self.reconnect_chatter:
            return False
        now, template = time.monotonic(), str(record.msg)
        last = self._last_seen.get(template)
        if last is not None and now - last < self.repeat_after:
            return False
        self._last_seen[template] = now
        return True


def kazoo_logger() -> logging.Logger:
    """The logger every client gets, with one :class:`KazooLogFilter` installed."""
    log = logging.getLogger(KAZOO_LOGGER)
    if not any(isinstance(f, KazooLogFilter) for f in log.filters):
        log.addFilter(KazooLogFilter())
    return log


def _log_state(state: str) -> None:
    """One line per connection state change (kazoo calls listeners only on a change)."""
    logger.info("beatleader: ZooKeeper connection %s", state)


class ClientPolicy:
    """Retry and pacing of every beatleader ZooKeeper client; subclass or patch to tune."""

    #: The pause between reconnect rounds grows to at most this fraction of the session timeout.
    reconnect_fraction = 0.25
    #: ... and never beyond this many seconds (bounds the idle time after ZooKeeper returns).
    reconnect_max_delay = 2.0
    #: First pause between reconnect rounds, seconds.
    reconnect_first_delay = 0.05

    @classmethod
    def connection_retry(cls, session_timeout: float) -> KazooRetry:
        """Reconnect forever, pausing at most ``reconnect_fraction`` of the session timeout."""
        max_delay = min(cls.reconnect_max_delay, session_timeout * cls.reconnect_fraction)
        return KazooRetry(
            max_tries=-1,
            delay=min(cls.reconnect_first_delay, max_delay),
            max_delay=max_delay,
            max_jitter=0.2,  # kazoo's default jitter is up to 1 s: longer than a short session
        )


def make_client(
    settings: Settings,
    *,
    timeout: float | None = None,
    connection_retry: KazooRetry | dict[str, Any] | None = None,
    read_only_ok: bool = False,
) -> KazooClient:
    """A new, unstarted client for ``settings`` (create it after any fork).

    ``timeout`` overrides the session timeout (the CLI uses its ``--timeout``);
    ``connection_retry`` overrides :meth:`ClientPolicy.connection_retry`.
    """
    session_timeout = settings.session_timeout if timeout is None else timeout
    kwargs: dict[str, Any] = {
        "hosts": settings.zk_hosts,
        "timeout": session_timeout,
        "connection_retry": connection_retry or ClientPolicy.connection_retry(session_timeout),
        "logger": kazoo_logger(),
        "default_acl": acl_for(settings),
        "read_only": read_only_ok or None,
    }
    kwargs.update(_auth_arguments(settings.zk_auth))
    kwargs.update(_tls_arguments(settings))
    client = KazooClient(**kwargs)
    client.add_listener(_log_state)
    return client


def acl_for(settings: Settings) -> list[ACL] | None:
    """The ACL of every znode beatleader creates; None (ZooKeeper's open default) without auth."""
    auth = settings.zk_auth
    if auth is None:
        return None
    owner = (
        make_digest_acl(auth.user, auth.password, all=True)
        if auth.scheme == "digest"
        else make_acl("sasl", auth.user, all=True)
    )
    acl = [owner]
    if settings.zk_world_readable:
        acl.append(make_acl("world", "anyone", read=True))
    return acl


def _auth_arguments(auth: ZkAuth | None) -> dict[str, Any]:
    if auth is None:
        return {}
    if auth.scheme == "digest":
        return {"auth_data": [("digest", f"{auth.user}:{auth.password}")]}
    return {
        "sasl_options": {
            "mechanism": "DIGEST-MD5",
            "username": auth.user,
            "password": auth.password,
        }
    }


def _tls_arguments(settings: Settings) -> dict[str, Any]:
    tls = settings.zk_tls
    if tls is None:
        return {}
    return {
        "use_ssl": True,
        "ca": tls.ca,
        "certfile": tls.cert,
        "keyfile": tls.key,
        "keyfile_password": tls.key_password,
        "verify_certs": True,
        "check_hostname": tls.check_hostname,
    }
