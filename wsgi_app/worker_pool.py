"""The Redis pool of one worker process: created on first use, in the worker (after gevent's monkey patching,
never in gunicorn's master, so ``--preload`` cannot share sockets), and closed by ``worker_exit``.

What ``get()`` returns depends on ``REDIS_URL`` (see ``pool.urls``); all three answer the service's calls
(``client()``, ``get_stats()``, ``pop_stats()``, ``close()``):

- ``redis://``, ``rediss://``, ``unix://``: a ``RedisPool`` (the hot path, unchanged);
- ``redis+sentinel://``: a ``SentinelRedisPool``, a ``RedisPool`` whose connections reach the current master;
- ``redis+cluster://``: a ``ClusterPool``, which holds redis-py's cluster client (one bounded ``RedisPool`` per
  node). Its ``client()`` hands out that cluster client itself, not a pinned connection: every command and
  script goes to the node serving its key.
"""
import logging
import os
import time

from gevent.lock import Semaphore
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from pool import RedisPool
from pool import stats as S
from pool.urls import parse_redis_url

__all__ = ["ClusterPool", "WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """Holds at most one pool per process; a forked child builds its own on first ``get()``."""

    def __init__(self, settings):
        self._settings = settings
        self._pool = None
        self._pid = None

    def get(self):
        """This process's pool, created now if needed (no I/O: connections are opened on checkout)."""
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        pool = self._build()
        self._pool, self._pid = pool, os.getpid()  # a parent's pool is dropped, never closed: its sockets are not ours
        return pool

    def _build(self):
        s = self._settings
        options = dict(max_size=s.pool_max_size, min_size=s.pool_min_size, timeout=s.pool_timeout,
                       max_waiting=s.pool_max_waiting, name=f"web-{os.getpid()}")
        scheme = s.redis_url.partition("://")[0].lower()
        if "+" not in scheme:
            return RedisPool.from_url(s.redis_url, **options)
        target = parse_redis_url(s.redis_url)  # validated by settings.load(): does not raise here
        if target.kind == "sentinel":
            return target.make_pool(**options)
        return ClusterPool(target, options)

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


class _Shared:
    """``with cluster_pool.client() as r``: ``r`` is the shared cluster client; nothing to give back."""

    __slots__ = ("client",)

    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, exc_type, exc, tb):
        return False


class ClusterPool:
    """A Redis Cluster seen as one pool: the cluster client of ``target`` with one ``RedisPool`` per node.

    ``options`` are the pool options of every node's pool (``max_size`` bounds each node separately). The
    cluster client is made on the first ``client()``, not before: it reads the slot map from the seed nodes,
    and a cluster that cannot be reached then must give 503s (and a later retry), not a worker that fails
    to boot. ``get_stats()`` sums the node pools' numbers (so ``pool_max`` is the total over the nodes);
    ``node_stats()`` gives them per node.
    """

    def __init__(self, target, options):
        self.target = target
        self.options = dict(options)
        self.name = self.options.get("name")
        self.max_size = self.options["max_size"]
        self._client = None
        self._shared = None
        self._closed = False
        self._making = Semaphore()

    @property
    def closed(self):
        return self._closed

    def client(self, timeout=None):
        """A context manager giving the cluster client (``timeout``: each node pool's checkout deadline applies)."""
        shared = self._shared
        if shared is None:
            shared = self._connect()
        return shared

    def _connect(self):
        with self._making:  # concurrent first requests wait for one slot-map query
            if self._closed:
                raise RedisConnectionError(f"pool {self.name!r} is closed")
            if self._shared is None:
                try:
                    client = self.target.make_client(**self.options)
                except RedisClusterException as error:  # no seed reachable: not a RedisError, make it a 503
                    raise RedisConnectionError(f"Redis Cluster {self.target.redacted_url}: {error}") from None
                self._client, self._shared = client, _Shared(client)
            return self._shared

    # -- introspection ----------------------------------------------------------------------------------
    def node_pools(self):
        """``{"host:port": RedisPool}`` for the nodes the cluster client knows now."""
        client = self._client
        if client is None:
            return {}
        pools = {}
        for node in client.get_nodes():
            redis_node = node.redis_connection
            if redis_node is not None:
                pools[node.name] = redis_node.connection_pool
        return pools

    def node_stats(self):
        return {name: pool.get_stats() for name, pool in self.node_pools().items()}

    def get_stats(self):
        """The node pools' ``get_stats()`` added up (all keys of ``pool.stats``)."""
        return self._sum(pool.get_stats() for pool in self.node_pools().values())

    def pop_stats(self):
        return self._sum(pool.pop_stats() for pool in self.node_pools().values())

    @staticmethod
    def _sum(per_node):
        total = dict.fromkeys(S.GAUGES + S.COUNTERS, 0)
        for values in per_node:
            for key, value in values.items():
                total[key] = total.get(key, 0) + value
        return total

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self, timeout=5.0):
        """Close every node pool, waiting up to ``timeout`` seconds in all for borrowed connections; idempotent."""
        with self._making:
            self._closed = True
            client, self._client, self._shared = self._client, None, None
        if client is None:
            return
        factory = client.nodes_manager.connection_pool_class  # a NodePoolFactory: it knows every pool it made
        deadline = time.monotonic() + timeout
        for pool in list(factory.pools):
            pool.close(timeout=max(0.0, deadline - time.monotonic()))
        client.close()

    def __repr__(self):
        state = "closed" if self._closed else ("open" if self._client is not None else "not connected")
        return f"<ClusterPool {self.name!r} {state} {self.target!r}>"
