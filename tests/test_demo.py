"""The seed's lesson as a test: ``pool.demo`` shows the shared connection going wrong, and the pool and the
multiplexed shared connection staying right."""
import os
import subprocess
import sys

import pytest

from pool import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED, POOLED, MULTIPLEXED = demo.WAYS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_connection_crosses_replies_and_the_right_ways_do_not(redis_url, admin, seed):
    """Under gevent, one connection shared by 50 greenlets hands replies to the wrong greenlet on every run
    (crossed replies, not only errors); the same workload through RedisPool, and through one multiplexed
    shared connection, gets every reply right. Nothing is left on the server."""
    results = demo.run_demo(redis_url, greenlets=50, requests=1000, deadline=20.0, seed=seed)
    shared, pooled, multiplexed = results[SHARED], results[POOLED], results[MULTIPLEXED]
    for counts in (shared, pooled, multiplexed):
        assert counts["requests"] == 1000
        assert counts["correct"] + counts["wrong"] + counts["errors"] == 1000
    assert shared["wrong"] > 0, shared
    assert (pooled["correct"], pooled["wrong"], pooled["errors"]) == (1000, 0, 0), pooled
    assert (multiplexed["correct"], multiplexed["wrong"], multiplexed["errors"]) == (1000, 0, 0), multiplexed
    assert admin.dbsize() == 0
    assert [c for c in admin.client_list() if c["name"] == "greenpool:demo"] == []


def test_run_demo_refuses_bad_arguments(redis_url):
    with pytest.raises(ValueError, match="greenlets"):
        demo.run_demo(redis_url, greenlets=0)


def test_python_m_pool_demo_prints_the_table(redis_url):
    """``python -m pool.demo`` (monkey-patched in its own process, as documented) prints one row per way."""
    done = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-m", "pool.demo", "--url", redis_url,
         "--greenlets", "20", "--requests", "400"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("way"))
    assert header.split() == ["way", "requests", "correct", "wrong", "errors", "seconds"]
    for way in (POOLED, MULTIPLEXED):
        assert next(line for line in lines if line.startswith(way)).split()[-5:-1] == ["400", "400", "0", "0"]
    shared = next(line for line in lines if line.startswith(SHARED)).split()[-5:]
    assert int(shared[2]) > 0, shared  # crossed replies
    assert "MonkeyPatchWarning" not in done.stderr


def test_python_m_pool_demo_starts_its_own_server():
    """Without ``--url`` the demo runs a private redis-server on a free port and stops it."""
    done = subprocess.run(
        [sys.executable, "-m", "pool.demo", "--greenlets", "10", "--requests", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "started a private redis-server at redis://127.0.0.1:" in done.stdout
    assert ":6379/" not in done.stdout  # not the machine's shared Redis on the default port
    assert "RedisPool (right)" in done.stdout and "multiplexed connection (right)" in done.stdout
