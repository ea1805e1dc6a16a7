"""The Redis pool of one worker process: created on first use, in the worker (after gevent's monkey patching,
never in gunicorn's master, so ``--preload`` cannot share sockets), and closed by ``worker_exit``.

``REDIS_URL`` names the backend (see ``pool.urls``): a ``RedisPool`` for ``redis://``, ``rediss://`` and
``unix://``, a ``SentinelRedisPool`` for ``redis+sentinel://``, a ``ClusterPool`` for ``redis+cluster://``.
The service uses each through ``pool.backend.Backend`` only, without asking which one it has: every route's
commands go through the backend's ``shared_client()``, so with ``POOL_MULTIPLEX`` (default 2) they share a
few connections per worker (each node's, for a cluster), and with ``POOL_MULTIPLEX=0`` each command borrows
a connection of its own, as before.

The service speaks RESP2 unless ``REDIS_URL`` asks for another protocol (``?protocol=3``): it uses nothing of
RESP3 (no push messages, no client-side caching), and hiredis builds the RESP3 map of an HGETALL reply about 4.6x
slower than the RESP2 array (7.9 against 1.7 us for the 10-field hash of the benchmark); worker CPU per ``GET``
-5.6 % (docs/http-benchmarks.md). The library's own default stays redis-py's.
"""
import os

from pool import forks
from pool.urls import parse_redis_url

__all__ = ["SERVICE_PROTOCOL", "WorkerPool"]

SERVICE_PROTOCOL = 2  # RESP2, when REDIS_URL does not name a protocol (see the module docstring)


class WorkerPool:
    """Holds at most one pool per process; a forked child builds its own on first ``get()``."""

    def __init__(self, settings):
        self._settings = settings
        self._pool = None
        self._generation = forks.generation

    def get(self):
        """This process's pool, created now if needed (no I/O: connections are opened on checkout)."""
        pool = self._pool
        if pool is not None and self._generation == forks.generation:
            return pool
        pool = self._build()
        # a parent's pool is dropped, never closed: its sockets are not ours
        self._pool, self._generation = pool, forks.generation
        return pool

    def _build(self):
        s = self._settings
        target = parse_redis_url(s.redis_url)  # validated by settings.load(): does not raise here
        return target.make_pool(
            max_size=s.pool_max_size, min_size=s.pool_min_size, timeout=s.pool_timeout,
            max_waiting=s.pool_max_waiting, multiplex=s.pool_multiplex, name=f"web-{os.getpid()}",
            protocol=target.connection_kwargs.get("protocol", SERVICE_PROTOCOL))

    def shared_client(self):
        """This process's pool's ``shared_client()``: the one client every request's commands go through."""
        return self.get().shared_client()

    def peek(self):
        """This process's pool if it exists, else ``None``."""
        return self._pool if self._generation == forks.generation else None

    def close(self, timeout):
        """Close this process's pool, waiting up to ``timeout`` seconds for borrowed connections; idempotent."""
        pool = self.peek()
        if pool is None:
            return False
        pool.close(timeout=timeout)
        return True

