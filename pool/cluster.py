"""redis-py's ``RedisCluster`` with one bounded greenpool per cluster node.

redis-py 8.1 builds a node's pool from ``connection_pool_class`` only when the cluster client was given
a ``url``; with ``startup_nodes`` alone every node gets redis-py's own ``ConnectionPool`` and the class is
ignored. ``cluster_client()`` therefore passes the first seed as the URL and the others as startup nodes.
Redirections (MOVED, ASK, TRYAGAIN) are followed by redis-py as usual: the refused command was not run.
Other errors are not retried unless ``retry`` says so (a connection error still refreshes the topology).
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

from gevent.lock import Semaphore
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from . import stats as S
from .errors import PoolClosed
from .handle import SharedHandle
from .options import OPTIONS
from .options import check as check_option
from .redis_pool import RedisPool

if TYPE_CHECKING:
    from .connection import ReplyTracking
    from .urls import RedisTarget

__all__ = ["ClusterNodePool", "ClusterPool", "NodePoolFactory", "PooledRedisCluster", "cluster_client"]

# The checkout deadline of the ``ClusterPool.client(timeout)`` block the current greenlet is in (None: the
# node pool's own). A context variable: each greenlet has its own context, and redis-py's cluster client
# asks a node's pool for a connection with no arguments, deep inside its command path.
_checkout_timeout: ContextVar[float | None] = ContextVar("greenpool_cluster_checkout_timeout", default=None)


class NodePoolFactory:
    """A ``connection_pool_class`` for ``RedisCluster``: builds ``pool_class`` pools with ``pool_options``.

    ``RedisCluster`` forwards only redis-py's own arguments to a node's pool (``max_connections``,
    ``timeout`` and connection arguments); the pool's other options (``min_size``, ``max_lifetime``,
    ``health_check_interval``, ...) come from here. A ``name`` gets the node's ``host:port`` appended.
    It remembers the pools it made so ``close_all()`` can close them (``RedisCluster.close()`` does not).
    """

    def __init__(self, pool_class: type[RedisPool] = RedisPool, **pool_options: Any) -> None:
        self.pool_class = pool_class
        self.name = pool_options.pop("name", None)
        self.pool_options = pool_options
        self.pools: weakref.WeakSet[RedisPool] = weakref.WeakSet()

    def __call__(self, **kwargs: Any) -> RedisPool:
        options = dict(self.pool_options)
        if self.name is not None:
            options["name"] = f"{self.name}:{kwargs.get('host')}:{kwargs.get('port')}"
        pool = self.pool_class(**kwargs, **options)
        self.pools.add(pool)
        return pool

    def close_all(self, timeout: float = 0.0) -> None:
        """Close every pool made here, waiting up to ``timeout`` seconds in all for borrowed connections."""
        deadline = time.monotonic() + timeout
        for pool in list(self.pools):
            pool.close(max(0.0, deadline - time.monotonic()))


class PooledRedisCluster(RedisCluster):
    """A ``RedisCluster`` whose ``close()`` also closes the node pools its ``NodePoolFactory`` made."""

    def close(self, timeout: float = 0.0) -> None:
        """Close the client and the node pools (once), waiting up to ``timeout`` seconds in all for
        connections borrowed from them."""
        factory = getattr(getattr(self, "nodes_manager", None), "connection_pool_class", None)
        if isinstance(factory, NodePoolFactory):
            factory.close_all(timeout)
        super().close()


def cluster_client(startup_nodes: Iterable[ClusterNode | tuple[str, int]], *, max_connections: int = 10,
                   pool_class: type[RedisPool] = RedisPool, pool_options: dict[str, Any] | None = None,
                   ssl: bool = False, retry: Retry | None = None, **kwargs: Any) -> PooledRedisCluster:
    """A ``PooledRedisCluster`` over ``startup_nodes`` (``(host, port)`` pairs or ``ClusterNode``s) using our pools.

    Each node gets its own ``pool_class`` of at most ``max_connections`` connections; ``pool_options``
    are the other pool options (see ``NodePoolFactory``). ``retry`` defaults to no retries.
    Other keywords go to ``RedisCluster`` (``password``, ``username``, ``socket_timeout``, ``timeout``
    for the checkout deadline, ...). Maintenance notifications are turned off (the pool does not support them).
    """
    nodes = [node if isinstance(node, ClusterNode) else ClusterNode(str(node[0]), int(node[1]))
             for node in startup_nodes]
    if not nodes:
        raise ValueError("startup_nodes must name at least one node")
    first, rest = nodes[0], nodes[1:]
    host = f"[{first.host}]" if ":" in first.host else first.host
    kwargs.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
    return PooledRedisCluster(
        # the URL form is what makes redis-py use connection_pool_class
        url=f"{'rediss' if ssl else 'redis'}://{host}:{first.port}",
        startup_nodes=rest,
        connection_pool_class=NodePoolFactory(pool_class, **(pool_options or {})),
        max_connections=max_connections,
        retry=retry if retry is not None else Retry(NoBackoff(), 0),
        **kwargs,
    )


class ClusterNodePool(RedisPool):
    """A node's pool in a ``ClusterPool``: exclusive checkouts honour the deadline of the ``client(timeout)``
    block they run in. With ``multiplex`` on, redis-py's cluster client gets a ``SharedHandle`` per command,
    as from any multiplexed ``RedisPool``: commands that may share go to this node's shared connections
    (their waits for room use the pool's own ``timeout``), the others (ASKING and the redirected command,
    transactions, blocking commands) move to an exclusive connection, borrowed under the block's deadline."""

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._mux is not None:
            return SharedHandle(self)
        return self.getconn(_checkout_timeout.get())

    def _getconn_exclusive(self) -> ReplyTracking:
        return self.getconn(_checkout_timeout.get())


class _ClusterBlock:
    """``with cluster_pool.client(timeout) as r``: ``r`` is the shared cluster client; the block's node
    checkouts wait up to ``timeout``; nothing to give back."""

    __slots__ = ("client", "timeout", "token")

    def __init__(self, client: PooledRedisCluster, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        self.token: Token[float | None] | None = None

    def __enter__(self) -> PooledRedisCluster:
        if self.timeout is not None:
            self.token = _checkout_timeout.set(self.timeout)
        return self.client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self.token is not None:
            _checkout_timeout.reset(self.token)
        return False


class ClusterPool:
    """A Redis Cluster seen as one pool: redis-py's cluster client with one ``ClusterNodePool`` per node.

    ``options`` are the pool options of every node's pool (``max_size`` bounds each node separately) and
    ``RedisCluster`` arguments; they override the URL's. The cluster client is made on the first
    ``client()``, not before: it reads the slot map from the seed nodes, and a cluster that cannot be reached
    then must fail that request (a ``ConnectionError``) and let a later one retry, not stop a process that is
    starting. ``get_stats()`` adds the node pools' numbers up (so ``pool_max`` is the total over the nodes).
    There is no ``connection()``: a raw connection reaches one node, and a key may live on any.
    """

    _URL_KIND = "cluster"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ClusterPool:
        """A pool for a ``redis+cluster://`` (or ``rediss+cluster://``) URL; keywords override its options."""
        from .urls import parse_redis_url

        target = parse_redis_url(url)
        if target.kind != cls._URL_KIND:
            raise ValueError(f"ClusterPool.from_url takes redis+cluster:// or rediss+cluster:// URLs, got "
                             f"{target.redacted_url!r}; pool.urls.parse_redis_url(url).make_pool() takes any")
        return cls(target, **options)

    @classmethod
    def from_target(cls, target: RedisTarget, **options: Any) -> ClusterPool:
        """A pool for a parsed cluster URL (``pool.urls.RedisTarget``)."""
        return cls(target, **options)

    def __init__(self, target: RedisTarget, **options: Any) -> None:
        if target.kind != self._URL_KIND:
            raise ValueError(f"a ClusterPool needs a cluster URL, got {target.redacted_url!r}")
        merged = {**target.pool_options, **options}
        for option, value in merged.items():
            if option in OPTIONS:
                check_option(option, value)
        self.target = target
        self.options = dict(options)
        self.name: str = merged.get("name") or f"cluster-{id(self):x}"
        self.max_size: int = merged.get("max_size", merged.get("max_connections", 10))
        multiplex = merged.get("multiplex", 0)
        if multiplex and multiplex >= self.max_size:  # each node pool would refuse it at the first request
            raise ValueError(f"multiplex ({multiplex}) must be below max_size ({self.max_size}): exclusive commands "
                             "(transactions, blocking commands, pub/sub) need connections of their own")
        self._client: PooledRedisCluster | None = None
        self._closed = False
        self._making = Semaphore()

    @property
    def closed(self) -> bool:
        return self._closed

    def client(self, timeout: float | None = None) -> _ClusterBlock:
        """``with pool.client(timeout) as r``: the cluster client, routing each command and script to the node
        serving its key. Each node checkout in the block waits up to ``timeout`` (default: the node pools')
        before ``PoolTimeout``; ``PoolClosed`` once closed."""
        client = self._client
        if client is None:
            client = self._connect()
        return _ClusterBlock(client, timeout)

    def shared_client(self) -> PooledRedisCluster:
        """The cluster client itself (``Backend.shared_client``): every greenlet may use it at once; each node
        checkout waits up to the node pools' ``timeout``; with ``multiplex`` on, the node pools share
        connections for the commands that may. Made on first use, like ``client()``."""
        client = self._client
        return client if client is not None else self._connect()

    def _connect(self) -> PooledRedisCluster:
        with self._making:  # concurrent first requests wait for one slot-map query
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            if self._client is None:
                try:
                    client = cast(PooledRedisCluster,  # what make_client() makes of a cluster URL
                                  self.target.make_client(pool_class=ClusterNodePool, **self.options))
                except RedisClusterException as error:  # no seed reachable: not a RedisError, make it one
                    raise RedisConnectionError(f"Redis Cluster {self.target.redacted_url}: {error}") from None
                self._client = client
            return self._client

    # -- introspection ----------------------------------------------------------------------------------
    def node_pools(self) -> dict[str, RedisPool]:
        """``{"host:port": ClusterNodePool}`` for the nodes the cluster client knows now."""
        client = self._client
        if client is None:
            return {}
        pools: dict[str, RedisPool] = {}
        for node in client.get_nodes():
            redis_node = node.redis_connection
            if redis_node is not None:
                pools[node.name] = redis_node.connection_pool
        return pools

    def get_stats(self) -> dict[str, int]:
        """The node pools' ``get_stats()`` added up (all keys of ``pool.stats``)."""
        return _sum(pool.get_stats() for pool in self.node_pools().values())

    def pop_stats(self) -> dict[str, int]:
        """The node pools' ``pop_stats()`` added up."""
        return _sum(pool.pop_stats() for pool in self.node_pools().values())

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Close every node pool once, waiting up to ``timeout`` seconds in all for borrowed connections;
        idempotent. Later ``client()`` calls raise ``PoolClosed``."""
        with self._making:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._client is not None else "not connected")
        return f"<ClusterPool {self.name!r} {state} {self.target!r}>"


def _sum(per_node: Iterable[dict[str, int]]) -> dict[str, int]:
    total = dict.fromkeys(S.GAUGES + S.COUNTERS, 0)
    for values in per_node:
        for key, value in values.items():
            total[key] = total.get(key, 0) + value
    return total
