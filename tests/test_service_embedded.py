"""The embedded development default: with no REDIS_URL, gunicorn's master runs a private redis-server on a
unix socket in REDIS_DATA_DIR, the data survives a restart, and no redis-server outlives gunicorn.
"""
import os
import signal

import pytest
from conftest import service_runner

from pool.server import find_redis_server
from pool.testing import process_alive, wait_until

try:
    find_redis_server()
except FileNotFoundError as exc:  # pragma: no cover
    pytest.skip(str(exc), allow_module_level=True)


def embedded_pid(data_dir):
    with open(data_dir / "redis.pid") as f:
        return int(f.read())


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def start(gunicorn_factory, data_dir, workers=1):
    return gunicorn_factory(env={"REDIS_DATA_DIR": data_dir}, workers=workers)


def test_starts_serves_persists_and_stops(gunicorn_factory, data_dir):
    """Starts a private redis-server, serves, keeps data across a restart, and is gone after SIGTERM/SIGINT."""
    service = start(gunicorn_factory, data_dir, workers=2)
    pid = embedded_pid(data_dir)
    assert process_alive(pid)
    assert service.request("PUT", "/hashes/kept", {"a": "1"}).status == 201
    assert service.request("GET", "/readyz").status == 200
    log = service.log()
    assert "REDIS_URL is not set: started a private redis-server" in log and "development default" in log
    assert oct(os.stat(data_dir / "redis.sock").st_mode & 0o777) == "0o700"
    service.send(signal.SIGTERM)
    assert service.wait_exit(20) == 0
    assert not process_alive(pid), "redis-server outlived gunicorn (SIGTERM)"
    assert "Stopped the embedded redis-server" in service.log()

    service = start(gunicorn_factory, data_dir)
    pid = embedded_pid(data_dir)
    assert service.request("GET", "/hashes/kept").json() == {"a": "1"}
    service.send(signal.SIGINT)
    assert service.wait_exit(20) == 0
    assert not process_alive(pid), "redis-server outlived gunicorn (SIGINT)"


def test_dies_with_a_killed_master(gunicorn_factory, data_dir):
    """Even when the master is SIGKILLed (no on_exit), the redis-server does not survive it (Linux)."""
    if not os.path.exists("/proc/self"):
        pytest.skip("needs Linux")
    service = start(gunicorn_factory, data_dir)
    pid = embedded_pid(data_dir)
    workers = service.worker_pids()
    service.send(signal.SIGKILL)
    service.wait_exit(10)
    wait_until(lambda: not process_alive(pid), 10, interval=0.02, what="redis-server gone after the master was killed")
    wait_until(lambda: not any(process_alive(w) for w in workers), 10, interval=0.02, what="workers gone")


def test_second_instance_on_same_data_dir_refuses(gunicorn_factory, data_dir, tmp_path):
    """A second gunicorn on a data dir whose redis-server is live stops at start-up with a clear message."""
    first = start(gunicorn_factory, data_dir)
    second = service_runner(tmp_path, {"REDIS_DATA_DIR": data_dir})
    with pytest.raises(RuntimeError, match="already serves"):
        second.start(timeout=20)
    assert first.request("GET", "/readyz").status == 200


def test_redis_url_set_starts_nothing(gunicorn_factory, redis_url, data_dir):
    """With REDIS_URL set, no redis-server is started and no data dir is created."""
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "REDIS_DATA_DIR": data_dir})
    assert service.request("GET", "/readyz").status == 200
    assert not data_dir.exists()
    assert "private redis-server" not in service.log()
