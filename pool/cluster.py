"""redis-py's ``RedisCluster`` with one bounded greenpool per cluster node.

redis-py 8.1 builds a node's pool from ``connection_pool_class`` only when the cluster client was given
a ``url``; with ``startup_nodes`` alone every node gets redis-py's own ``ConnectionPool`` and the class is
ignored. ``cluster_client()`` therefore passes the first seed as the URL and the others as startup nodes.
Redirections (MOVED, ASK, TRYAGAIN) are followed by redis-py as usual: the refused command was not run.
Other errors are not retried unless ``retry`` says so (a connection error still refreshes the topology).
"""
import weakref

from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from .redis_pool import RedisPool

__all__ = ["NodePoolFactory", "PooledRedisCluster", "cluster_client", "node_pool_factory"]


class NodePoolFactory:
    """A ``connection_pool_class`` for ``RedisCluster``: builds ``pool_class`` pools with ``pool_options``.

    ``RedisCluster`` forwards only redis-py's own arguments to a node's pool (``max_connections``,
    ``timeout`` and connection arguments); the pool's other options (``min_size``, ``max_lifetime``,
    ``health_check_interval``, ...) come from here. A ``name`` gets the node's ``host:port`` appended.
    It remembers the pools it made so ``close_all()`` can close them (``RedisCluster.close()`` does not).
    """

    def __init__(self, pool_class=RedisPool, **pool_options):
        self.pool_class = pool_class
        self.name = pool_options.pop("name", None)
        self.pool_options = pool_options
        self.pools = weakref.WeakSet()

    def __call__(self, **kwargs):
        options = dict(self.pool_options)
        if self.name is not None:
            options["name"] = f"{self.name}:{kwargs.get('host')}:{kwargs.get('port')}"
        pool = self.pool_class(**kwargs, **options)
        self.pools.add(pool)
        return pool

    def close_all(self, timeout=0.0):
        for pool in list(self.pools):
            pool.close(timeout)


node_pool_factory = NodePoolFactory


class PooledRedisCluster(RedisCluster):
    """A ``RedisCluster`` whose ``close()`` also closes the node pools its ``NodePoolFactory`` made."""

    def close(self):
        super().close()
        factory = getattr(getattr(self, "nodes_manager", None), "connection_pool_class", None)
        if isinstance(factory, NodePoolFactory):
            factory.close_all()


def cluster_client(startup_nodes, *, max_connections=10, pool_class=RedisPool, pool_options=None, ssl=False,
                   retry=None, **kwargs):
    """A ``PooledRedisCluster`` over ``startup_nodes`` (``(host, port)`` pairs or ``ClusterNode``s) using our pools.

    Each node gets its own ``pool_class`` of at most ``max_connections`` connections; ``pool_options``
    are the other pool options (see ``node_pool_factory``). ``retry`` defaults to no retries.
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
        url=f"{'rediss' if ssl else 'redis'}://{host}:{first.port}",  # the URL form is what makes redis-py use the class
        startup_nodes=rest,
        connection_pool_class=NodePoolFactory(pool_class, **(pool_options or {})),
        max_connections=max_connections,
        retry=retry if retry is not None else Retry(NoBackoff(), 0),
        **kwargs,
    )
