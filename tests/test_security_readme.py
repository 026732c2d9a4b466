"""The README's "Securing ZooKeeper" example, run as written, and the auth-enabled compose file.

The README's shell lines make the certificates; its zoo.cfg lines configure a real ZooKeeper; its
environment lines configure a real beat; its ``beatleader status`` line reads over TLS. Only the
directories (``/etc/zookeeper/tls/``, ``/etc/beatleader/tls/``), the host and the port are swapped
for this machine's temporary ones.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.security import make_acl, make_digest_acl

from beatleader.config import Settings
from beatleader.testing.localzk import free_port
from beatleader.testing.pki import Issued
from beatleader.testing.securezk import (
    SASL_PROVIDER,
    SecureZooKeeperServer,
    ServerTls,
    jaas_server_section,
)
from beatleader.zk import layout
from tests.cluster import ENTRY, every, schedule_env
from tests.harness import REPO_ROOT, FilesystemBroker, connected_client, wait_for
from tests.test_deployment import compose_command

README = REPO_ROOT / "README.md"
README_HOST = "zk1.example.com:2281"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the README's security section in ``language``."""
    found = re.findall(r"^```(\w*)\n(.*?)^```", section("Securing ZooKeeper"), re.M | re.S)
    return [body for lang, body in found if lang == language]


def key_values(block: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in block.splitlines() if line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def example(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, SecureZooKeeperServer]]:
    """The README's certificates and a ZooKeeper configured with its zoo.cfg lines."""
    folder = tmp_path_factory.mktemp("readme-tls")
    subprocess.run(["bash", "-euo", "pipefail", "-c", blocks("sh")[0]], cwd=folder, check=True)
    port = free_port()
    zoo_cfg = {
        key: value.replace("/etc/zookeeper/tls/", f"{folder}/").replace("2281", str(port))
        for key, value in key_values(blocks("properties")[0]).items()
    }
    tls = ServerTls(
        Issued(folder / "zk.pem", folder / "zk.key"),
        folder / "ca.pem",
        probe=Issued(folder / "client.pem", folder / "client.key"),
    )
    server = SecureZooKeeperServer(folder / "zk", port, tls=tls, extra_config=zoo_cfg)
    written = server.config_path.read_text().splitlines()
    assert all(f"{key}={value}" in written for key, value in zoo_cfg.items())
    assert "clientPort" not in server.config()
    with server:
        yield folder, server


def readme_environment(folder: Path, server: SecureZooKeeperServer) -> dict[str, str]:
    env = key_values(blocks("sh")[1])
    return {
        key: value.replace("/etc/beatleader/tls/", f"{folder}/").replace(README_HOST, server.hosts)
        for key, value in env.items()
    }


def test_readme_example_beat_sends_over_tls_with_digest_acls(
    beats, example, zk_root, broker_dir
) -> None:
    folder, server = example
    env = readme_environment(folder, server)
    assert set(env) >= {"BEATLEADER_ZK_HOSTS", "BEATLEADER_ZK_AUTH_FILE", "BEATLEADER_ZK_TLS"}
    beats(env={**env, **schedule_env(**{ENTRY: every(1)})})
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count(ENTRY) >= 1, 30, message="the README's beat sent nothing")

    auth = Settings.from_app(None, zk_auth_file=str(folder / "zk-auth")).zk_auth
    assert auth is not None and auth.user == "beat"
    tls = {k[len("BEATLEADER_") :].lower(): v for k, v in env.items() if "_TLS" in k}
    with connected_client(server.hosts, **tls, zk_auth_file=str(folder / "zk-auth")) as client:
        acl, _ = client.get_acls(layout.entry_path(zk_root, ENTRY))
        owner = make_digest_acl(auth.user, auth.password, all=True)
        assert acl == [owner, make_acl("world", "anyone", read=True)]


def test_readme_status_line_reads_over_tls(example, beats, zk_root) -> None:
    folder, server = example
    beat = beats(env=readme_environment(folder, server))
    beat.wait_for_log(r"beatleader: leading", 30)
    line = re.search(r"`(beatleader status --zk-hosts [^`]*)`", section("Securing ZooKeeper"))
    assert line is not None
    args = shlex.split(line.group(1).replace(README_HOST, server.hosts))[1:]
    command = [sys.executable, "-m", "beatleader.cli", *args, "--path", zk_root, "--json"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert str(beat.pid) in done.stdout


def test_readme_sasl_lines_are_the_ones_the_tests_run() -> None:
    assert blocks("")[-1] == jaas_server_section({"beat": "PASSWORD"})
    assert key_values(blocks("properties")[1]) == {"authProvider.sasl": SASL_PROVIDER}


# --- docker-compose.secure.yml ----------------------------------------------------------------

SECURE_COMPOSE = REPO_ROOT / "docker-compose.secure.yml"


@pytest.fixture(scope="module")
def secure_compose() -> dict[str, Any]:
    """docker-compose.yml with the secure override, as ``docker-compose config`` merges it."""
    command = [*compose_command(), "-f", str(REPO_ROOT / "docker-compose.yml")]
    command += ["-f", str(SECURE_COMPOSE), "config"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_secure_compose_gives_beat_a_digest_identity_from_a_secret(secure_compose) -> None:
    beat = secure_compose["services"]["beat"]
    secret = beat["secrets"][0]
    name = secret["source"] if isinstance(secret, dict) else secret
    assert beat["environment"]["BEATLEADER_ZK_AUTH_FILE"] == f"/run/secrets/{name}"
    assert secure_compose["secrets"][name]["file"].endswith("zk-auth.secret")
    assert beat["environment"]["BEATLEADER_ZK_HOSTS"] == "zk1:2181,zk2:2181,zk3:2181"
    assert beat["deploy"]["replicas"] == 3  # the base file's settings survive the override


def test_secure_compose_secret_recipe_makes_a_valid_setting(tmp_path: Path) -> None:
    recipe = next(
        line.lstrip("# ").strip()
        for line in SECURE_COMPOSE.read_text().splitlines()
        if "zk-auth.secret" in line and "printf" in line
    )
    subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=tmp_path, check=True)
    auth = Settings.from_app(None, zk_auth_file=str(tmp_path / "zk-auth.secret")).zk_auth
    assert auth is not None and auth.scheme == "digest" and len(auth.password) == 32
