"""The master's private metrics directory (no PROMETHEUS_MULTIPROC_DIR given): one per master, removed at exit,
and a SIGKILLed master's is removed by a later start once provably nobody uses it; a live master's never is."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pool.testing import holders, process_alive, wait_until
from wsgi_app import metrics_dir


def private_dir(service):
    return Path(re.search(r"Metrics of all workers in (\S+) ", service.log()).group(1))


def test_killed_masters_directory_removed_live_ones_kept(gunicorn_factory, redis_url, tmp_path):
    """The directory is locked by its master and workers (they write there); after the master is SIGKILLed and
    its workers are gone, the next start removes its directory, keeps the live master's, and says so."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"REDIS_URL": redis_url, "TMPDIR": temp}
    live = gunicorn_factory(env=env)
    killed = gunicorn_factory(env=env, workers=2)
    live_dir, killed_dir = private_dir(live), private_dir(killed)
    assert live_dir.parent == temp and killed_dir.parent == temp
    workers = killed.worker_pids()
    assert holders(killed_dir / "owner.lock") == {killed.pid} | workers

    killed.send(signal.SIGKILL)
    killed.wait_exit(10)
    wait_until(lambda: not any(process_alive(w) for w in workers), 20, interval=0.05, what="orphaned workers gone")
    assert killed_dir.is_dir(), "a killed master cannot remove its directory"

    third = gunicorn_factory(env=env)
    assert not killed_dir.exists()
    assert live_dir.is_dir() and private_dir(third).is_dir()
    assert "Removed 1 private metrics directories of masters that are gone" in third.log()
    assert live.request("GET", "/metrics").status == 200
    live.stop()
    assert not live_dir.exists()


def test_remove_stale_judges_each_directory(tmp_path):
    """Held lock: kept while its holder lives, removed after. No lock file yet: kept while the pid in its name
    lives or it is younger than the grace period, removed when both are over. Another naming: never touched."""
    holder = tmp_path / f"{metrics_dir.PREFIX}1-held"
    holder.mkdir()
    locker = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
        " print('locked', flush=True); sys.stdin.read()"), str(holder / metrics_dir.LOCK_NAME)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline() == "locked\n"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    old = time.time() - metrics_dir.UNLOCKED_GRACE - 10
    making_alive = tmp_path / f"{metrics_dir.PREFIX}{os.getpid()}-making"
    making_young = tmp_path / f"{metrics_dir.PREFIX}{gone.pid}-young"
    abandoned = tmp_path / f"{metrics_dir.PREFIX}{gone.pid}-abandoned"
    other = tmp_path / f"{metrics_dir.PREFIX}older-naming"
    for path in (making_alive, making_young, abandoned, other):
        path.mkdir()
    for path in (making_alive, abandoned, other):
        os.utime(path, (old, old))

    try:
        assert metrics_dir.remove_stale(str(tmp_path)) == 1
        assert not abandoned.exists()
        assert holder.is_dir() and making_alive.is_dir() and making_young.is_dir() and other.is_dir()
    finally:
        locker.kill()
        locker.wait()
    assert metrics_dir.remove_stale(str(tmp_path)) == 1
    assert not holder.exists() and making_alive.is_dir() and making_young.is_dir() and other.is_dir()
