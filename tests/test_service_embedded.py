"""The embedded development default: with no REDIS_URL, gunicorn's master runs a private redis-server on a
unix socket in REDIS_DATA_DIR, the data survives a restart, no redis-server outlives gunicorn, one master at a
time serves a directory, and an unusable directory is named in a one-line error.
(Which binary may serve a directory: test_service_embedded_format.py.)
"""
import os
import signal
import subprocess

import pytest
from conftest import service_runner

from pool.server import find_redis_server
from pool.testing import holders, process_alive, wait_until

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
    """Even when the master is SIGKILLed (no on_exit), the redis-server does not survive it (Linux). The data
    directory's lock is held by the master and its redis-server only (never by a worker, which could outlive a
    killed master), so it is free once that server has saved and exited: the next start serves the data."""
    if not os.path.exists("/proc/self"):
        pytest.skip("needs Linux")
    service = start(gunicorn_factory, data_dir, workers=2)
    pid = embedded_pid(data_dir)
    workers = service.worker_pids()
    assert holders(data_dir / "redis.lock") == {service.pid, pid}
    assert service.request("PUT", "/hashes/kept", {"a": "1"}).status == 201
    service.send(signal.SIGKILL)
    service.wait_exit(10)
    wait_until(lambda: not process_alive(pid), 10, interval=0.02, what="redis-server gone after the master was killed")
    assert holders(data_dir / "redis.lock") == set()
    again = start(gunicorn_factory, data_dir)
    assert again.request("GET", "/hashes/kept").json() == {"a": "1"}
    wait_until(lambda: not any(process_alive(w) for w in workers), 10, interval=0.02, what="workers gone")


def test_second_instance_on_same_data_dir_refuses(gunicorn_factory, data_dir, tmp_path):
    """A second gunicorn on a data dir whose redis-server is live stops at start-up with a clear message."""
    first = start(gunicorn_factory, data_dir)
    second = service_runner(tmp_path, {"REDIS_DATA_DIR": data_dir})
    with pytest.raises(RuntimeError, match="already serves"):
        second.start(timeout=20)
    assert first.request("GET", "/readyz").status == 200


SIMULTANEOUS = 10


def test_simultaneous_starts_exactly_one_serves(data_dir, tmp_path):
    """Of 10 masters started at the same moment on one data directory exactly one serves (one redis-server
    started there); the nine others exit non-zero with the "already serves" message, and the winner is intact."""
    runners = [service_runner(tmp_path, {"REDIS_DATA_DIR": data_dir}) for _ in range(SIMULTANEOUS)]
    assert len({runner.port for runner in runners}) == SIMULTANEOUS
    try:
        for runner in runners:
            runner.launch()
        outcomes = [_outcome(runner, timeout=120) for runner in runners]
        winners = [runner for runner, outcome in zip(runners, outcomes, strict=True) if outcome == "serves"]
        assert len(winners) == 1, outcomes
        for runner, outcome in zip(runners, outcomes, strict=True):
            if runner is not winners[0]:
                assert outcome != 0 and "already serves" in runner.log(), runner.log()
        (winner,) = winners
        assert winner.request("PUT", "/hashes/one", {"a": "1"}).status == 201
        assert winner.request("GET", "/readyz").status == 200
        assert (data_dir / "redis.log").read_text().count("Server initialized") == 1
        winner.stop()
        assert winner.process.returncode == 0
    finally:
        for runner in runners:
            runner.stop()


def _outcome(runner, timeout):
    """"serves" once ``runner`` is ready, or its exit code if it exits first."""
    try:
        runner.wait_ready(timeout)
    except RuntimeError:
        return runner.process.returncode
    return "serves"


def _under_a_file(tmp_path):
    (tmp_path / "plain").write_text("")
    return tmp_path / "plain" / "data", "is a file, not a directory"


def _a_file(tmp_path):
    (tmp_path / "plain").write_text("")
    return tmp_path / "plain", "is a file, not a directory"


def _immutable(tmp_path):
    path = tmp_path / "frozen"
    path.mkdir()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    return path, "not permitted"


@pytest.mark.parametrize("unusable", [_under_a_file, _a_file, _immutable])
def test_unusable_data_dir_is_one_line_error(unusable, tmp_path):
    """A REDIS_DATA_DIR that cannot be created or written (even by root: a path under a regular file, a file,
    an immutable directory) stops gunicorn with exit 1 and one line naming the directory and why; no traceback."""
    path, why = unusable(tmp_path)
    try:
        runner = service_runner(tmp_path, {"REDIS_DATA_DIR": path}).launch()
        assert runner.wait_exit(30) == 1
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    log = runner.log()
    errors = [line for line in log.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"REDIS_DATA_DIR {path}" in errors[0] and why in errors[0], log
    assert "Traceback" not in log


def test_redis_url_set_starts_nothing(gunicorn_factory, redis_url, data_dir):
    """With REDIS_URL set, no redis-server is started and no data dir is created."""
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "REDIS_DATA_DIR": data_dir})
    assert service.request("GET", "/readyz").status == 200
    assert not data_dir.exists()
    assert "private redis-server" not in service.log()
