"""greenpool: a greenlet-safe Redis connection pool for gevent."""
from . import stats
from .core import Pool
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .redis_pool import RedisPool, redact_url

__all__ = [
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "RedisPool",
    "TooManyRequests",
    "redact_url",
    "stats",
]
