"""The interface every Redis pool of the package offers, so a caller never asks which one it has.

``RedisPool`` (one server), ``SentinelRedisPool`` (the master Sentinel reports) and ``ClusterPool`` (a Redis
Cluster, one pool per node) are ``Backend``s; the first two also lend raw connections (``ConnectionBackend``).
``pool.urls.parse_redis_url(url).make_pool()`` builds the one a URL names.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from redis.connection import AbstractConnection

__all__ = ["Backend", "ConnectionBackend"]


@runtime_checkable
class Backend(Protocol):
    """A pool of Redis connections seen from its user."""

    name: str

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        ...

    def client(self, timeout: float | None = None) -> AbstractContextManager[Any]:
        """``with backend.client(timeout) as r``: a ``redis.Redis``-like client for the block (a pinned
        ``PooledRedis``, or the cluster client). Checkouts wait up to ``timeout`` seconds (default: the
        pool's) before ``PoolTimeout``; ``PoolClosed`` once closed. Every command and script of ``r`` may be
        used; nothing of ``r`` may be kept past the block."""
        ...

    def shared_client(self) -> Any:
        """A ``redis.Redis``-like client that every greenlet of the process may use at once, for the pool's
        life (not pinned, no block): each command takes what it needs for that command alone. A
        ``RedisPool`` (and ``SentinelRedisPool``) gives one ``PooledRedis`` on itself: with ``multiplex``
        on, commands that may share go to the shared connections and any other borrows an exclusive
        connection for the call; without, every command borrows one. A ``ClusterPool`` gives its cluster
        client, whose node pools multiplex alike. Checkouts and waits for room on a shared connection
        wait up to the pool's ``timeout``. Two commands may run on two connections: use ``client()`` for
        session state, transactions and WATCH, or to read your writes on one connection."""
        ...

    def get_stats(self) -> dict[str, int]:
        """Gauges and counters keyed by the names in ``pool.stats`` (a cluster adds its node pools' up)."""
        ...

    def pop_stats(self) -> dict[str, int]:
        """Like ``get_stats()``, then reset the counters."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new checkouts, wait up to ``timeout`` seconds for borrowed connections, close the rest.
        Idempotent."""
        ...


@runtime_checkable
class ConnectionBackend(Backend, Protocol):
    """A ``Backend`` that also lends one raw redis-py connection (a single server, or Sentinel's master)."""

    def connection(self, timeout: float | None = None) -> AbstractContextManager[AbstractConnection]:
        """``with backend.connection(timeout) as conn``: a raw redis-py connection for the block; closed,
        never reused, when the block ends with a cancellation or a connection error."""
        ...
