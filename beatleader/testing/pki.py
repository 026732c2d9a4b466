"""A throwaway PKI made with the ``openssl`` command: a CA, server and client certificates.

For tests and the README's example only: keys are unencrypted unless a password is given, and
nothing is ever revoked. Every file is PEM, which ZooKeeper 3.8 (``ssl.keyStore.type=PEM``) and
Python's ``ssl`` module both read, so no ``keytool`` is needed.

Guarantees: a :class:`CertificateAuthority` signs certificates with the subject and subject
alternative names asked for; two authorities made here never trust each other. Not guaranteed:
anything about strength beyond RSA 2048 / SHA-256 and ten years of validity.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PkiError(RuntimeError):
    """``openssl`` is missing or failed; the message carries its output."""


def openssl(*args: str, cwd: Path | None = None) -> None:
    """Run ``openssl args``; raise :class:`PkiError` with its stderr when it fails."""
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("openssl not found (Debian package openssl)")
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path
    #: The key password, when the key is encrypted.
    key_password: str | None = None

    def keystore(self, path: Path) -> Path:
        """Write key + certificate into one file (ZooKeeper's PEM keystore) and return it."""
        path.write_text(self.key.read_text() + self.cert.read_text())
        path.chmod(0o600)
        return path


class CertificateAuthority:
    """A self-signed CA in ``folder`` (``<name>-ca.pem``, ``<name>-ca.key``)."""

    def __init__(self, folder: Path, name: str = "test") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert = self.folder / f"{name}-ca.pem"
        self.key = self.folder / f"{name}-ca.key"
        if not self.cert.exists():
            openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
                "-subj", f"/CN=beatleader {name} CA",
                "-keyout", str(self.key), "-out", str(self.cert),
            )  # fmt: skip

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        alt_names: tuple[str, ...] = (),
        key_password: str | None = None,
    ) -> Issued:
        """A certificate for ``common_name`` (SANs like ``IP:127.0.0.1``, ``DNS:localhost``)."""
        key, csr, cert = (self.folder / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
        request = ["req", "-new", "-newkey", "rsa:2048", "-sha256", "-subj", f"/CN={common_name}"]
        if key_password is None:
            request.append("-nodes")
        else:
            request += ["-passout", f"pass:{key_password}"]
        if alt_names:
            request += ["-addext", "subjectAltName=" + ",".join(alt_names)]
        openssl(*request, "-keyout", str(key), "-out", str(csr))
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "3650", "-sha256", "-copy_extensions", "copy",
            "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
        csr.unlink()
        return Issued(cert, key, key_password)


@dataclass(frozen=True)
class TestPki:
    """Everything a TLS test needs: a CA, a server certificate, clients, and a stranger CA."""

    ca: CertificateAuthority
    server: Issued
    client: Issued
    #: A client certificate whose key is encrypted (password ``client-secret``).
    client_encrypted: Issued
    #: A server certificate for another name (``CN=zk.example.invalid``): hostname mismatch.
    wrong_name_server: Issued
    #: An unrelated CA and a client certificate it signed: trusted by nobody here.
    stranger_ca: CertificateAuthority
    stranger_client: Issued

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, folder: Path) -> TestPki:
        folder = Path(folder)
        ca = CertificateAuthority(folder, "test")
        stranger = CertificateAuthority(folder, "stranger")
        return cls(
            ca=ca,
            server=ca.issue("zookeeper", "127.0.0.1", alt_names=("IP:127.0.0.1", "DNS:localhost")),
            client=ca.issue("client", "beatleader-client"),
            client_encrypted=ca.issue(
                "client-encrypted", "beatleader-client", key_password="client-secret"
            ),
            wrong_name_server=ca.issue(
                "wrong-name", "zk.example.invalid", alt_names=("DNS:zk.example.invalid",)
            ),
            stranger_ca=stranger,
            stranger_client=stranger.issue("stranger-client", "stranger"),
        )
