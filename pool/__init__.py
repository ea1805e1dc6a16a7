"""greenpool: a greenlet-safe Redis connection pool for gevent."""
from . import stats
from .client import PooledRedis
from .core import Pool
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .redis_pool import RedisPool
from .urls import redact_url

__all__ = [
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PooledRedis",
    "RedisPool",
    "TooManyRequests",
    "redact_url",
    "stats",
]
