"""ZooKeeper, as beatleader uses it: the one client factory, auth/TLS/ACLs, multi-reads, znodes.

``client`` makes every ``KazooClient`` (hosts, auth, TLS, ACLs, retry, connection-state logging);
``trust`` starts one and names why it cannot work; ``log`` keeps kazoo's logger quiet; ``multiread``
reads many nodes in few requests; ``layout`` says where everything lives under the path and how
its data is encoded; ``clocknode`` is the leader's clock probe node.

May import: :mod:`beatleader.config` and :mod:`beatleader.observe`. Nothing of celery, nothing of
the other packages: everything else stands on this layer.
"""
