"""``beatleader web``: serve the dashboard (also ``celery -A proj beatleader web``).

Takes the connection flags of ``status`` (``--zk-hosts``, ``--path``, ``-A``, ``--zk-auth*``,
``--zk-tls*``), plus ``--address`` (default loopback) and ``--port``. Read-only unless
``--allow-write`` *and* a credential: ``--token-file``, ``--token`` (or ``beatleader_web_token``)
or ``--basic-auth-file`` (docs/web.md).

Guarantees: bad input (an option, a credential file, ``--allow-write`` without a credential, an
address that cannot be bound, bad settings or credentials ZooKeeper refuses) exits 2 with one line
``beatleader: ...`` before anything is served; ZooKeeper unreachable at start is not an error: the
dashboard serves a banner and reconnects. Once serving it prints one line with its URL to stdout;
SIGTERM and Ctrl-C stop it (exit 0).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from beatleader.cli.connect import (
    ZK_ERRORS,
    CliError,
    _quiet_kazoo_logging,
    connection_options,
    one_line,
    resolve_target,
)
from beatleader.config import ConfigError
from beatleader.web.access import Access, AccessError, read_token, read_users
from beatleader.web.app import Dashboard
from beatleader.web.server import make_server
from beatleader.zk.client import make_client
from beatleader.zk.trust import first_outcome

#: The port ``beatleader web`` listens on when none is given.
DEFAULT_PORT = 8642


@click.command("web")
@connection_options
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--allow-write", is_flag=True, help="Offer pause, resume and run now (needs a credential)."
)
@click.option("--token-file", help="A file holding the token that authorises writes.")
@click.option(
    "--token",
    help="The token that authorises writes (shown in the process list: prefer --token-file).",
)
@click.option("--basic-auth-file", help="A file of 'user:password' lines allowed to write.")
@click.pass_context
def web_command(
    ctx: click.Context,
    /,
    address: str,
    port: int,
    allow_write: bool,
    token_file: str | None,
    token: str | None,
    basic_auth_file: str | None,
    **options: Any,
) -> None:
    """Serve the web dashboard: leader, contenders, entries and their runs; optional actions.

    It listens on loopback unless --address says otherwise, and is read-only unless
    --allow-write and a credential are given. Stop it with Ctrl-C or SIGTERM.
    """
    target = resolve_target(ctx, **options)
    access = _access(allow_write, token_file, token or target.settings.web_token, basic_auth_file)
    _quiet_kazoo_logging()
    try:
        client = make_client(
            target.settings,
            connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(
            f"bad ZooKeeper hosts {target.settings.zk_hosts!r}: {one_line(exc)}"
        ) from None
    try:
        outcome = first_outcome(client, target.settings, target.timeout, give_up_on_outage=True)
        if outcome.cause is not None:
            raise CliError(outcome.cause)
        dashboard = Dashboard(target.settings, target.app, access, client)
        try:
            server = make_server(dashboard, address, port)
        except (OSError, OverflowError) as exc:
            raise CliError(f"cannot listen on {address}:{port}: {one_line(exc)}") from None
        mode = "read-write" if access.writable else "read-only"
        host = f"[{address}]" if ":" in address else address
        click.echo(f"beatleader web: serving http://{host}:{server.server_port}/ ({mode})")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, _stop)
        try:
            server.serve_forever()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            server.server_close()
    except ZK_ERRORS as exc:
        raise CliError(f"ZooKeeper error at {target.settings.zk_hosts}: {one_line(exc)}") from None
    finally:
        client.stop()
        client.close()


def _stop(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _access(
    allow_write: bool, token_file: str | None, token: str | None, basic_auth_file: str | None
) -> Access:
    try:
        found = read_token(token_file) if token_file else token
        users = read_users(basic_auth_file) if basic_auth_file else {}
    except AccessError as exc:
        raise CliError(str(exc)) from None
    if found is not None and len(found) < 8:
        raise CliError("--token (or beatleader_web_token): expected at least 8 characters")
    access = Access(allow_write=allow_write, token=found, users=users)
    if allow_write and not access.has_credential:
        raise CliError(
            "--allow-write needs a credential: --token-file, --token, --basic-auth-file "
            "or the beatleader_web_token setting"
        )
    return access
