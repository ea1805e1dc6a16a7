"""Test fixtures: real redis-server processes on free loopback ports, never the machine's shared Redis.

The test process is monkey-patched first, as the service is: the pool's concurrency is only real when
redis-py's sockets are gevent's.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402

from wsgi_app.redis_server import RedisProcess, free_port  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (long stress runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def redis_factory(tmp_path):
    """Start extra redis-servers: ``redis_factory(*extra_args)``; all are stopped at teardown."""
    started = []

    def start(*extra_args, port=None):
        server = RedisProcess(tmp_path / f"redis-{len(started)}", port=port or free_port(), extra_args=extra_args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_factory):
    """A fresh, empty redis-server on a free loopback port for one test."""
    return redis_factory()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def admin(redis_server):
    """A plain redis-py client for inspecting the server from the outside (CLIENT LIST, keys)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master Redis Cluster on free loopback ports, shared by one test module."""
    from topology import ClusterTopology

    topo = ClusterTopology(tmp_path_factory.mktemp("cluster"))
    topo.start()
    yield topo
    topo.stop()


SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000


@pytest.fixture
def topology(tmp_path):
    """1 master, 1 replica and 3 sentinels that fail over about a second after the master dies."""
    from topology import SentinelTopology

    topo = SentinelTopology(tmp_path / "sentinel", down_after_ms=SENTINEL_DOWN_AFTER_MS,
                            failover_timeout_ms=SENTINEL_FAILOVER_TIMEOUT_MS)
    topo.start()
    yield topo
    topo.stop()
