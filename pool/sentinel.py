"""A ``RedisPool`` whose connections go to the master that Redis Sentinel reports.

The sentinels are asked through redis-py's ``redis.sentinel.Sentinel`` (each sentinel reached through a
small ``RedisPool`` of its own, so the sentinel queries have the same reply guarantees). A new connection
asks for the master's address as it connects (redis-py's ``SentinelManagedConnection``); concurrent
connects share one query. A failover is noticed three ways:

- the old master died: its connections fail (EOF at checkout, or an error in use) and are replaced;
- the old master was demoted and answers ``READONLY``: that command fails with a ``ConnectionError``
  (never retried), the connection is closed and the sentinels are asked again at once;
- every ``master_check_interval`` seconds a checkout triggers a background query; idle connections to
  an address that is no longer the master are discarded at checkout (counted as ``connections_lost``).
"""
from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gevent
import redis
from gevent.event import AsyncResult
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .core import Pool
from .options import check as check_option
from .redis_pool import RedisPool

if TYPE_CHECKING:
    from .connection import ReplyTracking
    from .shared import SharedConnection
    from .urls import RedisTarget

Address = tuple[str, int]

__all__ = ["MasterConnection", "MasterSSLConnection", "SentinelRedisPool"]

logger = logging.getLogger("pool")

# How the pool talks to the sentinels themselves, unless sentinel_kwargs say otherwise.
_SENTINEL_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 0.5, "socket_timeout": 0.5, "max_size": 2, "timeout": 1.0,
}


class MasterConnection(SentinelManagedConnection):
    """A connection to the current master: it tells its pool when that master turns out to be demoted."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:  # skip SentinelManagedConnection's READONLY handling: the pool must hear of it
            return super(SentinelManagedConnection, self).read_response(*args, **kwargs)
        except ReadOnlyError:
            address = (self.host, self.port)
            self.disconnect()
            self.connection_pool.master_demoted(address)
            raise RedisConnectionError(
                f"{address[0]}:{address[1]} is no longer the master of {self.connection_pool.service_name!r}"
            ) from None

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:  # reconnect through the sentinels, not to the last address
            self.connect()
        super().send_packed_command(command, check_health=check_health)


class MasterSSLConnection(MasterConnection, SentinelManagedSSLConnection):
    pass


class SentinelRedisPool(RedisPool):
    """A greenlet-safe pool of connections to the master of ``service_name``, found through Redis Sentinel.

    ``sentinels`` is a list of ``(host, port)`` pairs, or a ready ``redis.sentinel.Sentinel``.
    ``sentinel_kwargs`` configure the connections to the sentinels (``password``, ``username``,
    ``socket_timeout``, ...; defaults: 0.5 s timeouts, at most 2 connections per sentinel).
    ``master_check_interval`` (seconds, default 5.0; 0 or None = never) is how often a checkout asks the
    sentinels in the background whether the master moved. Every other argument is ``RedisPool``'s (pool
    options, and connection arguments for the master such as ``db``, ``password``, ``ssl=True``).

    While no master is known (during a failover), checkouts that need a new connection raise
    ``MasterNotFoundError`` (a ``redis.exceptions.ConnectionError``) or, while reconnects back off, a
    ``PoolError``; they never wait for the failover to finish. Commands are never retried.
    """

    _URL_KIND, _URL_KINDS = "sentinel", "redis+sentinel:// or rediss+sentinel://"
    is_master = True  # what SentinelManagedConnection asks its pool
    check_connection = False

    def __init__(self, sentinels: Iterable[tuple[str, int]] | Sentinel, service_name: str, *,
                 sentinel_kwargs: dict[str, Any] | None = None, min_other_sentinels: int = 0,
                 master_check_interval: float | None = 5.0,
                 connection_class: type[SentinelManagedConnection] | None = None, **options: Any) -> None:
        if not isinstance(service_name, str) or not service_name:
            raise ValueError(f"service_name must be a non-empty string, got {service_name!r}")
        check_option("master_check_interval", master_check_interval)
        check_option("min_other_sentinels", min_other_sentinels)
        if connection_class is None:
            connection_class = MasterSSLConnection if options.pop("ssl", False) else MasterConnection
        if not issubclass(connection_class, SentinelManagedConnection):
            raise ValueError(  # noqa: TRY004 -- constructor arguments are refused with ValueError (STYLE)
                f"connection_class must subclass SentinelManagedConnection, got {connection_class!r}")
        self.service_name = service_name
        self.master_check_interval = master_check_interval
        self._master: Address | None = None  # (host, port) last reported by the sentinels
        super().__init__(connection_class, **options)
        self.connection_kwargs["connection_pool"] = weakref.proxy(self)  # SentinelManagedConnection's locator
        self._own_sentinel_pools: list[RedisPool] = []
        if isinstance(sentinels, Sentinel):
            self.sentinel = sentinels
        else:
            self.sentinel = self._make_sentinel(sentinels, sentinel_kwargs or {}, min_other_sentinels)

    @classmethod
    def from_target(cls, target: RedisTarget, **options: Any) -> SentinelRedisPool:
        """A pool for a parsed ``redis+sentinel://`` URL (``pool.urls.RedisTarget``); keywords override it."""
        kwargs = {**target.connection_kwargs, **target.pool_options, **options}
        kwargs.setdefault("master_check_interval", target.master_check_interval)
        kwargs.setdefault("min_other_sentinels", target.min_other_sentinels)
        return cls(target.addresses, target.service_name or "", sentinel_kwargs=dict(target.sentinel_kwargs), **kwargs)

    def _make_sentinel(self, addresses: Iterable[tuple[str, int]], sentinel_kwargs: dict[str, Any],
                       min_other_sentinels: int) -> Sentinel:
        addresses = [(str(host), int(port)) for host, port in addresses]
        if not addresses:
            raise ValueError("sentinels must name at least one (host, port)")
        sentinel = Sentinel([], min_other_sentinels=min_other_sentinels)
        for host, port in addresses:
            kwargs = dict(_SENTINEL_DEFAULTS, name=f"{self.name}:sentinel:{host}:{port}", host=host, port=port)
            kwargs.update(sentinel_kwargs)
            pool = RedisPool(**kwargs)
            self._own_sentinel_pools.append(pool)
            sentinel.sentinels.append(redis.Redis(connection_pool=pool))  # type: ignore[arg-type]  # an interface
        return sentinel

    def _reset_state(self) -> None:
        super()._reset_state()
        self._discovery: Any = None  # AsyncResult of the sentinel query in flight, shared by concurrent askers
        self._refresher: Any = None  # the background check greenlet, if one runs
        self._master_checked = time.monotonic()

    # -- where the master is ----------------------------------------------------------------------------
    @property
    def master_address(self) -> Address | None:
        """The master's ``(host, port)`` as last reported by the sentinels (None before the first query)."""
        return self._master

    def get_master_address(self) -> Address:
        """Ask the sentinels now (concurrent callers share one query); raise ``MasterNotFoundError``."""
        pending = self._discovery
        if pending is not None:
            found: Address = pending.get()
            return found
        pending = self._discovery = AsyncResult()
        self._master_checked = time.monotonic()
        try:
            address: Address = self.sentinel.discover_master(self.service_name)
        except Exception as error:
            pending.set_exception(error)
            raise
        except BaseException:  # the asker was killed: the others get an error of their own, not its GreenletExit
            pending.set_exception(MasterNotFoundError(f"the query for {self.service_name!r} was interrupted"))
            raise
        finally:
            self._discovery = None
        self._note_master(address)
        pending.set(address)
        return address

    def _note_master(self, address: Address) -> None:
        old, self._master = self._master, address
        if old is not None and old != address:
            logger.warning("pool %r: master of %r moved from %s:%s to %s:%s; dropping connections to the old one",
                           self.name, self.service_name, *old, *address)
            self.reset()  # idle connections close now; borrowed ones are dropped at their next checkout

    def master_demoted(self, address: Address) -> None:
        """A connection to ``address`` got READONLY: ask the sentinels again at once."""
        logger.warning("pool %r: %s:%s answered READONLY; asking the sentinels for the master of %r",
                       self.name, *address, self.service_name)
        try:
            self.get_master_address()
        except Exception as error:  # noqa: BLE001 -- whatever the sentinels say, the READONLY error stands
            logger.warning("pool %r: no master for %r yet (%s)", self.name, self.service_name, error)

    def _check_in_background(self) -> None:
        """Start a background sentinel query if the last one is older than ``master_check_interval``."""
        interval = self.master_check_interval
        if not interval or time.monotonic() - self._master_checked < interval:
            return
        if self._refresher is None and self._discovery is None:
            self._master_checked = time.monotonic()
            self._refresher = gevent.spawn(self._background_check)

    def _background_check(self) -> None:
        try:
            self.get_master_address()
        except Exception as error:  # noqa: BLE001 -- a background check: logged, tried again later
            logger.info("pool %r: background master check failed (%s)", self.name, error)
        finally:
            self._refresher = None

    # -- shared connections (multiplex=N) ----------------------------------------------------------------
    def _shared_error(self, shared: SharedConnection | None, error: BaseException) -> BaseException:
        """READONLY on a shared connection: that caller gets a ConnectionError, the connection takes no more
        commands (the others' replies still arrive), and the sentinels are asked again at once."""
        if not isinstance(error, ReadOnlyError) or shared is None:
            return error
        address = (shared.conn.host, shared.conn.port)
        shared.retire("error")
        self.master_demoted(address)
        return RedisConnectionError(f"{address[0]}:{address[1]} is no longer the master of {self.service_name!r}")

    def _maintain_shared(self, shared_connections: Iterable[SharedConnection]) -> None:
        """As ``_check`` does at checkout: ask the sentinels now and then; retire connections to a former master."""
        self._check_in_background()
        for shared in list(shared_connections):
            if (shared.conn.host, shared.conn.port) != self._master:
                shared.retire("lost")

    # -- resource hooks -------------------------------------------------------------------------------
    def _check(self, connection: ReplyTracking, idle_for: float) -> bool:
        self._check_in_background()
        if (connection.host, connection.port) != self._master:
            return False  # a connection to a former master
        return super()._check(connection, idle_for)

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self, timeout: float | None = 5.0) -> None:
        """Close the pool (see ``Pool.close``) and the connections to the sentinels that it opened."""
        super().close(timeout)
        refresher = self._refresher
        if refresher is not None:
            refresher.kill(block=False)
        for pool in self._own_sentinel_pools:
            pool.close(timeout=0)

    def __repr__(self) -> str:
        base = Pool.__repr__(self)
        master = f"{self._master[0]}:{self._master[1]}" if self._master else "unknown"
        return f"{base[:-1]} service={self.service_name!r} master={master}/{self.connection_kwargs.get('db', 0)}>"
