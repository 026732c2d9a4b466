"""``beatleader.testing.proxy.ZkProxy`` does what the fault tests rely on, on a real ZooKeeper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss

from beatleader.testing.proxy import ZkProxy
from tests.harness import ZooKeeperServer, connected_client, wait_for


@pytest.fixture
def through_proxy(zk_server: ZooKeeperServer) -> Iterator[tuple[ZkProxy, KazooClient]]:
    with ZkProxy(zk_server.hosts) as proxy, connected_client(proxy.hosts) as client:
        yield proxy, client


def _set(client: KazooClient, path: str, data: bytes) -> None:
    transaction = client.transaction()
    transaction.set_data(path, data)
    transaction.commit()


def test_a_dropped_multi_reply_commits_but_the_client_sees_a_connection_loss(
    through_proxy, zk_root
) -> None:
    proxy, client = through_proxy
    client.create(zk_root, b"0", makepath=True)
    _set(client, zk_root, b"1")
    assert (proxy.multi_requests, proxy.multi_replies) == (1, 1)
    proxy.drop_next_multi_reply()
    with pytest.raises(ConnectionLoss):
        _set(client, zk_root, b"2")
    assert proxy.dropped_replies == 1 and proxy.cuts == 1
    wait_for(lambda: client.connected, 10, message="reconnected through the proxy")
    assert client.get(zk_root)[0] == b"2"  # it did commit


def test_a_cut_before_the_next_multi_keeps_it_from_the_server(through_proxy, zk_root) -> None:
    proxy, client = through_proxy
    client.create(zk_root, b"0", makepath=True)
    proxy.cut_before_multi(after=1)
    _set(client, zk_root, b"1")
    with pytest.raises(ConnectionLoss):
        _set(client, zk_root, b"2")
    wait_for(lambda: client.connected, 10, message="reconnected through the proxy")
    assert client.get(zk_root)[0] == b"1"  # the second never reached the server
    _set(client, zk_root, b"3")  # one-shot: the next ones pass
    assert client.get(zk_root)[0] == b"3"
