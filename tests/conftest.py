"""Test fixtures: real redis-server processes on free loopback ports (never the machine's shared Redis), real
Sentinel and Cluster topologies, and real gunicorn masters running the service. The processes, proxies and
load generators themselves live in ``pool.testing``; only the fixtures that start and stop them are here.

The test process is monkey-patched first, as the service is: the pool's concurrency is only real when
redis-py's sockets are gevent's.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402

from pool import RedisPool  # noqa: E402
from pool.server import RedisProcess, free_port  # noqa: E402
from pool.testing import ClusterTopology, FaultProxy, Gunicorn, SentinelTopology  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SERVICE_CONF = REPO / "gunicorn.conf.py"  # the service as it is deployed: ``gunicorn -c gunicorn.conf.py``
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (long stress runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def service_runner(log_dir, env=None, args=(), workers=1):
    """The service under a real gunicorn (not started): ``gunicorn -c gunicorn.conf.py`` from the repository."""
    return Gunicorn(SERVICE_CONF, log_dir, env, args, workers, cwd=REPO)


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


@pytest.fixture
def new_pool():
    """``new_pool(url, prefix="t", **options)``: a ``RedisPool`` named <prefix>0, <prefix>1... unless ``name`` is
    given; every pool it made is closed at teardown. Test modules wrap it as their ``make_pool``."""
    made = []

    def make(url, prefix="t", **options):
        options.setdefault("name", f"{prefix}{len(made)}")
        made.append(RedisPool.from_url(url, **options))
        return made[-1]

    yield make
    for p in made:
        p.close(timeout=1.0)


@pytest.fixture
def proxy(redis_server):
    """A FaultProxy in front of the test's redis-server, in pass mode."""
    with FaultProxy("127.0.0.1", redis_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def make_app(redis_url):
    """``make_app(**env)``: the service built in-process for the test's redis-server, settings from ``env``;
    its pool is closed at teardown."""
    from wsgi_app.service import create_app  # not at import: the service's modules stay out of pool-only tests

    apps = []

    def make(**env):
        apps.append(create_app({"REDIS_URL": redis_url, **{k: str(v) for k, v in env.items()}}))
        return apps[-1]

    yield make
    for app in apps:
        app.pool.close(1.0)


@pytest.fixture
def gunicorn_factory(tmp_path):
    """``gunicorn_factory(env=..., args=..., workers=...)`` starts the service; all are stopped at teardown
    (a master that does not stop within 30 s of SIGTERM is killed and fails the test)."""
    started = []

    def start(env=None, args=(), workers=1, ready_timeout=20.0):
        runner = service_runner(tmp_path, env, args, workers)
        started.append(runner)
        return runner.start(ready_timeout)

    yield start
    errors = []
    for runner in started:  # stop them all, then report
        try:
            runner.stop()
        except TimeoutError as error:
            errors.append(error)
    if errors:
        pytest.fail(str(errors[0]))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master Redis Cluster on free loopback ports, shared by one test module."""
    topo = ClusterTopology(tmp_path_factory.mktemp("cluster"))
    topo.start()
    yield topo
    topo.stop()


@pytest.fixture
def topology(tmp_path):
    """1 master, 1 replica and 3 sentinels that fail over about a second after the master dies."""
    topo = SentinelTopology(tmp_path / "sentinel", down_after_ms=SENTINEL_DOWN_AFTER_MS,
                            failover_timeout_ms=SENTINEL_FAILOVER_TIMEOUT_MS)
    topo.start()
    yield topo
    topo.stop()
