"""The embedded redis-server's data directory (``REDIS_DATA_DIR``): created with a message that says why it cannot
be, and locked so that one gunicorn master at a time serves it.

The lock is an exclusive ``flock`` on ``redis.lock`` in the directory, taken without waiting. A lock belongs to
an open file description: it dies with the last process holding a descriptor of it, however that process ends
(SIGKILL included), so a crashed master never leaves a directory locked. Who holds it, on purpose: the master,
for its lifetime, and its redis-server (given the descriptor at start), which writes the data and may still be
saving it for a moment after the master died; gunicorn's workers close their inherited copy (``post_fork``):
they never write here, and a worker orphaned by a killed master must not keep the directory from a new one.
The file stays in place (removing a lock file lets two processes lock two different files).
"""
import errno
import fcntl
import os

__all__ = ["LOCK_NAME", "EmbeddedError", "create", "lock"]

LOCK_NAME = "redis.lock"


class EmbeddedError(RuntimeError):
    """The embedded redis-server cannot start; gunicorn prints the one-line message (``Error: ...``) and exits 1."""


def create(path):
    """Create the data directory ``path`` (and its parents) if needed; ``EmbeddedError`` saying why it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise EmbeddedError(f"REDIS_DATA_DIR {path} cannot be created: {_why(error, path)}") from None
    if not os.path.isdir(path):  # makedirs(exist_ok=True) accepts a symlink to a file on some systems
        raise EmbeddedError(f"REDIS_DATA_DIR {path} cannot be created: it exists and is not a directory")
    return path


def lock(path, holder=None):
    """Lock the data directory ``path`` for this process; returns the lock's file descriptor (close it to unlock).

    Never waits: ``EmbeddedError`` ("... already serves ...") if another master holds it, or saying why the lock
    file cannot be written. ``holder`` (default: this pid) is written into the file for that message.
    """
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise EmbeddedError(f"REDIS_DATA_DIR {path} is not writable: cannot create {lock_path}: "
                            f"{_why(error, lock_path)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read(fd)
        os.close(fd)
        raise EmbeddedError(
            f"a redis-server already serves REDIS_DATA_DIR {path} (for gunicorn master {owner or 'unknown'}): "
            "another gunicorn uses this directory; stop it or choose another REDIS_DATA_DIR") from None
    except BaseException:
        os.close(fd)
        raise
    _write(fd, f"pid {holder or os.getpid()}\n")
    return fd


def _read(fd):
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _write(fd, text):
    """Best effort: the holder's pid only makes the other masters' message more helpful."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


def _why(error, path):
    """What ``error`` (raised for ``path``) means, in words that point at the part of the path at fault."""
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _first_non_directory(path)
        if blocker:
            return f"{blocker} is a file, not a directory"
    if error.errno == errno.EACCES:
        return f"permission denied for the user running gunicorn (uid {os.geteuid()}) in {_deepest_existing(path)}"
    if error.errno == errno.EPERM:  # e.g. an immutable directory (chattr +i), which binds root too
        return f"operation not permitted in {_deepest_existing(path)}"
    if error.errno == errno.EROFS:
        return f"{_deepest_existing(path)} is on a read-only file system"
    return error.strerror or str(error)


def _first_non_directory(path):
    """The first existing component of ``path`` (from the root down) that is not a directory, or None."""
    current = os.path.abspath(path)
    parts = []
    while current != os.path.dirname(current):
        parts.append(current)
        current = os.path.dirname(current)
    for part in reversed(parts):
        if os.path.lexists(part) and not os.path.isdir(part):
            return part
    return None


def _deepest_existing(path):
    current = os.path.abspath(path)
    while not os.path.exists(current) and current != os.path.dirname(current):
        current = os.path.dirname(current)
    return current
