"""A throwaway ZooKeeper with security turned on: TLS-only, a superuser, SASL DIGEST-MD5.

Built on :class:`beatleader.testing.localzk.ZooKeeperServer` (same lifecycle, same logs), for the
security tests and the README's "Securing ZooKeeper" example; **not for production**.

What it adds (checked facts: ``shared/ZK-SECURITY.md``):

* **TLS-only** (``tls=``): the Netty connection factory, a ``secureClientPort`` and no plaintext
  port; PEM keystore (key + certificate) and truststore (the CA); ``ssl.clientAuth`` as asked.
  Debian's zookeeper.jar omits ``netty-codec.jar`` from its classpath (every handshake then fails
  with NoClassDefFoundError), so it is added here.
* **Superuser** (``super_password=``): ``DigestAuthenticationProvider.superDigest`` for user
  ``super``.
* **SASL DIGEST-MD5** (``sasl_users=``): a JAAS file with the given users and the SASL
  authentication provider.

Readiness over TLS: :meth:`four_letter` speaks through an ``ssl`` socket that presents the
client certificate given as ``probe=`` (required when ``ssl.clientAuth=need``), so
``wait_serving``, ``mode`` and ``connections`` work unchanged. Not guaranteed: ensembles (quorum
TLS is not set up here).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazoo.security import make_digest_acl_credential

from beatleader.testing.localzk import JAVA_LIB, ZooKeeperServer
from beatleader.testing.pki import Issued

#: The Netty jar Debian's zookeeper.jar manifest forgets; TLS needs it.
NETTY_CODEC_JAR = "netty-codec.jar"
NETTY_FACTORY = "org.apache.zookeeper.server.NettyServerCnxnFactory"
SASL_PROVIDER = "org.apache.zookeeper.server.auth.SASLAuthenticationProvider"


@dataclass(frozen=True)
class ServerTls:
    """The server side of TLS: its certificate, the CA it trusts for clients, client auth."""

    server: Issued
    ca: Path
    #: ``need``: every client presents a certificate the CA signed; ``want``; ``none``.
    client_auth: str = "need"
    #: A client certificate :meth:`SecureZooKeeperServer.four_letter` presents.
    probe: Issued | None = None


def tls_config(keystore: Path, truststore: Path, client_auth: str, port: int) -> dict[str, Any]:
    """The zoo.cfg lines of a TLS-only server (the README shows the same lines)."""
    return {
        "serverCnxnFactory": NETTY_FACTORY,
        "secureClientPortAddress": "127.0.0.1",
        "secureClientPort": port,
        "ssl.keyStore.location": str(keystore),
        "ssl.keyStore.type": "PEM",
        "ssl.trustStore.location": str(truststore),
        "ssl.trustStore.type": "PEM",
        "ssl.clientAuth": client_auth,
    }


def jaas_server_section(users: Mapping[str, str]) -> str:
    """A JAAS ``Server`` section granting SASL DIGEST-MD5 to ``users`` (name -> password)."""
    lines = [f'    user_{name}="{password}"' for name, password in users.items()]
    return (
        "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n"
        + "\n".join(lines)
        + ";\n};\n"
    )


class SecureZooKeeperServer(ZooKeeperServer):
    """A standalone ZooKeeper with TLS, a superuser and/or SASL; see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        tls: ServerTls | None = None,
        super_password: str | None = None,
        sasl_users: Mapping[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.tls = tls
        self.super_password = super_password
        self.sasl_users = dict(sasl_users or {})
        super().__init__(base_dir, port, extra_config=extra_config)

    @property
    def jaas_path(self) -> Path:
        return self.base_dir / "jaas.conf"

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.tls is not None:
            del cfg["clientPort"], cfg["clientPortAddress"]
            keystore = self.tls.server.keystore(self.base_dir / "keystore.pem")
            cfg.update(tls_config(keystore, self.tls.ca, self.tls.client_auth, self.port))
        if self.super_password is not None:
            credential = make_digest_acl_credential("super", self.super_password)
            cfg["DigestAuthenticationProvider.superDigest"] = credential
        if self.sasl_users:
            cfg["authProvider.sasl"] = SASL_PROVIDER
        cfg.update(self.extra_config)
        return cfg

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        super()._write_config()
        if self.sasl_users:
            self.jaas_path.write_text(jaas_server_section(self.sasl_users))

    def command(self) -> list[str]:
        command = super().command()
        classpath = command.index("-cp") + 1
        netty = JAVA_LIB / NETTY_CODEC_JAR
        if netty.exists():
            command[classpath] += f":{netty}"
        if self.sasl_users:
            command.insert(1, f"-Djava.security.auth.login.config={self.jaas_path}")
        return command

    def client_context(self) -> ssl.SSLContext | None:
        """An ``ssl`` context that trusts the test CA and presents the probe certificate."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.check_hostname = False  # a readiness probe; the tests check names themselves
        if self.tls.probe is not None:
            context.load_cert_chain(
                str(self.tls.probe.cert), str(self.tls.probe.key), self.tls.probe.key_password
            )
        return context

    def four_letter_socket(self, timeout: float) -> socket.socket:
        """Like :meth:`ZooKeeperServer.four_letter_socket`, through TLS when TLS-only."""
        raw = super().four_letter_socket(timeout)
        context = self.client_context()
        if context is None:
            return raw
        try:
            return context.wrap_socket(raw, server_hostname="127.0.0.1")
        except (ssl.SSLError, OSError):
            raw.close()
            raise
