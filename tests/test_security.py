"""Authentication, ACLs and TLS on real ZooKeeper servers, with real beats and the real CLI.

Servers: the run's shared plaintext ZooKeeper (digest ACLs), and this module's TLS-only server
(client certificates required, SASL DIGEST-MD5 users) made from a throwaway PKI; a second TLS
server whose certificate names another host is started only for the hostname test.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import make_acl, make_digest_acl

from beatleader import EmbeddedBeat
from beatleader.config import ConfigError, Settings, TlsSettings
from beatleader.testing.pki import TestPki
from beatleader.testing.securezk import SecureZooKeeperServer, ServerTls
from beatleader.zk import layout
from beatleader.zk.client import Trouble, make_client, tls_context
from tests.cluster import ENTRY, every, schedule_env
from tests.harness import FilesystemBroker, connected_client, leader, wait_for
from tests.security import (
    APP_PASSWORD,
    AUTH,
    CLI_TIMEOUT,
    SASL_AUTH,
    as_env,
    as_flags,
    assert_beat_stops_with_one_line,
    assert_named_failure,
    cli,
    kinds_of_nodes,
    tls_settings,
    tree,
)

SUPER_PASSWORD = "super-Secret-2"

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_zk(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPki
) -> Iterator[SecureZooKeeperServer]:
    """TLS only, client certificates required, SASL user ``app``."""
    tls = ServerTls(pki.server, pki.ca.cert, client_auth="need", probe=pki.client)
    server = SecureZooKeeperServer(
        tmp_path_factory.mktemp("tls-zk"),
        tls=tls,
        sasl_users={"app": APP_PASSWORD},
        super_password=SUPER_PASSWORD,
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def wrong_name_zk(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPki
) -> Iterator[SecureZooKeeperServer]:
    """TLS only, with a certificate (signed by the right CA) for zk.example.invalid."""
    tls = ServerTls(pki.wrong_name_server, pki.ca.cert, probe=pki.client)
    with SecureZooKeeperServer(tmp_path_factory.mktemp("wrong-name-zk"), tls=tls) as server:
        yield server


@pytest.fixture
def secure_root() -> str:
    """A root whose parent beatleader creates too (so deleting the root is ours to refuse)."""
    return f"/bltest-secure/{uuid.uuid4().hex}/app"


# --- digest ACLs --------------------------------------------------------------------------------


def test_digest_acl_on_every_node_and_strangers_cannot_change_anything(
    beats, zk_server, secure_root, broker_dir
) -> None:
    env = {**schedule_env(**{ENTRY: every(1)}), "BEATLEADER_PATH": secure_root}
    beats(env={**env, **as_env({"zk_auth": AUTH})})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 1, 30, message="nothing sent")

    owner = make_digest_acl("app", APP_PASSWORD, all=True)
    expected = [owner, make_acl("world", "anyone", read=True)]
    with connected_client(zk_server.hosts, zk_auth=AUTH) as client:
        nodes = tree(client, secure_root.rsplit("/", 1)[0])
        assert len(nodes) >= 8
        for node in nodes:
            assert client.get_acls(node)[0] == expected, node
        kinds = kinds_of_nodes(client, secure_root)

    with connected_client(zk_server.hosts) as stranger:
        for kind, path in kinds.items():
            stranger.get(path)  # world readable
            for attempt in (
                lambda p=path: stranger.set(p, b"hostile"),
                lambda p=path: stranger.delete(p),
                lambda p=path: stranger.create(f"{p}/intruder", b"x"),
                lambda p=path: stranger.set_acls(p, [make_acl("world", "anyone", all=True)]),
            ):
                with pytest.raises(NoAuthError):
                    attempt()
                    pytest.fail(f"an unauthenticated client changed the {kind} node {path}")

    done, _ = cli(zk_server.hosts, secure_root, "status", "--check")  # no credentials: reads
    assert (done.returncode, done.stderr) == (0, "")
    done, elapsed = cli(zk_server.hosts, secure_root, "resign")  # a write: refused
    assert_named_failure(done, elapsed, "NoAuthError", "--zk-auth")
    done, _ = cli(zk_server.hosts, secure_root, "resign", "--zk-auth", AUTH)
    assert done.returncode == 0, done.stderr
    assert broker.duplicates() == []


def test_not_world_readable_hides_everything_from_strangers(
    beats, zk_server, secure_root, tmp_path
) -> None:
    env = {"BEATLEADER_PATH": secure_root, "BEATLEADER_ZK_WORLD_READABLE": "false"}
    beat = beats(env={**env, **as_env({"zk_auth": AUTH})})
    beat.wait_for_log(r"beatleader: leading", 30)
    with connected_client(zk_server.hosts, zk_auth=AUTH) as client:
        for node in tree(client, secure_root):
            assert client.get_acls(node)[0] == [make_digest_acl("app", APP_PASSWORD, all=True)]
    with connected_client(zk_server.hosts) as stranger, pytest.raises(NoAuthError):
        stranger.get_children(layout.election_path(secure_root))
    auth_file = tmp_path / "zk-auth"
    auth_file.write_text(AUTH + "\n")
    flags = ["--zk-auth-file", str(auth_file), "--check"]
    done, _ = cli(zk_server.hosts, secure_root, "status", *flags)
    assert (done.returncode, done.stderr) == (0, "")


def test_wrong_digest_password_is_named_at_start(beats, zk_server, secure_root) -> None:
    settings = Settings.from_app(None, zk_hosts=zk_server.hosts, path=secure_root, zk_auth=AUTH)
    client = make_client(settings)
    client.start(timeout=15)
    try:
        client.ensure_path(layout.election_path(secure_root))  # the tree of a previous run
    finally:
        client.stop()
        client.close()
    wrong = "digest:app:not-the-password"

    beat = beats(env={"BEATLEADER_PATH": secure_root, "BEATLEADER_ZK_AUTH": wrong})
    line = assert_beat_stops_with_one_line(beat, "digest password of 'app'", "beatleader_zk_auth")
    assert "not-the-password" not in line

    done, elapsed = cli(zk_server.hosts, secure_root, "status", "--zk-auth", wrong)
    assert_named_failure(done, elapsed, "digest password of 'app'", secure_root)
    assert "not-the-password" not in done.stderr


def test_wrong_digest_password_is_named_when_the_tree_is_not_world_readable(
    zk_server, secure_root
) -> None:
    private = {"zk_auth": AUTH, "zk_world_readable": "false"}
    with connected_client(zk_server.hosts, **private) as client:
        client.ensure_path(layout.election_path(secure_root))
    wrong = "digest:app:not-the-password"
    done, elapsed = cli(zk_server.hosts, secure_root, "status", "--zk-auth", wrong)
    assert_named_failure(done, elapsed, "digest password of 'app'", secure_root)


def test_open_tree_made_by_someone_else_is_reported(beats, zk_server, zk_client, zk_root) -> None:
    zk_client.ensure_path(layout.election_path(zk_root))  # open ACL: world:anyone all
    beat = beats(env={"BEATLEADER_PATH": zk_root, "BEATLEADER_ZK_AUTH": AUTH})
    beat.wait_for_log(r"WARNING.*beatleader: " + zk_root + " lets anyone write", 30)
    done, _ = cli(zk_server.hosts, zk_root, "status", "--zk-auth", AUTH)
    assert done.returncode == 0, done.stderr
    assert f"! {zk_root} lets anyone write" in done.stdout
    assert f"! {layout.election_path(zk_root)} lets anyone write" in done.stdout


# --- TLS --------------------------------------------------------------------------------------


def test_beat_sends_over_tls_and_status_reads_over_tls(
    beats, tls_zk, pki, zk_root, broker_dir
) -> None:
    env = {"BEATLEADER_ZK_HOSTS": tls_zk.hosts, **schedule_env(**{ENTRY: every(1)})}
    beat = beats(env={**env, **as_env(tls_settings(pki))})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 2, 30, message="nothing sent over TLS")
    tls_clients = [c for c in tls_zk.connections() if "sid" in c]
    assert tls_clients, "the beat's session is not on the TLS-only port"

    done, _ = cli(tls_zk.hosts, zk_root, "status", "--json", *as_flags(tls_settings(pki)))
    assert done.returncode == 0, done.stderr
    assert str(beat.pid) in done.stdout
    with connected_client(tls_zk.hosts, **tls_settings(pki)) as client:
        found = leader(client, zk_root)
        assert found is not None and found["pid"] == beat.pid


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown CA", ["is not signed by a CA in beatleader_zk_tls_ca", "stranger-ca.pem"]),
        ("client certificate of another CA", ["refused the TLS client certificate"]),
        ("plaintext client", ["speaks TLS only", "beatleader_zk_tls=true"]),
    ],
)
def test_tls_failures_are_named_at_once(tls_zk, pki, zk_root, case, expected) -> None:
    settings = {
        "unknown CA": tls_settings(pki, zk_tls_ca=str(pki.stranger_ca.cert)),
        "client certificate of another CA": tls_settings(
            pki, zk_tls_cert=str(pki.stranger_client.cert), zk_tls_key=str(pki.stranger_client.key)
        ),
        "plaintext client": {},
    }[case]
    done, elapsed = cli(
        tls_zk.hosts, zk_root, "status", "--timeout", CLI_TIMEOUT, *as_flags(settings)
    )
    assert_named_failure(done, elapsed, *expected)


def test_hostname_mismatch_is_named_and_can_be_turned_off(wrong_name_zk, pki, zk_root) -> None:
    flags = as_flags(tls_settings(pki))
    done, elapsed = cli(wrong_name_zk.hosts, zk_root, "status", "--timeout", CLI_TIMEOUT, *flags)
    assert_named_failure(done, elapsed, "not valid for the name '127.0.0.1'", "check_hostname")
    done, _ = cli(wrong_name_zk.hosts, zk_root, "status", *flags, "--no-zk-tls-check-hostname")
    # Connected and read: the app's path does not exist there (nothing contends), exit 2 naming it.
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr


def test_tls_client_to_a_plaintext_server_is_named(zk_server, pki, zk_root) -> None:
    flags = as_flags(tls_settings(pki))
    done, elapsed = cli(zk_server.hosts, zk_root, "status", "--timeout", CLI_TIMEOUT, *flags)
    assert_named_failure(done, elapsed, "closed the TLS handshake", "does not speak TLS")


def test_beat_with_an_unknown_ca_stops_with_one_line(beats, tls_zk, pki) -> None:
    settings = tls_settings(pki, zk_tls_ca=str(pki.stranger_ca.cert))
    beat = beats(env={"BEATLEADER_ZK_HOSTS": tls_zk.hosts, **as_env(settings)})
    assert_beat_stops_with_one_line(beat, "is not signed by a CA in beatleader_zk_tls_ca")


def test_encrypted_client_key(tls_zk, pki, zk_root) -> None:
    encrypted = tls_settings(
        pki, zk_tls_cert=str(pki.client_encrypted.cert), zk_tls_key=str(pki.client_encrypted.key)
    )
    done, _ = cli(tls_zk.hosts, zk_root, "status", *as_flags(encrypted),
                  "--zk-tls-key-password", "client-secret")  # fmt: skip
    # Connected and read: the app's path does not exist there (nothing contends), exit 2 naming it.
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr
    with pytest.raises(ConfigError) as caught:
        make_client(Settings.from_app(None, **encrypted, zk_tls_key_password="wrong-Pass-9"))
    assert "wrong-Pass-9" not in str(caught.value)
    assert "beatleader_zk_tls_key_password" in str(caught.value)


# --- SASL -------------------------------------------------------------------------------------


def test_sasl_over_tls(beats, tls_zk, pki, zk_root, broker_dir) -> None:
    env = {"BEATLEADER_ZK_HOSTS": tls_zk.hosts, **schedule_env(**{ENTRY: every(1)})}
    beats(env={**env, **as_env(tls_settings(pki, zk_auth=SASL_AUTH))})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 1, 30, message="nothing sent with SASL")
    with connected_client(tls_zk.hosts, **tls_settings(pki)) as client:
        acl = client.get_acls(layout.entry_path(zk_root, ENTRY))[0]
        assert acl == [make_acl("sasl", "app", all=True), make_acl("world", "anyone", read=True)]
        with pytest.raises(NoAuthError):  # a TLS client without the SASL identity
            client.set(layout.entry_path(zk_root, ENTRY), b"hostile")
    admin = {**tls_settings(pki), "zk_auth": f"digest:super:{SUPER_PASSWORD}"}
    with connected_client(tls_zk.hosts, **admin) as superuser:  # the operator's way in
        superuser.set_acls(zk_root, superuser.get_acls(zk_root)[0])  # ADMIN on a node it lacks
        probe = superuser.create(f"{zk_root}/admin-probe", b"")
        superuser.delete(probe)


def test_wrong_sasl_password_is_named(beats, tls_zk, pki, zk_root) -> None:
    wrong = tls_settings(pki, zk_auth="sasl:app:not-the-password")
    done, elapsed = cli(tls_zk.hosts, zk_root, "status", "--timeout", CLI_TIMEOUT, *as_flags(wrong))
    assert_named_failure(done, elapsed, "SASL authentication as 'app' failed")
    assert "not-the-password" not in done.stderr
    beat = beats(env={"BEATLEADER_ZK_HOSTS": tls_zk.hosts, **as_env(wrong)})
    assert_beat_stops_with_one_line(beat, "SASL authentication as 'app' failed")
    with connected_client(tls_zk.hosts, **tls_settings(pki)) as client, pytest.raises(NoNodeError):
        client.get_children(layout.election_path(zk_root))


def test_sasl_without_pure_sasl_is_a_config_error(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "puresasl" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs the pure-sasl package") as caught:
        make_client(Settings.from_app(None, zk_auth=SASL_AUTH))
    assert APP_PASSWORD not in str(caught.value)


# --- later in life ----------------------------------------------------------------------------


@pytest.fixture
def private_sasl_zk(tmp_path: Path) -> Iterator[SecureZooKeeperServer]:
    """A plaintext server of this test's own with SASL user ``app``; free to restart."""
    with SecureZooKeeperServer(tmp_path / "sasl-zk", sasl_users={"app": APP_PASSWORD}) as server:
        yield server


def test_credentials_rejected_later_in_life_are_named_on_every_retry_and_recovered(
    beats, private_sasl_zk, zk_root, broker_dir
) -> None:
    env = {"BEATLEADER_ZK_HOSTS": private_sasl_zk.hosts, **schedule_env(**{ENTRY: every(1)})}
    beat = beats(env={**env, "BEATLEADER_ZK_AUTH": SASL_AUTH})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 1, 30, message="nothing sent with SASL")

    private_sasl_zk.stop()
    private_sasl_zk.sasl_users = {"app": "rotated-on-the-server"}
    private_sasl_zk.start()
    named = r"ERROR.*beatleader: SASL authentication as 'app' failed"
    beat.wait_for_log(named, 30, count=3)  # one ERROR per retry, and it keeps retrying
    assert beat.alive
    sent_while_refused = broker.count(ENTRY)

    private_sasl_zk.stop()
    private_sasl_zk.sasl_users = {"app": APP_PASSWORD}
    private_sasl_zk.start()
    wait_for(lambda: broker.count(ENTRY) > sent_while_refused + 1, 30, message="no recovery")
    assert broker.duplicates() == []
    assert "Traceback" not in beat.log()


def test_embedded_beat_with_a_tls_mistake_logs_and_never_raises(tls_zk, pki, zk_root, caplog):
    caplog.set_level(logging.ERROR, logger="beatleader")
    settings = tls_settings(pki, zk_tls_ca=str(pki.stranger_ca.cert))
    app = Celery("security-embedded", broker="memory://", set_as_current=False)
    beat = EmbeddedBeat(app, zk_hosts=tls_zk.hosts, path=zk_root, **settings)
    try:
        assert beat.start() is beat
        wait_for(lambda: "is not signed by a CA" in caplog.text, 30, message="cause not logged")
        assert beat.status()["running"] is True and not beat.is_leader
        # an operator's mistake: one line naming it, no traceback
        assert not [r for r in caplog.records if r.exc_info], caplog.text
    finally:
        beat.stop()


@pytest.fixture
def private_tls_zk(tmp_path: Path, pki: TestPki) -> Iterator[SecureZooKeeperServer]:
    """A TLS-only server of this test's own; free to restart with another certificate."""
    tls = ServerTls(pki.server, pki.ca.cert, probe=pki.client)
    with SecureZooKeeperServer(tmp_path / "private-tls-zk", tls=tls) as server:
        yield server


def test_a_certificate_replaced_later_in_life_is_named_on_every_retry(
    beats, private_tls_zk, pki, broker_dir
) -> None:
    env = {"BEATLEADER_ZK_HOSTS": private_tls_zk.hosts, **schedule_env(**{ENTRY: every(1)})}
    beat = beats(env={**env, **as_env(tls_settings(pki))})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 1, 30, message="nothing sent over TLS")

    good = private_tls_zk.tls
    assert good is not None
    private_tls_zk.stop()
    private_tls_zk.tls = dataclasses.replace(good, server=pki.wrong_name_server)
    private_tls_zk.start()
    beat.wait_for_log(r"ERROR.*beatleader: TLS: .* is not valid for the name '127\.0\.0\.1'", 30, 3)
    assert beat.alive

    private_tls_zk.stop()
    private_tls_zk.tls = good
    private_tls_zk.start()
    sent = broker.count(ENTRY)
    wait_for(lambda: broker.count(ENTRY) > sent + 1, 30, message="no recovery")
    assert broker.duplicates() == []


def test_beat_with_a_wrong_key_password_stops_with_one_line(beats, pki) -> None:
    settings = tls_settings(
        pki, zk_tls_cert=str(pki.client_encrypted.cert), zk_tls_key=str(pki.client_encrypted.key)
    )
    beat = beats(env=as_env({**settings, "zk_tls_key_password": "wrong-Pass-9"}))
    line = assert_beat_stops_with_one_line(beat, "cannot load the client certificate and key")
    assert "wrong-Pass-9" not in beat.log() and "beatleader_zk_tls_key_password" in line


def test_an_uncertain_cause_is_named_only_when_it_repeats() -> None:
    trouble = Trouble(Settings.from_app(None))
    trouble.record("closed the TLS handshake", True, certain=False)
    assert trouble.named is None  # one reset can be a server going down
    trouble.record("closed the TLS handshake", True, certain=False)
    assert trouble.named == "closed the TLS handshake"
    trouble.record("Connection dropped: refused")
    assert trouble.named is None  # an outage is never named
    trouble.record("unknown CA", True)
    assert trouble.named == "unknown CA"


def test_with_a_configured_ca_only_that_ca_is_trusted(pki) -> None:
    context = tls_context(TlsSettings(ca=str(pki.ca.cert)))
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == [
        "beatleader test CA"
    ]  # kazoo's own context would add the system bundle
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
