"""Every way a checkout can fail, one class each.

They subclass redis-py's ``ConnectionError`` so code that already catches that keeps working.
"""
from redis.exceptions import ConnectionError as RedisConnectionError

# redis-py's name for "the pool is exhausted, the node is fine": RedisCluster then keeps its slot map
from redis.exceptions import MaxConnectionsError as _Exhausted

__all__ = ["PoolClosed", "PoolError", "PoolTimeout", "TooManyRequests"]


class PoolError(RedisConnectionError):
    """Base class of the pool's own errors."""


class PoolTimeout(PoolError, _Exhausted):
    """No connection became available before the checkout deadline."""


class PoolClosed(PoolError, _Exhausted):
    """The pool is closed (or closing) and hands out no more connections."""


class TooManyRequests(PoolError, _Exhausted):
    """``max_waiting`` greenlets are already queued; this one was refused at once."""
