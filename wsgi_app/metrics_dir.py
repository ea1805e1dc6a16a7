"""The gunicorn master's private ``PROMETHEUS_MULTIPROC_DIR``, made when the user sets none.

``settle()`` runs at the top of ``gunicorn.conf.py``, before anything imports prometheus_client (which picks its
mode at import). It makes ``<temp dir>/greenpool-metrics-<pid>-XXXXXXXX`` and holds an exclusive ``flock`` on
its ``owner.lock``: the master for its lifetime and its workers, which inherit the descriptor through fork and
write their metric files there, until the last of them is gone (a lock dies with the last descriptor of it,
SIGKILL included). The master removes the directory when it exits. A master that was SIGKILLed cannot, so
``settle()`` first removes every private directory whose lock it can take: provably nobody uses it any more.
Another live master's stays (its lock is held). A directory caught between its ``mkdtemp`` and its lock (the
lock file appears, already locked, by a rename) is only removed once its maker is gone and it is a minute old.

A USR2 re-exec inherits our environment, so another master's private directory gets a fresh one; a HUP
re-executes the config file in this master, which keeps its directory (the state lives in this module).
"""
import atexit
import fcntl
import glob
import os
import shutil
import tempfile
import time

__all__ = ["PREFIX", "remove_stale", "settle"]

PREFIX = "greenpool-metrics-"
LOCK_NAME = "owner.lock"
ENV = "GREENPOOL_PRIVATE_METRICS_DIR"  # "<master pid>:<dir>" when a master made the directory
UNLOCKED_GRACE = 60.0  # seconds: a directory without its lock file may still be in the making

_made = None  # (pid, path, lock descriptor) of the directory this process made
stale_removed = 0  # how many stale directories settle() removed (gunicorn.conf.py logs it)


def settle(environ=None):
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a private directory unless the user set one (or this master made
    one already); returns the private directory, or None."""
    global _made, stale_removed
    environ = os.environ if environ is None else environ
    owner, _, private = environ.get(ENV, "").partition(":")
    if owner == str(os.getpid()):
        return private
    if environ.get("PROMETHEUS_MULTIPROC_DIR") and not private:
        return None  # the user's own directory
    stale_removed = remove_stale()
    path, fd = _make_locked()
    _made = (os.getpid(), path, fd)
    environ["PROMETHEUS_MULTIPROC_DIR"] = path
    environ[ENV] = f"{os.getpid()}:{path}"
    atexit.register(_remove_made)  # also after a settings error later in gunicorn.conf.py
    return path


def _make_locked():
    """A fresh private directory whose ``owner.lock`` this process holds from the moment it has that name."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    making = os.path.join(path, f".{LOCK_NAME}")
    fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a file only we know of: never refused
    os.rename(making, os.path.join(path, LOCK_NAME))
    return path, fd


def _remove_made():
    made = _made
    if made is None or made[0] != os.getpid():  # the workers inherit this exit handler
        return
    shutil.rmtree(made[1], ignore_errors=True)
    os.close(made[2])


def remove_stale(temp_dir=None):
    """Remove the private directories in ``temp_dir`` (default: the temp dir) that nobody uses; returns how many."""
    pattern = os.path.join(glob.escape(temp_dir or tempfile.gettempdir()), f"{PREFIX}*")
    return sum(_remove_if_stale(path) for path in glob.glob(pattern) if os.path.isdir(path))


def _remove_if_stale(path):
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return _remove_if_abandoned(path)
    except OSError:
        return False  # not ours to judge (another user's, say)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its master or one of its workers is alive
    else:
        shutil.rmtree(path, ignore_errors=True)  # while holding the lock
        return not os.path.exists(path)
    finally:
        os.close(fd)


def _remove_if_abandoned(path):
    """A directory without ``owner.lock``: stale only if its maker (the pid in its name) is gone and it is old."""
    pid = os.path.basename(path)[len(PREFIX):].partition("-")[0]
    if not pid.isdigit() or _alive(int(pid)):
        return False  # another naming (an older greenpool's), or still in the making
    try:
        if time.time() - os.stat(path).st_mtime < UNLOCKED_GRACE:
            return False
    except OSError:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.exists(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
