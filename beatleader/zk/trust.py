"""Starting a ZooKeeper client and naming why it cannot work: credentials, TLS, ACLs.

:func:`start_client` (the CLI) and :func:`start_scheduler_client` (the scheduler) start a client
made by :func:`beatleader.zk.client.make_client` and watch its first connection attempts. What they
name, as one line in a :class:`ZooKeeperTrustError`:

* a TLS failure: a server certificate the configured CA did not sign, a hostname mismatch, a
  server that closes the handshake, a refused client certificate (recorded by the client's
  :class:`~beatleader.zk.client.Trouble`);
* a plaintext client talking to a TLS-only port (``zk_tls`` off): after a failed attempt, one TLS
  handshake is tried on each host (:meth:`TrustPolicy.probe_timeout`); a server that answers it
  speaks TLS;
* a SASL login that fails (kazoo then never reconnects);
* a wrong digest password: ZooKeeper accepts any digest password and refuses writes later, so the
  credential is compared with the digest ACL of the app's root znode, when that root grants the
  configured user (a root created by someone else is not ours to judge; :func:`acl_warnings`).

:func:`acl_warnings` reports a pre-existing tree (root, election, entries, schedules) whose ACL
lets anyone write while auth is configured: beatleader's ACLs only cover nodes it creates.

Not named: an outage (refused, timeout, a paused server) is not a configuration mistake; the
scheduler then waits as always and the CLI reports "unreachable". Later in life the client's
Trouble logs an ERROR per failed attempt; a server that turns TLS-only after the start is not
probed, and a digest password that stops matching later shows only as refused writes
(NoAuthError). The scheduler's open-ACL warning is given once, at a start that connected.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import Permissions, make_digest_acl_credential

from beatleader.config import ConfigError, Settings, setting_key
from beatleader.zk import layout
from beatleader.zk.client import make_client, trouble_of

logger = logging.getLogger("beatleader.trust")


class ZooKeeperTrustError(ConfigError):
    """ZooKeeper refused beatleader's credentials or TLS: a configuration mistake (one line)."""


class TrustPolicy:
    """Tunables of the start checks; subclass or patch to tune."""

    #: Seconds one TLS probe of a host may take (plaintext client, TLS-only server?).
    probe_timeout = 1.0
    #: Seconds the scheduler waits at start for a first connection or a named failure; an
    #: outage ends the wait at once (the scheduler then waits for ZooKeeper as always).
    scheduler_start_timeout = 10.0
    #: Seconds between two looks at the client's state while starting.
    poll_interval = 0.05


@dataclass(frozen=True)
class Outcome:
    """How a start went: connected, a named configuration failure, or neither (an outage)."""

    connected: bool
    cause: str | None = None


def start_client(client: KazooClient, settings: Settings, timeout: float) -> None:
    """Start ``client``; raise :class:`ZooKeeperTrustError` naming a configuration failure, or
    ``KazooTimeoutError`` when ZooKeeper stays unreachable for ``timeout`` seconds."""
    outcome = first_outcome(client, settings, timeout, give_up_on_outage=False)
    if outcome.cause is not None:
        raise ZooKeeperTrustError(outcome.cause)
    if not outcome.connected:
        raise KazooTimeoutError(f"not connected within {timeout:g} s")


def make_scheduler_client(settings: Settings) -> KazooClient:
    """:func:`make_client` for the scheduler: SystemExit with one line on unusable TLS files or
    missing SASL support, instead of a traceback."""
    try:
        return make_client(settings)
    except ConfigError as exc:
        raise SystemExit(f"beatleader: {exc}") from None


def start_scheduler_client(client: KazooClient, settings: Settings) -> None:
    """Start the scheduler's client; SystemExit with one line on a configuration failure.

    An outage returns at once (the election waits for ZooKeeper). Once connected, a pre-existing
    open tree is logged as a WARNING, once.
    """
    outcome = first_outcome(
        client, settings, TrustPolicy.scheduler_start_timeout, give_up_on_outage=True
    )
    if outcome.cause is not None:
        client.stop()
        client.close()
        raise SystemExit(f"beatleader: {outcome.cause}")
    if outcome.connected:
        try:
            for warning in acl_warnings(client, settings.path, settings):
                logger.warning("beatleader: %s", warning)
        except (KazooException, KazooTimeoutError) as exc:
            logger.info("beatleader: ACL check skipped (%r)", exc)


def first_outcome(
    client: KazooClient, settings: Settings, timeout: float, *, give_up_on_outage: bool
) -> Outcome:
    """Start ``client`` and wait for a connection, a named failure or ``timeout``."""
    trouble = trouble_of(client)
    if trouble is not None:
        trouble.starting = True  # the caller reports the cause, once
    try:
        client.start_async()
        return _watch_start(client, settings, timeout, give_up_on_outage)
    finally:
        if trouble is not None:
            trouble.starting = False


def _watch_start(
    client: KazooClient, settings: Settings, timeout: float, give_up_on_outage: bool
) -> Outcome:
    trouble = trouble_of(client)
    deadline = time.monotonic() + timeout
    probed = False
    while True:
        if trouble is not None and trouble.named:
            return Outcome(False, trouble.named)
        if client.connected:
            cause = verify_session(client, settings)
            return Outcome(cause is None, cause)
        if trouble is not None and trouble.cause and not trouble.config_error and not probed:
            probed = True
            cause = probe_tls_only(settings) if settings.zk_tls is None else None
            if cause is not None or give_up_on_outage:
                return Outcome(False, cause)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome(False)
        if trouble is not None:
            trouble.changed.wait(min(remaining, TrustPolicy.poll_interval))
            trouble.changed.clear()
        else:
            time.sleep(min(remaining, TrustPolicy.poll_interval))


def verify_session(client: KazooClient, settings: Settings) -> str | None:
    """After CONNECTED: the SASL login's verdict (a first request), then the digest self-check."""
    trouble = trouble_of(client)
    try:
        client.exists("/")  # sent after the SASL exchange: fails when the login failed
        return digest_mismatch(client, settings)
    except (KazooException, KazooTimeoutError):
        return trouble.named if trouble is not None else None


def digest_mismatch(client: KazooClient, settings: Settings) -> str | None:
    """A line when the root's digest ACL names our user but not our password.

    ZooKeeper shows digest hashes only to a client with ADMIN permission (others see
    ``user:x``), so a wrong password shows as a foreign or hidden hash; a root whose ACL we may
    not even read while authenticated is named too.
    """
    auth = settings.zk_auth
    if auth is None or auth.scheme != "digest" or client.exists(settings.path) is None:
        return None
    wrong = (
        f"digest password of {auth.user!r} in {setting_key('zk_auth')} does not match the ACL "
        f"of {settings.path} (ZooKeeper accepts any digest password, then refuses every write)"
    )
    try:
        acls, _stat = client.get_acls(settings.path)
    except NoAuthError:
        return wrong + "; or the node belongs to another identity"
    ours = make_digest_acl_credential(auth.user, auth.password)
    granted = [a.id.id for a in acls if a.id.scheme == "digest"]
    if ours in granted or not any(g.split(":", 1)[0] == auth.user for g in granted):
        return None
    return wrong


def probe_tls_only(settings: Settings) -> str | None:
    """A line when a host of ``zk_hosts`` answers a TLS handshake (plaintext client, TLS port)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asks "does it speak TLS?"; nothing is sent
    for host, port in _host_ports(settings.zk_hosts):
        try:
            raw = socket.create_connection((host, port), timeout=TrustPolicy.probe_timeout)
        except OSError:
            continue
        try:
            with context.wrap_socket(raw, server_hostname=host):
                speaks_tls = True
        except ssl.SSLError as exc:  # an alert is TLS too; EOF / wrong version is not
            speaks_tls = not isinstance(exc, ssl.SSLEOFError) and "WRONG_VERSION" not in str(exc)
        except OSError:
            speaks_tls = False
        finally:
            raw.close()
        if speaks_tls:
            return (
                f"ZooKeeper at {host}:{port} speaks TLS only: set {setting_key('zk_tls')}=true "
                f"with {setting_key('zk_tls_ca')}, {setting_key('zk_tls_cert')} and "
                f"{setting_key('zk_tls_key')}"
            )
    return None


def _host_ports(hosts: str) -> list[tuple[str, int]]:
    result = []
    for item in hosts.partition("/")[0].split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "2181"
        else:
            host, _, port = item.partition(":")
        result.append((host, int(port or 2181)))
    return result


_OPEN_WRITE = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN


def acl_warnings(client: KazooClient, root: str, settings: Settings) -> list[str]:
    """One line per existing node of the tree that anyone may change although auth is set."""
    if settings.zk_auth is None:
        return []
    warnings = []
    tree = (layout.election_path(root), layout.entries_path(root), f"{root}/{layout.SCHEDULES}")
    for path in (root, *tree):
        if client.exists(path) is None:
            continue
        acls, _stat = client.get_acls(path)
        open_perms = [
            a.perms
            for a in acls
            if a.id.scheme == "world" and a.id.id == "anyone" and a.perms & _OPEN_WRITE
        ]
        if open_perms:
            warnings.append(
                f"{path} lets anyone write (ACL world:anyone perms={open_perms[0]}) although "
                f"{setting_key('zk_auth')} is set: it was created without auth; restrict it "
                "with setAcl or delete the tree"
            )
    return warnings
