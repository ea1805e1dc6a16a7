"""redis-py's RedisCluster with one greenpool per node, against a real 3-master cluster on loopback ports."""
import time

import gevent
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from pool import PoolClosed, PoolTimeout, RedisPool
from pool.cluster import ClusterPool, cluster_client
from pool.urls import parse_redis_url

REDIS_PY = tuple(int(part) for part in redis.__version__.split(".")[:2])


@pytest.fixture
def client(cluster):
    rc = cluster_client(cluster.addresses, max_connections=3, pool_options={"name": "c"})
    yield rc
    rc.close()


def node_pools(rc):
    return {node.name: node.redis_connection.connection_pool for node in rc.get_nodes()}


def test_every_node_has_its_own_bounded_pool(cluster, client):
    """Each master gets a RedisPool of at most max_connections, however many greenlets run at once."""
    pools = node_pools(client)
    assert len(pools) == 3 and all(type(p) is RedisPool and p.max_size == 3 for p in pools.values())
    peak = {}

    def work(i):
        for j in range(20):
            client.set(f"bound:{i}:{j}", j)
            for name, p in pools.items():
                peak[name] = max(peak.get(name, 0), p.get_stats()["pool_size"])

    gevent.joinall([gevent.spawn(work, i) for i in range(30)], timeout=30, raise_error=True)
    assert max(peak.values()) <= 3


def test_keys_spread_over_all_masters_and_read_back(cluster):
    """Writes through the URL-built client land on all three masters; every read returns what was written."""
    rc = parse_redis_url(cluster.url + "?max_size=4&timeout=2").make_client()
    try:
        def work(i):
            for j in range(50):
                assert rc.set(f"spread:{i}:{j}", f"{i}-{j}")
            return [rc.get(f"spread:{i}:{j}") == f"{i}-{j}".encode() for j in range(50)]

        jobs = [gevent.spawn(work, i) for i in range(10)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        assert all(all(job.value) for job in jobs)
        per_node = {port: cluster.admin(port).dbsize() for _, port in cluster.addresses}
        assert all(count > 0 for count in per_node.values()), per_node
        assert all(p.max_size == 4 for p in node_pools(rc).values())
    finally:
        rc.close()


def test_slot_migration_under_load_loses_nothing(cluster, client):
    """A slot moves (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE) while greenlets write and read
    keys in it: ASK and MOVED are followed, no request fails, and every key keeps its last written value."""
    tag = "{hot}"
    slot = client.keyslot(tag)
    for i in range(200):  # some keys exist before the move, so MIGRATE has work to do
        client.set(f"{tag}:pre:{i}", i)
    source = cluster.slot_owner(slot)
    target = next(port for _, port in cluster.addresses if port != source)
    last = {}
    errors = []
    stop = []

    def writer(index):
        for seq in range(100_000):  # bounded; stopped long before
            if stop:
                return
            key = f"{tag}:w{index}:{seq % 20}"
            try:
                assert client.set(key, seq)
                last[key] = seq
                got = client.get(key)
                assert got == str(seq).encode(), (key, seq, got)
            except Exception as error:  # noqa: BLE001 -- any failure is the finding
                errors.append(repr(error))
            gevent.sleep(0.001)

    writers = [gevent.spawn(writer, i) for i in range(8)]
    gevent.sleep(0.2)
    moved = cluster.migrate_slot(slot, target, batch=10, pause=0.01)
    gevent.sleep(0.3)
    stop.append(True)
    gevent.joinall(writers, timeout=10)
    assert errors == []
    assert moved >= 200
    assert cluster.slot_owner(slot) == target
    for key, seq in last.items():
        assert client.get(key) == str(seq).encode(), key
    assert all(client.get(f"{tag}:pre:{i}") == str(i).encode() for i in range(200))
    assert cluster.admin(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_startup_nodes_alone_use_connection_pool_class_only_from_redis_py_8_2(cluster):
    """A redis-py 8.1 fact that cluster_client() works around: connection_pool_class is used only with url=
    (8.2 uses it with startup_nodes alone too); the url= form works with both."""
    nodes = [ClusterNode(host, port) for host, port in cluster.addresses]
    rc = RedisCluster(startup_nodes=nodes, connection_pool_class=RedisPool, max_connections=2)
    try:
        ours = [isinstance(p, RedisPool) for p in node_pools(rc).values()]
        assert ours and all(ours) if REDIS_PY >= (8, 2) else not any(ours)
    finally:
        rc.close()
        for p in node_pools(rc).values():
            if isinstance(p, RedisPool):
                p.close()
    host, port = cluster.addresses[0]
    rc = RedisCluster(url=f"redis://{host}:{port}", startup_nodes=nodes[1:], connection_pool_class=RedisPool,
                      max_connections=2)
    try:
        assert all(isinstance(p, RedisPool) and p.max_size == 2 for p in node_pools(rc).values())
        assert rc.set("plain", 1) and rc.get("plain") == b"1"
    finally:
        rc.close()  # closes neither kind of node pool: ours are closed by hand (cluster_client's client does it)
        for p in node_pools(rc).values():
            if isinstance(p, RedisPool):
                p.close()


def test_closing_the_client_closes_the_node_pools(cluster):
    rc = cluster_client(cluster.addresses, max_connections=2)
    rc.set("x", 1)
    pools = list(node_pools(rc).values())
    rc.close()
    assert all(p.closed for p in pools)


def test_cluster_url_refuses_a_db():
    with pytest.raises(ValueError, match="db other than 0"):
        parse_redis_url("redis+cluster://127.0.0.1:7000/1")
    pool = parse_redis_url("redis+cluster://127.0.0.1:7000").make_pool()  # one pool over the node pools
    assert isinstance(pool, ClusterPool) and not pool.closed and repr(pool).startswith("<ClusterPool")


# -- ClusterPool: the cluster as one pool.backend.Backend -------------------------------------------------------
@pytest.mark.timing
def test_cluster_pool_client_timeout_is_the_node_checkout_deadline(cluster):
    """``ClusterPool.client(timeout)`` bounds each node checkout in its block by ``timeout``, not by the node
    pools' own (5 s here): with a node's only connection held, a command for a key on it fails on time with
    PoolTimeout, and keys on other nodes still work."""
    cp = ClusterPool.from_url(cluster.url, max_size=1, timeout=5.0, name="deadline")
    try:
        with cp.client() as rc:
            rc.set("deadline:a", 1)  # the slot map is read; every node got its pool
            node = rc.get_node_from_key("deadline:a").name
            other = next(f"deadline:{i}" for i in range(100) if rc.get_node_from_key(f"deadline:{i}").name != node)
        held_pool = cp.node_pools()[node]
        held = held_pool.getconn()
        started = time.monotonic()
        with pytest.raises(PoolTimeout), cp.client(timeout=0.2) as rc:
            rc.get("deadline:a")
        assert 0.15 <= time.monotonic() - started < 1.5
        with cp.client(timeout=0.2) as rc:
            assert rc.set(other, 2) and rc.get(other) == b"2"
        held_pool.putconn(held)
        with cp.client() as rc:
            assert rc.get("deadline:a") == b"1"
    finally:
        cp.close(1.0)


@pytest.mark.timing
def test_cluster_pool_close_shares_one_deadline_and_refuses_afterwards(cluster):
    """``ClusterPool.close(timeout)`` closes every node pool once within one deadline for all of them (two nodes
    with a connection still borrowed take about ``timeout``, not twice that), is idempotent, and later
    ``client()`` calls raise PoolClosed."""
    cp = ClusterPool.from_url(cluster.url, max_size=2, name="closing")
    with cp.client() as rc:
        rc.set("closing:x", 1)
    pools = list(cp.node_pools().values())
    assert len(pools) == 3 and cp.get_stats()["pool_max"] == 6
    borrowed = [(p, p.getconn()) for p in pools[:2]]
    started = time.monotonic()
    cp.close(0.3)
    assert 0.25 <= time.monotonic() - started < 0.6 + 0.5
    assert all(p.closed for p in pools) and cp.closed
    cp.close(0.3)  # harmless
    with pytest.raises(PoolClosed):
        cp.client()
    for p, conn in borrowed:
        p.putconn(conn)  # closed by now: nothing happens
