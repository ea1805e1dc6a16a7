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
import logging
import time
import weakref

import gevent
import redis
from gevent.event import AsyncResult
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from .core import Pool
from .redis_pool import RedisPool

__all__ = ["MasterConnection", "SentinelRedisPool"]

logger = logging.getLogger("pool")

# How the pool talks to the sentinels themselves, unless sentinel_kwargs say otherwise.
_SENTINEL_DEFAULTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "max_size": 2, "timeout": 1.0}


class MasterConnection(SentinelManagedConnection):
    """A connection to the current master: it tells its pool when that master turns out to be demoted."""

    def read_response(self, *args, **kwargs):
        try:  # skip SentinelManagedConnection's READONLY handling: the pool must hear of it
            return super(SentinelManagedConnection, self).read_response(*args, **kwargs)
        except ReadOnlyError:
            address = (self.host, self.port)
            self.disconnect()
            self.connection_pool.master_demoted(address)
            raise RedisConnectionError(
                f"{address[0]}:{address[1]} is no longer the master of {self.connection_pool.service_name!r}"
            ) from None

    def send_packed_command(self, command, check_health=True):
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
    ``master_check_interval`` (seconds, default 5.0, None = never) is how often a checkout asks the
    sentinels in the background whether the master moved. Every other argument is ``RedisPool``'s (pool
    options, and connection arguments for the master such as ``db``, ``password``, ``ssl=True``).

    While no master is known (during a failover), checkouts that need a new connection raise
    ``MasterNotFoundError`` (a ``redis.exceptions.ConnectionError``) or, while reconnects back off, a
    ``PoolError``; they never wait for the failover to finish. Commands are never retried.
    """

    is_master = True  # what SentinelManagedConnection asks its pool
    check_connection = False

    def __init__(self, sentinels, service_name, *, sentinel_kwargs=None, min_other_sentinels=0,
                 master_check_interval=5.0, connection_class=None, **options):
        if not isinstance(service_name, str) or not service_name:
            raise ValueError(f"service_name must be a non-empty string, got {service_name!r}")
        if master_check_interval is not None and (isinstance(master_check_interval, bool) or not isinstance(
                master_check_interval, (int, float)) or master_check_interval <= 0):
            raise ValueError(f"master_check_interval must be a number > 0 or None, got {master_check_interval!r}")
        if connection_class is None:
            connection_class = MasterSSLConnection if options.pop("ssl", False) else MasterConnection
        if not issubclass(connection_class, SentinelManagedConnection):
            raise ValueError(f"connection_class must subclass SentinelManagedConnection, got {connection_class!r}")
        self.service_name = service_name
        self.master_check_interval = master_check_interval
        self._master = None  # (host, port) last reported by the sentinels
        super().__init__(connection_class, **options)
        self.connection_kwargs["connection_pool"] = weakref.proxy(self)  # SentinelManagedConnection's locator
        self._own_sentinel_pools = []
        if isinstance(sentinels, Sentinel):
            self.sentinel = sentinels
        else:
            self.sentinel = self._make_sentinel(sentinels, sentinel_kwargs or {}, min_other_sentinels)

    def _make_sentinel(self, addresses, sentinel_kwargs, min_other_sentinels):
        addresses = [(str(host), int(port)) for host, port in addresses]
        if not addresses:
            raise ValueError("sentinels must name at least one (host, port)")
        sentinel = Sentinel([], min_other_sentinels=min_other_sentinels)
        for host, port in addresses:
            kwargs = dict(_SENTINEL_DEFAULTS, name=f"{self.name}:sentinel:{host}:{port}", host=host, port=port)
            kwargs.update(sentinel_kwargs)
            pool = RedisPool(**kwargs)
            self._own_sentinel_pools.append(pool)
            sentinel.sentinels.append(redis.Redis(connection_pool=pool))
        return sentinel

    def _reset_state(self):
        super()._reset_state()
        self._discovery = None  # AsyncResult of the sentinel query in flight, shared by concurrent askers
        self._refresher = None  # the background check greenlet, if one runs
        self._master_checked = time.monotonic()

    # -- where the master is ----------------------------------------------------------------------------
    @property
    def master_address(self):
        """The master's ``(host, port)`` as last reported by the sentinels (None before the first query)."""
        return self._master

    def get_master_address(self):
        """Ask the sentinels now (concurrent callers share one query); raise ``MasterNotFoundError``."""
        pending = self._discovery
        if pending is not None:
            return pending.get()
        pending = self._discovery = AsyncResult()
        self._master_checked = time.monotonic()
        try:
            address = self.sentinel.discover_master(self.service_name)
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

    def _note_master(self, address):
        old, self._master = self._master, address
        if old is not None and old != address:
            logger.warning("pool %r: master of %r moved from %s:%s to %s:%s; dropping connections to the old one",
                           self.name, self.service_name, *old, *address)
            self.reset()  # idle connections close now; borrowed ones are dropped at their next checkout

    def master_demoted(self, address):
        """A connection to ``address`` got READONLY: ask the sentinels again at once."""
        logger.warning("pool %r: %s:%s answered READONLY; asking the sentinels for the master of %r",
                       self.name, *address, self.service_name)
        try:
            self.get_master_address()
        except Exception as error:
            logger.warning("pool %r: no master for %r yet (%s)", self.name, self.service_name, error)

    def _check_in_background(self):
        """Start a background sentinel query if the last one is older than ``master_check_interval``."""
        interval = self.master_check_interval
        if interval is None or time.monotonic() - self._master_checked < interval:
            return
        if self._refresher is None and self._discovery is None:
            self._master_checked = time.monotonic()
            self._refresher = gevent.spawn(self._background_check)

    def _background_check(self):
        try:
            self.get_master_address()
        except Exception as error:
            logger.info("pool %r: background master check failed (%s)", self.name, error)
        finally:
            self._refresher = None

    # -- shared connections (multiplex=N) ----------------------------------------------------------------
    def _shared_error(self, shared, error):
        """READONLY on a shared connection: that caller gets a ConnectionError, the connection takes no more
        commands (the others' replies still arrive), and the sentinels are asked again at once."""
        if not isinstance(error, ReadOnlyError) or shared is None:
            return error
        address = (shared.conn.host, shared.conn.port)
        shared.retire("error")
        self.master_demoted(address)
        return RedisConnectionError(f"{address[0]}:{address[1]} is no longer the master of {self.service_name!r}")

    def _maintain_shared(self, shared_connections):
        """As ``_check`` does at checkout: ask the sentinels now and then; retire connections to a former master."""
        self._check_in_background()
        for shared in list(shared_connections):
            if (shared.conn.host, shared.conn.port) != self._master:
                shared.retire("lost")

    # -- resource hooks -------------------------------------------------------------------------------
    def _check(self, connection, idle_for):
        self._check_in_background()
        if (connection.host, connection.port) != self._master:
            return False  # a connection to a former master
        return super()._check(connection, idle_for)

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self, timeout=5.0):
        """Close the pool (see ``Pool.close``) and the connections to the sentinels that it opened."""
        super().close(timeout)
        refresher = self._refresher
        if refresher is not None:
            refresher.kill(block=False)
        for pool in self._own_sentinel_pools:
            pool.close(timeout=0)

    def __repr__(self):
        base = Pool.__repr__(self)
        master = "%s:%s" % self._master if self._master else "unknown"
        return f"{base[:-1]} service={self.service_name!r} master={master}/{self.connection_kwargs.get('db', 0)}>"
