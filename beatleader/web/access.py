"""Who may change entries from the dashboard: the credential, the session cookie, the CSRF token.

Writes are off unless the dashboard was made with ``allow_write=True`` *and* a credential: a
token (``beatleader_web_token``, ``--token-file``) or a file of HTTP basic users
(``--basic-auth-file``, lines ``user:password``). A request is authenticated by, in order:

* ``Authorization: Bearer <token>``;
* ``Authorization: Basic`` of a user of the file with its password (or any user name with the
  token as password);
* the session cookie the login form sets (``POST /login``): ``<principal>.<expiry>.<mac>``, an
  HMAC-SHA256 under a key drawn when the dashboard starts (a restart logs everyone out).

Guarantees:

* Every comparison of a secret is constant-time (:func:`hmac.compare_digest`).
* The CSRF token of a principal is an HMAC of its name under the same key: a page renders it in
  every form, and :meth:`Access.check_csrf` refuses a POST without it; the login form's token is
  the one of the anonymous principal.
* :func:`read_users` and :func:`read_token` raise :class:`AccessError` with one line naming the
  file and the line for a file that cannot be used; nothing is half-read.
* The session cookie is ``HttpOnly``, ``SameSite=Strict`` and ``Path`` scoped to the dashboard.

Not guaranteed: TLS. The dashboard serves plain HTTP (loopback by default); put it behind a TLS
proxy before you send a credential over a network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ANONYMOUS", "Access", "AccessError", "read_token", "read_users"]

#: The principal of a request without a credential (its CSRF token protects the login form).
ANONYMOUS = ""
#: The principal named for a request authenticated by the token.
TOKEN_PRINCIPAL = "token"
#: Name of the session cookie.
COOKIE = "beatleader_session"


class AccessError(ValueError):
    """A credential setting or file cannot be used; the message is one line."""


class AccessPolicy:
    """Tunables of the access checks."""

    #: Seconds a login session lasts.
    session_seconds = 12 * 3600.0
    #: Longest credential file read.
    max_file_bytes = 64 * 1024


@dataclass(frozen=True)
class Access:
    """The dashboard's write permission and credentials."""

    allow_write: bool = False
    token: str | None = field(default=None, repr=False)
    #: Basic-auth user -> password.
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def has_credential(self) -> bool:
        return bool(self.token) or bool(self.users)

    @property
    def writable(self) -> bool:
        """Writes are possible: allowed, and some credential exists to authorise them."""
        return self.allow_write and self.has_credential

    def principal(self, authorization: str | None, cookie: str | None) -> str | None:
        """The authenticated principal of a request, or None."""
        found = self._from_header(authorization or "")
        if found is not None:
            return found
        return self._from_cookie(cookie or "")

    def _from_header(self, header: str) -> str | None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return TOKEN_PRINCIPAL if self._is_token(value) else None
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, sep, password = decoded.partition(":")
            return self.login(user, password) if sep else None
        return None

    def _is_token(self, value: str) -> bool:
        return bool(self.token) and hmac.compare_digest(value.encode(), str(self.token).encode())

    def login(self, user: str, password: str) -> str | None:
        """The principal of a user name and password (or of the token), or None."""
        known = self.users.get(user)
        if known is not None and hmac.compare_digest(password.encode(), known.encode()):
            return user
        if self._is_token(password):
            return user if user and user.isprintable() and len(user) <= 64 else TOKEN_PRINCIPAL
        return None

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def session_cookie(self, principal: str, now: float | None = None) -> str:
        """The cookie value of a session of ``principal``."""
        expiry = int((now or time.time()) + AccessPolicy.session_seconds)
        name = base64.urlsafe_b64encode(principal.encode()).decode().rstrip("=")
        body = f"{name}.{expiry}"
        return f"{body}.{self._mac('session:' + body)}"

    def _from_cookie(self, header: str) -> str | None:
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == COOKIE and value:
                return self._session(value)
        return None

    def _session(self, value: str) -> str | None:
        body, _, mac = value.rpartition(".")
        name, _, expiry = body.partition(".")
        if not hmac.compare_digest(mac, self._mac("session:" + body)):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        try:
            return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def csrf_token(self, principal: str | None) -> str:
        return self._mac("csrf:" + (principal or ANONYMOUS))

    def check_csrf(self, principal: str | None, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(principal))


def _read_file(path: str, what: str) -> str:
    try:
        data = Path(path).read_bytes()[: AccessPolicy.max_file_bytes + 1]
    except OSError as exc:
        raise AccessError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > AccessPolicy.max_file_bytes:
        raise AccessError(f"{what} {path}: larger than {AccessPolicy.max_file_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AccessError(f"{what} {path}: not UTF-8 text") from None


def read_token(path: str) -> str:
    """The token held by file ``path`` (its first line, stripped)."""
    lines = _read_file(path, "--token-file").strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 8 or not token.isprintable():
        raise AccessError(f"--token-file {path}: expected one line of at least 8 characters")
    return token


def read_users(path: str) -> dict[str, str]:
    """The ``user:password`` lines of file ``path`` (blank lines and ``#`` comments skipped)."""
    users: dict[str, str] = {}
    for number, raw in enumerate(_read_file(path, "--basic-auth-file").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password or not user.isprintable():
            raise AccessError(f"--basic-auth-file {path} line {number}: expected 'user:password'")
        users[user] = password
    if not users:
        raise AccessError(f"--basic-auth-file {path}: no 'user:password' line")
    return users
