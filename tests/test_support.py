"""The shared test support (``pool.testing``, ``pool.server``) keeps its seams: it stands without the service or
pytest, the gunicorn runner passes no setting of the developer's shell to the service, and the fault proxy's
jitter mode holds what it says."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pool.testing import FaultProxy, minimal_env

REPO = Path(__file__).resolve().parent.parent


def test_library_and_support_import_neither_the_service_nor_pytest():
    """In a fresh interpreter, ``import pool, pool.testing, pool.server`` loads no module of ``wsgi_app`` and no
    pytest: the library stands alone, and benchmarks and the demo can use the support without a test runner."""
    code = (
        "import sys, pool, pool.testing, pool.server;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('wsgi_app', 'pytest', '_pytest'));"
        "print(bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_minimal_env_keeps_the_shell_out(monkeypatch):
    """The runner's environment has the caller's PATH, locale and PYTHONPATH, and none of the service's settings
    (REDIS_URL, POOL_*, REQUEST_TIMEOUT, METRICS_INTERVAL, ...), whatever list of them there may be."""
    for name, value in {"REDIS_URL": "redis://127.0.0.1:1/0", "POOL_MAX_SIZE": "lots", "REQUEST_TIMEOUT": "0",
                        "METRICS_INTERVAL": "-1", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/somewhere"}.items():
        monkeypatch.setenv(name, value)
    env = minimal_env({"POOL_TIMEOUT": 0.5})
    assert env["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["PYTHONPATH"] == "/somewhere"
    assert env["POOL_TIMEOUT"] == "0.5" and env["PYTHONUNBUFFERED"] == "1"
    assert not {"REDIS_URL", "POOL_MAX_SIZE", "REQUEST_TIMEOUT", "METRICS_INTERVAL"} & set(env)


def test_service_under_test_ignores_a_bad_shell_setting(monkeypatch, gunicorn_factory, redis_url):
    """A developer's shell with an invalid POOL_MAX_SIZE (which stops a real gunicorn at start-up) and another
    REDIS_URL: the service under test starts, on the test's Redis, with its default pool size."""
    monkeypatch.setenv("POOL_MAX_SIZE", "lots")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    service = gunicorn_factory(env={"REDIS_URL": redis_url})
    assert service.request("GET", "/readyz").status == 200
    assert service.request("GET", "/stats").json()["pool"]["pool_max"] == 10


@pytest.mark.timing
def test_fault_proxy_jitter_holds_chunks(redis_server):
    """``jitter(1.0, low, high)`` holds every chunk low..high seconds each way (a PING costs two holds), counts
    them in ``jittered``, and ``passthrough()`` ends it; replies are still the right ones."""
    with FaultProxy("127.0.0.1", redis_server.port, seed=3) as proxy:
        client = redis.Redis.from_url(proxy.url, socket_timeout=5)
        try:
            assert client.ping()
            proxy.jitter(1.0, 0.15, 0.2)
            started = time.monotonic()
            assert client.echo("held") == b"held"
            took = time.monotonic() - started
            assert proxy.jittered == 2 and 0.3 <= took < 0.4 + 0.5, took
            proxy.passthrough()
            started = time.monotonic()
            assert client.echo("fast") == b"fast"
            assert proxy.jittered == 2 and time.monotonic() - started < 0.15
        finally:
            client.close()
    with FaultProxy("127.0.0.1", redis_server.port) as proxy, pytest.raises(ValueError, match="probability"):
        proxy.jitter(1.5, 0, 1)
