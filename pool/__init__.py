"""greenpool: a greenlet-safe Redis connection pool for gevent.

``SentinelRedisPool`` (``pool.sentinel``) and ``ClusterPool`` (``pool.cluster``) are imported from their
modules, so a program that uses neither does not load redis-py's Sentinel and Cluster clients.
"""
from . import stats
from .backend import Backend, ConnectionBackend
from .client import PooledRedis
from .core import Pool
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .redis_pool import RedisPool
from .urls import parse_redis_url, redact_url

__all__ = [
    "Backend",
    "ConnectionBackend",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PooledRedis",
    "RedisPool",
    "TooManyRequests",
    "parse_redis_url",
    "redact_url",
    "stats",
]
