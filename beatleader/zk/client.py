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
* **Handshake**: a connect request that gets no answer is given up after
  :meth:`ClientPolicy.handshake_timeout` (a third of the session timeout, at most 2 s) and the
  next attempt follows, instead of waiting the whole session timeout (kazoo divides it by the
  number of hosts only): a single server that restarts opens its port before it answers, and a
  client that waited there its whole timeout lost its session and a needless re-election.
* **Logging**: kazoo logs under ``beatleader.kazoo``, quiet by default (:mod:`beatleader.zk.log`).
* **SASL**: kazoo never reconnects after a failed SASL login; the client is started again
  every :attr:`ClientPolicy.auth_retry_delay` seconds (each failure logged at ERROR).
* **Named failures** (:class:`Trouble`, read with :func:`trouble_of`): every failed connection
  attempt is recorded with its cause; a cause that is a configuration mistake (a TLS certificate
  the configured CA did not sign, a hostname mismatch, a server that closes the TLS handshake, a
  refused client certificate, a failed SASL login) is also logged at ERROR on ``beatleader.kazoo``
  on every attempt. The TLS context is beatleader's own: with ``zk_tls_ca`` set, only that CA is
  trusted (kazoo itself always adds the system CA bundle). :mod:`beatleader.zk.trust` uses the
  record.

Not decided here: what happens when the connection fails (the election and the scheduler retry
forever, the CLI gives up after ``--timeout``).
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import ssl
import threading
from collections.abc import MutableMapping
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.serialization import Connect
from kazoo.retry import KazooRetry
from kazoo.security import ACL, make_acl, make_digest_acl

from beatleader.config import ConfigError, Settings, TlsSettings, ZkAuth, setting_key
from beatleader.zk.log import KAZOO_LOGGER, kazoo_logger, log_state


class ClientPolicy:
    """Retry and pacing of every beatleader ZooKeeper client; subclass or patch to tune."""

    #: The pause between reconnect rounds grows to at most this fraction of the session timeout.
    reconnect_fraction = 0.25
    #: ... and never beyond this many seconds (bounds the idle time after ZooKeeper returns).
    reconnect_max_delay = 2.0
    #: First pause between reconnect rounds, seconds.
    reconnect_first_delay = 0.05
    #: Seconds before a client whose SASL login failed tries again (kazoo itself never does).
    auth_retry_delay = 2.0

    #: Longest wait for the answer to a connect request, as a fraction of the session timeout...
    handshake_fraction = 1 / 3
    #: ... and in seconds.
    handshake_max = 2.0

    @classmethod
    def handshake_timeout(cls, session_timeout: float) -> float:
        """Seconds a connect request may wait for its answer before the next attempt."""
        return min(session_timeout * cls.handshake_fraction, cls.handshake_max)

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
    trouble = Trouble(settings)
    context = tls_context(settings.zk_tls) if settings.zk_tls is not None else None
    kwargs: dict[str, Any] = {
        "hosts": settings.zk_hosts,
        "timeout": session_timeout,
        "connection_retry": connection_retry or ClientPolicy.connection_retry(session_timeout),
        "logger": _KazooLog(kazoo_logger(), trouble),
        "handler": _TlsHandler(context, trouble),
        "default_acl": acl_for(settings),
        "read_only": read_only_ok or None,
    }
    kwargs.update(_auth_arguments(settings.zk_auth))
    if context is not None:
        kwargs["use_ssl"] = True
    client = KazooClient(**kwargs)
    _bound_handshake(client, ClientPolicy.handshake_timeout(session_timeout))
    client.beatleader_trouble = trouble
    trouble.client = client
    client.add_listener(trouble.state_changed)
    client.add_listener(log_state)
    return client


class _BoundedHandshake(ConnectionHandler):  # type: ignore[misc]
    """kazoo's connection, but a connect request waits at most ``handshake_timeout`` seconds."""

    handshake_timeout: float

    def _invoke(self, timeout: float, request: Any, xid: int | None = None) -> Any:
        if isinstance(request, Connect):
            timeout = min(timeout, self.handshake_timeout)
        return super()._invoke(timeout, request, xid)


def _bound_handshake(client: KazooClient, seconds: float) -> None:
    """Make ``client``'s connection a :class:`_BoundedHandshake` (kazoo 2.x's ``_connection``;
    left as kazoo made it if that attribute is not a ``ConnectionHandler``)."""
    connection: Any = getattr(client, "_connection", None)
    if type(connection) is ConnectionHandler:
        connection.__class__ = _BoundedHandshake
        connection.handshake_timeout = seconds


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
    if importlib.util.find_spec("puresasl") is None:
        raise ConfigError(
            f"{setting_key('zk_auth')} = 'sasl:{auth.user}:...' needs the pure-sasl package: "
            "pip install 'beatleader[sasl]'"
        )
    return {
        "sasl_options": {
            "mechanism": "DIGEST-MD5",
            "username": auth.user,
            "password": auth.password,
        }
    }


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client TLS context: only ``zk_tls_ca`` if set (else the system CAs); ConfigError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if tls.ca is not None:
            context.load_verify_locations(cafile=tls.ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{setting_key('zk_tls_ca')} = {tls.ca!r}: not a PEM CA certificate ({exc})"
        ) from None
    if tls.cert is None and tls.key is None:
        return context
    if tls.cert is None:
        raise ConfigError(
            f"{setting_key('zk_tls_key')} is set without {setting_key('zk_tls_cert')}"
        )
    try:
        context.load_cert_chain(tls.cert, tls.key, tls.key_password)
    except (ssl.SSLError, OSError) as exc:  # never the password in the message
        raise ConfigError(
            f"{setting_key('zk_tls_cert')} = {tls.cert!r} / {setting_key('zk_tls_key')} = "
            f"{tls.key!r}: cannot load the client certificate and key (wrong "
            f"{setting_key('zk_tls_key_password')}, or a key that does not match?): {_reason(exc)}"
        ) from None
    return context


class Trouble:
    """The latest connection failure of one client, and whether it is a configuration mistake."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: One line naming the latest failure; None when the latest attempt connected.
        self.cause: str | None = None
        #: True when :attr:`cause` is a configuration mistake (credentials, TLS), not an outage.
        self.config_error = False
        #: Set on every recorded outcome (a failure or a connection).
        self.changed = threading.Event()
        #: True while a start check watches the attempts (it reports the cause itself).
        self.starting = False
        #: How many attempts in a row failed with :attr:`cause`.
        self.repeats = 0
        self._certain = False
        self._tls_cause: tuple[str, bool] | None = None
        #: The client this record belongs to (restarted after a failed SASL login).
        self.client: KazooClient | None = None

    def record(self, cause: str | None, config_error: bool = False, certain: bool = True) -> None:
        """One attempt's outcome; ``certain=False``: a mistake only when it happens again."""
        self.repeats = self.repeats + 1 if cause is not None and cause == self.cause else 1
        self.cause, self.config_error, self._certain = cause, config_error, certain
        if cause is not None and config_error and not self.starting:
            logging.getLogger(KAZOO_LOGGER).error("beatleader: %s", cause)
        self.changed.set()

    @property
    def named(self) -> str | None:
        """The cause when it is surely a configuration mistake (a one-off reset is not)."""
        if self.cause is None or not self.config_error:
            return None
        return self.cause if self._certain or self.repeats >= 2 else None

    def state_changed(self, state: str) -> None:
        """A kazoo connection listener: a connection clears the cause."""
        if state == KazooState.CONNECTED:
            self.record(None)

    def tls_failed(self, cause: str, config_error: bool, certain: bool) -> None:
        """Called by the handler; kazoo's "Connection dropped" warning then records it."""
        self._tls_cause = (cause, certain) if config_error else None
        if not config_error:
            self.record(cause)

    def kazoo_warning(self, text: str) -> None:
        """Classify one kazoo WARNING line of the connection loop."""
        if text.startswith("AUTH_FAILED"):
            auth = self.settings.zk_auth
            user = auth.user if auth is not None else "?"
            self.record(
                f"SASL authentication as {user!r} failed at {self.settings.zk_hosts}: wrong user "
                f"or password in {setting_key('zk_auth')}, or no SASL provider on the server",
                True,
            )
            if not self.starting:
                self._restart_later()
        elif text.startswith(("Connection dropped", "Connection time-out")):
            tls_cause, self._tls_cause = self._tls_cause, None
            if tls_cause is not None:
                self.record(tls_cause[0], True, tls_cause[1])
            elif self.settings.zk_tls is not None and "alert" in text.lower():
                self.record(
                    f"ZooKeeper at {self.settings.zk_hosts} refused the TLS client certificate "
                    f"({setting_key('zk_tls_cert')}): {text.split(': ', 1)[-1]}",
                    True,
                )
            else:
                self.record(text)

    def _restart_later(self) -> None:
        """kazoo stops for good after a failed SASL login: start it again after a pause."""
        timer = threading.Timer(ClientPolicy.auth_retry_delay, self._restart)
        timer.daemon = True
        timer.start()

    def _restart(self) -> None:
        client = self.client
        if client is None or client._stopped.is_set() or client.connected:
            return  # stopped by its owner meanwhile, or already back
        try:
            client.start_async()
        except Exception:  # this timer thread must not die silently
            logging.getLogger(KAZOO_LOGGER).exception("beatleader: restarting the client failed")


def trouble_of(client: KazooClient) -> Trouble | None:
    """The :class:`Trouble` record of a client :func:`make_client` made (None for others)."""
    trouble = getattr(client, "beatleader_trouble", None)
    return trouble if isinstance(trouble, Trouble) else None


class _KazooLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's logger: forwards everything, and shows connection warnings to a Trouble."""

    def __init__(self, logger: logging.Logger, trouble: Trouble) -> None:
        super().__init__(logger, {})
        self.trouble = trouble

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level == logging.WARNING:
            try:
                self.trouble.kazoo_warning(str(msg) % args if args else str(msg))
            except Exception:  # a record must never break kazoo's connection loop
                self.logger.debug("cannot classify %r", msg, exc_info=True)
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


class _TlsHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, with beatleader's TLS context and named handshake failures."""

    def __init__(self, context: ssl.SSLContext | None, trouble: Trouble) -> None:
        super().__init__()
        self.context = context
        self.trouble = trouble

    def create_connection(
        self, address: Any, hostname: Any = None, timeout: Any = None, **kwargs: Any
    ) -> Any:
        if self.context is None or not kwargs.get("use_ssl"):
            return super().create_connection(address, hostname=hostname, timeout=timeout, **kwargs)
        raw = socket.create_connection(address, timeout)  # refused/unreachable: an outage
        try:
            sock = self.context.wrap_socket(raw, server_hostname=hostname)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            failure = describe_tls_failure(exc, hostname, address, self.trouble.settings)
            self.trouble.tls_failed(*failure)
            cause = failure[0]
            raise OSError(cause) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def describe_tls_failure(
    exc: BaseException, hostname: Any, address: Any, settings: Settings
) -> tuple[str, bool, bool]:
    """(one line naming why a TLS handshake failed, is it a configuration mistake, surely?).

    A handshake the server closes is a mistake only when it happens again: one reset can be a
    server going down.
    """
    where = f"ZooKeeper at {hostname or address[0]}:{address[1]}"
    tls = settings.zk_tls
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (62, 64) or "mismatch" in str(exc):  # host / IP mismatch
            return (
                f"TLS: the certificate of {where} is not valid for the name {hostname!r} "
                f"({setting_key('zk_tls_check_hostname')} is on): {_reason(exc)}",
                True,
                True,
            )
        ca = tls.ca if tls is not None else None
        trusted = f"{setting_key('zk_tls_ca')} = {ca!r}" if ca else "the system CA bundle"
        return (
            f"TLS: the certificate of {where} is not signed by a CA in {trusted}: {_reason(exc)}",
            True,
            True,
        )
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError, ssl.SSLZeroReturnError)) or (
        isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc).upper()
    ):
        return (
            f"{where} closed the TLS handshake: it does not speak TLS on this port, or it "
            f"refused the client certificate ({setting_key('zk_tls')} is on): {_reason(exc)}",
            True,
            False,
        )
    reason = _reason(exc)
    if isinstance(exc, ssl.SSLError) and "ALERT" in reason.upper() and "CERT" in reason.upper():
        cert = tls.cert if tls is not None else None
        return (
            f"{where} refused the TLS client certificate "
            f"({setting_key('zk_tls_cert')} = {cert!r}): {reason}",
            True,
            True,
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {reason}", True, True
    return f"TLS handshake with {where} did not complete: {_reason(exc)}", False, False


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    text = " ".join(str(reason or exc).split())
    return text or type(exc).__name__
