"""The Redis pool of one worker process: created on first use, in the worker (after gevent's monkey patching,
never in gunicorn's master, so ``--preload`` cannot share sockets), and closed by ``worker_exit``.
"""
import logging
import os

from pool import RedisPool

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """Holds at most one ``RedisPool`` per process; a forked child builds its own on first ``get()``."""

    def __init__(self, settings):
        self._settings = settings
        self._pool = None
        self._pid = None

    def get(self):
        """This process's pool, created now if needed (no I/O: connections are opened on checkout)."""
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        s = self._settings
        pool = RedisPool.from_url(
            s.redis_url,
            max_size=s.pool_max_size,
            min_size=s.pool_min_size,
            timeout=s.pool_timeout,
            max_waiting=s.pool_max_waiting,
            name=f"web-{os.getpid()}",
        )
        self._pool, self._pid = pool, os.getpid()  # a parent's pool is dropped, never closed: its sockets are not ours
        return pool

    def peek(self):
        """This process's pool if it exists, else ``None``."""
        return self._pool if self._pid == os.getpid() else None

    def close(self, timeout):
        """Close this process's pool, waiting up to ``timeout`` seconds for borrowed connections; idempotent."""
        pool = self.peek()
        if pool is None:
            return False
        pool.close(timeout=timeout)
        return True
