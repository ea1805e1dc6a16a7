"""The Redis binding: the core pool lending redis-py connections, usable wherever redis-py takes a pool."""
from __future__ import annotations

import copy
import logging
import re
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import gevent
from redis.backoff import NoBackoff
from redis.connection import (  # type: ignore[attr-defined]  # Encoder: redis-py re-exports it without __all__
    AbstractConnection,
    Connection,
    ConnectionPoolInterface,
    Encoder,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import forks
from .client import DELEGATED, PooledRedis
from .connection import ReplyTracking, tracked_class
from .core import Pool
from .errors import PoolError
from .handle import SharedHandle
from .multiplex import MultiplexedPool
from .options import check as check_option
from .urls import parse_redis_url

if TYPE_CHECKING:
    from redis.maint_notifications import MaintNotificationsConfig

    from .urls import RedisTarget

_P = TypeVar("_P", bound="RedisPool")

__all__ = ["RedisPool"]

logger = logging.getLogger("pool")

_NOT_A_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.:-]")


class RedisPool(MultiplexedPool, Pool[ReplyTracking], ConnectionPoolInterface):
    """A greenlet-safe pool of redis-py connections that ``redis.Redis(connection_pool=...)`` accepts.

    Pool options are the core ``Pool``'s plus ``health_check_interval`` (default 30 s: a connection idle
    longer than this is PINGed at checkout, and a subscribed one gets redis-py's keepalive PING at this
    interval; 0 or None = never). Every other keyword is a redis-py connection argument (``host``, ``port``,
    ``db``, ``password``, ``socket_timeout``, ...). Connections are named ``greenpool:<name>`` unless
    ``client_name`` gives a name (None keeps ours); a user whose ACL refuses CLIENT SETNAME connects
    unnamed. Nothing is retried unless asked for: ``retry=``, or ``retry_on_error`` / ``retry_on_timeout``
    (without ``retry=``: one retry, no backoff, as redis-py's ``Connection`` does); ``self.retry`` is the policy.

    ``multiplex`` (default 0: off) is the number of shared connections: with ``multiplex=N`` the commands
    that may share (``pool.commands``) from ``redis.Redis(connection_pool=p)``, ``PooledRedis``,
    ``RedisCluster`` node clients and ``p.execute()`` are coalesced onto up to N connections, each reply
    still reaching its own sender; everything else borrows an exclusive connection as without it.
    N must be below ``max_size`` so exclusive commands still find a connection. Each shared connection
    owes at most ``multiplex_max_in_flight`` replies (default 1000) and queues at most
    ``multiplex_max_queued_bytes`` unwritten bytes (default 4 MiB); beyond that callers wait in arrival
    order under ``timeout`` and ``max_waiting`` (``PoolTimeout``, ``TooManyRequests``, ``PoolClosed``).
    """

    _URL_KIND, _URL_KINDS = "redis", "redis://, rediss:// or unix://"

    @classmethod
    def from_url(cls: type[_P], url: str, **options: Any) -> _P:  # noqa: PYI019 (typing.Self is Python 3.11+)
        """A pool for a URL of the kind this class serves (``RedisPool``: redis://, rediss://, unix://;
        ``SentinelRedisPool``: redis+sentinel://); keywords override the URL's query. See ``pool.urls``."""
        target = parse_redis_url(url)
        if target.kind != cls._URL_KIND:
            raise ValueError(f"{cls.__name__}.from_url takes {cls._URL_KINDS} URLs, got {target.redacted_url!r}; "
                             "pool.urls.parse_redis_url(url).make_pool() takes any")
        return cls.from_target(target, **options)

    @classmethod
    def from_target(cls: type[_P], target: RedisTarget, **options: Any) -> _P:  # noqa: PYI019 (as above)
        """A pool for a parsed URL (``pool.urls.RedisTarget``); keywords override the URL's options."""
        return cls(**{**target.connection_kwargs, **target.pool_options, **options})

    def __init__(self, connection_class: type[AbstractConnection] = Connection, *, max_size: int | None = None,
                 min_size: int = 0, timeout: float | None = 5.0, max_waiting: int = 0,
                 health_check_interval: float | None = 30.0, max_lifetime: float | None = 3600.0,
                 max_idle: float | None = 600.0, leak_threshold: float | None = None, name: str | None = None,
                 max_connections: int | None = None, multiplex: int = 0,
                 multiplex_max_in_flight: int = 1000, multiplex_max_queued_bytes: int = 4 * 1024 * 1024,
                 **connection_kwargs: Any) -> None:
        if max_size is None:  # redis-py callers (RedisCluster) say max_connections
            max_size = 10 if max_connections is None else max_connections
        check_option("health_check_interval", health_check_interval)
        self._configure_multiplex(multiplex, max_size, multiplex_max_in_flight, multiplex_max_queued_bytes)
        super().__init__(max_size=max_size, min_size=min_size, timeout=timeout, max_waiting=max_waiting,
                         max_lifetime=max_lifetime, max_idle=max_idle, leak_threshold=leak_threshold, name=name)
        self.health_check_interval = health_check_interval
        self.retry = connection_kwargs["retry"] = _retry_policy(connection_kwargs)
        if not connection_kwargs.get("client_name"):  # None or "" (kombu passes None): the pool's own name
            connection_kwargs.pop("client_name", None)
            self._default_name: str | None = "greenpool:" + _NOT_A_NAME_CHAR.sub("_", self.name)
        else:
            self._default_name = None
        # The pool checks at checkout, not before every command; pub/sub connections get redis-py's keepalive.
        connection_kwargs["health_check_interval"] = 0
        if connection_kwargs.pop("cache", None) is not None or connection_kwargs.pop("cache_config", None) is not None:
            raise ValueError("client-side caching (cache, cache_config) is not supported by RedisPool")
        # redis-py 8.2+ hands pools (RedisCluster's node pools too) the resolver that decides which commands its
        # client-side cache may serve; a pool setting, never a connection argument. Kept for its readers.
        self.metadata_resolver = connection_kwargs.pop("metadata_resolver", None)
        self.connection_class = tracked_class(connection_class)
        self.connection_kwargs = connection_kwargs
        self.himport_registry = connection_kwargs.get("himport_registry")
        self.cache = None
        self._encoder: Encoder | None = None
        self._client_template: type[_PinnedRedis] | None = None
        self._shared_client: PooledRedis | None = None
        self._lock = threading.RLock()  # redis-py's cluster client holds it around disconnect_free_connections()

    # -- resource hooks -------------------------------------------------------------------------------
    def _open(self) -> ReplyTracking:
        """Connect and handshake within ``socket_connect_timeout``: redis-py bounds only the TCP connect by it
        and reads the handshake replies (CLIENT SETNAME, ...) with ``socket_timeout``, so a listener that
        accepts and never answers would hold the checkout that long (forever if ``socket_timeout=None``)."""
        connection = self.connection_class(**self.connection_kwargs)
        connection.default_name = self._default_name
        connection.pubsub_health_check_interval = self.health_check_interval or 0
        deadline = connection.socket_connect_timeout
        timer = gevent.Timeout(deadline)  # a BaseException: every layer below closes what it opened
        try:
            with timer:
                connection.connect()
        except BaseException as error:  # redis-py closes the socket only on a RedisError, not on a Timeout or kill
            connection.disconnect()
            if error is timer:
                raise RedisTimeoutError(f"Timeout connecting to server: no handshake within {deadline}s") from None
            raise
        if connection.name_refused:
            self._default_name = None  # the next connections skip the round trip
            logger.info("pool %r: the server refused CLIENT SETNAME (the user's ACL lacks client|setname); "
                        "connections stay unnamed", self.name)
        return connection

    def _close_resource(self, connection: ReplyTracking) -> None:
        connection.retire()

    def _forget_resource(self, connection: ReplyTracking) -> None:
        connection.forget()

    def _lent_to_a_caller(self, connection: ReplyTracking) -> bool:
        mux = self._mux  # a shared connection's socket is left to its SharedConnection, which stops watching it
        return mux is None or not mux.owns(connection)

    def _check(self, connection: ReplyTracking, idle_for: float) -> bool:
        poller = connection._poller  # a zero-timeout poll of the socket, inlined: this runs on every checkout
        if poller is None or poller.poll(0):  # EOF (server closed it) or bytes nobody asked for
            return False
        if self.health_check_interval and idle_for >= self.health_check_interval:
            try:
                connection.send_command("PING", check_health=False)
                return connection.read_response() in (b"PONG", "PONG")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return False
        return True

    def _return_problem(self, connection: ReplyTracking) -> str | None:
        problem = connection.return_problem()
        if problem is not None:
            in_flight = sys.exc_info()[0]  # release() runs in redis-py's finally: name a cancellation as such
            if in_flight is not None and not issubclass(in_flight, Exception):
                return "cancelled"
        return problem

    # -- borrowing --------------------------------------------------------------------------------------
    def connection(self, timeout: float | None = None) -> _Borrowed:
        """``with pool.connection() as conn``: borrow a raw redis-py connection for the block.

        Waits up to ``timeout`` (default: the pool's) and raises ``PoolTimeout``; raises ``PoolClosed``
        when closed. If the block raises a BaseException (gevent.Timeout, kill, exit) or a connection
        error, the connection is closed, never reused; after other errors it is reused only if no reply
        is left unread and no session state (MULTI, WATCH, SUBSCRIBE, SELECT) is left behind.
        """
        return _Borrowed(self, timeout)

    def client(self, timeout: float | None = None) -> _PinnedClient:
        """``with pool.client() as r``: a ``redis.Redis`` pinned to one borrowed connection for the block.

        Every command, pipeline and transaction of ``r`` uses that connection. Timeout, close and
        cancellation behave as for ``connection()``; ``r`` must not be used after the block.
        """
        return _PinnedClient(self, timeout)

    def shared_client(self) -> PooledRedis:
        """The one ``PooledRedis`` on this pool that every greenlet may use at once (``Backend.shared_client``):
        not pinned, so each command goes to a shared connection when it may share (``multiplex``), else
        borrows an exclusive connection for that command alone. Timeout, close and cancellation behave as
        for ``connection()``, per command; a cancelled command on a shared connection leaves it in service."""
        client = self._shared_client
        if client is None:
            # redis-py annotates connection_pool as ConnectionPool; any ConnectionPoolInterface works
            client = self._shared_client = PooledRedis(connection_pool=self)  # type: ignore[arg-type]
        return client

    def _pinned_class(self) -> type[_PinnedRedis]:
        """The class of this pool's pinned clients: the state ``redis.Redis.__init__`` gives every client, made
        once and kept as class attributes, so a borrow costs one small object, not a ``redis.Redis.__init__``."""
        pinned_class = self._client_template
        if pinned_class is None:
            # redis-py annotates connection_pool as ConnectionPool; any ConnectionPoolInterface works
            shared = dict(vars(PooledRedis(connection_pool=self)), connection_pool=None,  # type: ignore[arg-type]
                          connection=None)
            pinned_class = self._client_template = type("PinnedRedis", (_PinnedRedis,), shared)
        return pinned_class

    # -- redis-py's ConnectionPoolInterface -------------------------------------------------------------
    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Borrow a connection for one command (redis-py's protocol); give it back with ``release()``.

        On a multiplexed pool this is a light ``SharedHandle``: commands that may share go to a shared
        connection, and the handle borrows an exclusive connection before the first one that may not."""
        if self._mux is not None:
            return SharedHandle(self)
        return self.getconn()

    def release(self, connection: Any) -> None:
        if type(connection) is SharedHandle:
            connection.release()
        else:
            self.putconn(connection)

    def get_encoder(self) -> Encoder:
        if self._encoder is None:
            kwargs = self.connection_kwargs
            self._encoder = Encoder(kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"),
                                    kwargs.get("decode_responses", False))
        return self._encoder

    def get_protocol(self) -> int | str | None:
        return self.connection_kwargs.get("protocol")

    def reset(self) -> None:
        """Close the idle connections; borrowed ones are closed when they come back."""
        self.disconnect(inuse_connections=False)

    def disconnect_free_connections(self, moving_address_src: Any = None) -> None:
        """Close the idle connections (redis-py's cluster client calls this after a node error)."""
        self.reset()

    def update_active_connections_for_reconnect(self, moving_address_src: Any = None) -> None:
        """Nothing to mark: a borrowed connection is judged when it comes back and at its next checkout."""

    def update_maint_notifications_config(self, maint_notifications_config: MaintNotificationsConfig,
                                          **handlers: Any) -> None:
        """Maintenance notifications are not supported: refused if required, ignored if 'auto' (RESP3 default)."""
        if maint_notifications_config.enabled is True:
            raise ValueError("maintenance notifications are not supported by RedisPool")

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the idle connections now; the pool stays open and opens new ones on demand. With
        ``inuse_connections`` (redis-py's default; django-redis calls it after each request with
        ``CLOSE_CONNECTION``), borrowed connections close too, each when it comes back: a socket is never
        closed under the greenlet using it. Shared connections are retired: they take no new commands and
        close once the replies they owe have arrived."""
        if self._generation != forks.generation:
            return self._after_fork()  # the parent's connections: forgotten here, never closed
        mux = self._mux
        self._close_idle(borrowed=inuse_connections, keep=None if mux is None else mux.owns)
        if mux is not None:
            mux.retire_all()

    def set_retry(self, retry: Retry) -> None:
        """The retry policy of every connection from now on (redis-py's ``Redis.set_retry`` calls it)."""
        self.retry = self.connection_kwargs["retry"] = retry
        for connection in [slot.resource for slot in self._idle.queue] + list(self._borrowed):
            connection.retry = retry

    def re_auth_callback(self, token: Any) -> None:
        """New credentials: idle connections are closed; new ones authenticate with the provider's token."""
        self.reset()

    def get_connection_count(self) -> list[tuple[int, dict[str, str]]]:
        attributes = {"db.client.connection.pool.name": self.name}
        return [(self._idle.qsize(), dict(attributes, state="idle")),
                (len(self._borrowed), dict(attributes, state="used"))]

    def owns_connection(self, connection: Any) -> bool:
        if type(connection) is SharedHandle:
            return connection._pool is self
        return connection in self._borrowed

    def __repr__(self) -> str:
        base = super().__repr__()
        shared = f" multiplex={self.multiplex}" if self.multiplex else ""
        return f"{base[:-1]}{shared} target={_describe_target(self.connection_kwargs)}>"


def _retry_policy(kwargs: dict[str, Any]) -> Retry:
    """The connections' ``Retry``: none unless asked for. ``retry=`` is used as given; ``retry_on_error`` and
    ``retry_on_timeout`` add their errors to it and, without ``retry=``, mean what they mean to redis-py's
    ``Connection``: one retry, no backoff."""
    errors = list(kwargs.get("retry_on_error") or ())
    if kwargs.get("retry_on_timeout"):
        errors.append(RedisTimeoutError)
    retry: Retry | None = kwargs.get("retry")
    if retry is None:
        retry = Retry(NoBackoff(), 1 if errors else 0)
    elif errors:
        retry = copy.deepcopy(retry)  # as redis-py does: the caller's object is not changed
    if errors:
        retry.update_supported_errors(errors)
    return retry


def _describe_target(kwargs: dict[str, Any]) -> str:
    """host:port/db or the socket path; never credentials."""
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    host = kwargs.get("host", "localhost")
    return f"{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class _Borrowed:
    """The context manager behind ``connection()``: decide on exit whether the connection may be reused."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: RedisPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    def __enter__(self) -> ReplyTracking:
        self.conn: ReplyTracking | None = self.pool.getconn(self.timeout)
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        return _Borrowed.exit(self.pool, self.conn, exc_type)

    @staticmethod
    def exit(pool: RedisPool, conn: Any, exc_type: type[BaseException] | None) -> Literal[False]:
        """Give ``conn`` back to ``pool``, or close it, by how the block ended; False: never swallow the error."""
        if exc_type is None:
            pool.putconn(conn)
        elif not issubclass(exc_type, Exception):
            pool.discard(conn, "cancelled")
        elif issubclass(exc_type, (RedisConnectionError, RedisTimeoutError, OSError)):
            pool.discard(conn, "error")
        else:  # an application or command error: reusable if the stream is at a reply boundary
            pool.putconn(conn)
        return False


class _PinnedRedis(PooledRedis):
    """The client of a ``with pool.client()`` block: it never owns its connection (the block does), so there
    is nothing for ``redis.Redis.__del__`` to give back when it is collected."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        conn = self.connection
        if conn is None or options or args[0] in DELEGATED or conn.retry._retries:
            return super().execute_command(*args, **options)  # cut loose (PoolError), options, or retries
        conn.send_command(*args)  # the common case of PooledRedis's path, without its give-back and options
        response = conn.read_response()
        callback = self.response_callbacks.get(args[0])
        return response if callback is None else callback(response)

    def __del__(self) -> None:
        pass


class _PinnedClient(_Borrowed):
    """The context manager behind ``client()``, and what its ``redis.Redis`` sees as its pool: always the one
    connection, given back by the block, never by the client."""

    __slots__ = ("client",)
    _mux = None  # a pinned client never takes the shared path (PooledRedis looks for the pool's multiplexer)

    def __enter__(self) -> _PinnedRedis:  # type: ignore[override]  # the client, not the connection
        pool = self.pool
        self.conn = conn = pool.getconn(self.timeout)
        self.client: _PinnedRedis | None
        self.client = client = object.__new__(pool._client_template or pool._pinned_class())
        client.connection_pool = self  # type: ignore[assignment]  # redis-py's annotation says ConnectionPool
        client.connection = conn
        return client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        # A client (or a pipeline made from it) kept past the block must not reach a connection now lent to
        # someone else: cut it loose before the connection goes back.
        client, self.client = self.client, None  # and no reference cycle left for the garbage collector
        if client is not None:
            client.connection = None
        conn, self.conn = self.conn, None
        return _Borrowed.exit(self.pool, conn, exc_type)

    # -- what the pinned redis.Redis asks its pool ---------------------------------------------------------
    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> ReplyTracking:
        connection = self.conn
        if connection is None:
            raise PoolError("this client was pinned to a connection that its `with pool.client()` block gave back")
        return connection

    def release(self, connection: Any) -> None:
        """The block that borrowed the connection gives it back, not the client."""

    def owns_connection(self, connection: Any) -> bool:
        return connection is self.conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)
