"""The Redis binding: the core pool lending redis-py connections, usable wherever redis-py takes a pool."""
import re
import sys
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit

import gevent
from redis.backoff import NoBackoff
from redis.connection import Connection, ConnectionPoolInterface, Encoder, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .client import PooledRedis
from .connection import tracked_class
from .core import Pool, _check_number
from .errors import PoolError
from .handle import SharedHandle
from .multiplex import MultiplexedPool

__all__ = ["RedisPool"]

# Pool options that may also come in a URL's query string, with their casts.
_URL_OPTIONS = {
    "max_size": int, "min_size": int, "timeout": float, "max_waiting": int, "health_check_interval": float,
    "max_lifetime": float, "max_idle": float, "leak_threshold": float, "name": str, "multiplex": int,
}
_NOT_A_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.:-]")


class RedisPool(MultiplexedPool, Pool, ConnectionPoolInterface):
    """A greenlet-safe pool of redis-py connections that ``redis.Redis(connection_pool=...)`` accepts.

    Pool options are the core ``Pool``'s plus ``health_check_interval`` (default 30 s: a connection idle
    longer than this is PINGed at checkout; 0 = never). Every other keyword is a redis-py connection
    argument (``host``, ``port``, ``db``, ``password``, ``socket_timeout``, ...). Connections carry the
    client name ``greenpool:<name>``. Commands are never retried: ``retry`` defaults to no retries.

    ``multiplex`` (default 0: off) is the number of shared connections: with ``multiplex=N`` the commands
    that may share (``pool.commands``) from ``redis.Redis(connection_pool=p)``, ``PooledRedis``,
    ``RedisCluster`` node clients and ``p.execute()`` are coalesced onto up to N connections, each reply
    still reaching its own sender; everything else borrows an exclusive connection as without it.
    N must be below ``max_size`` so exclusive commands still find a connection. Each shared connection
    owes at most ``multiplex_max_in_flight`` replies (default 1000) and queues at most
    ``multiplex_max_queued_bytes`` unwritten bytes (default 4 MiB); beyond that callers wait in arrival
    order under ``timeout`` and ``max_waiting`` (``PoolTimeout``, ``TooManyRequests``, ``PoolClosed``).
    """

    @classmethod
    def from_url(cls, url, **options):
        """A pool for ``redis://``, ``rediss://`` or ``unix://`` URLs; keywords override the URL's query."""
        parts = urlsplit(url)
        query, pool_options = [], {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            cast = _URL_OPTIONS.get(key)
            if cast is None:
                query.append((key, value))  # a connection argument: redis-py parses it
                continue
            try:
                pool_options[key] = cast(value)
            except ValueError:
                raise ValueError(f"{key} in the URL query must be {cast.__name__}, got {value!r}") from None
        if pool_options:  # rebuilt by hand: urlunsplit would turn unix:///path into unix:/path
            url = url.split("?", 1)[0] + ("?" + urlencode(query) if query else "")
        kwargs = parse_url(url)
        kwargs.update(pool_options)
        kwargs.update(options)
        return cls(**kwargs)

    def __init__(self, connection_class=Connection, *, max_size=None, min_size=0, timeout=5.0, max_waiting=0,
                 health_check_interval=30.0, max_lifetime=3600.0, max_idle=600.0, leak_threshold=None,
                 name=None, max_connections=None, multiplex=0, multiplex_max_in_flight=1000,
                 multiplex_max_queued_bytes=4 * 1024 * 1024, **connection_kwargs):
        if max_size is None:  # redis-py callers (RedisCluster) say max_connections
            max_size = 10 if max_connections is None else max_connections
        _check_number("health_check_interval", health_check_interval)  # also refuses NaN
        self._configure_multiplex(multiplex, max_size, multiplex_max_in_flight, multiplex_max_queued_bytes)
        super().__init__(max_size=max_size, min_size=min_size, timeout=timeout, max_waiting=max_waiting,
                         max_lifetime=max_lifetime, max_idle=max_idle, leak_threshold=leak_threshold, name=name)
        self.health_check_interval = health_check_interval
        connection_kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        connection_kwargs.setdefault("client_name", "greenpool:" + _NOT_A_NAME_CHAR.sub("_", self.name))
        connection_kwargs["health_check_interval"] = 0  # the pool checks at checkout, not before every command
        if connection_kwargs.pop("cache", None) is not None or connection_kwargs.pop("cache_config", None) is not None:
            raise ValueError("client-side caching (cache, cache_config) is not supported by RedisPool")
        self.connection_class = tracked_class(connection_class)
        self.connection_kwargs = connection_kwargs
        self.himport_registry = connection_kwargs.get("himport_registry")
        self.cache = None
        self._encoder = None
        self._client_template = None
        self._lock = threading.RLock()  # redis-py's cluster client holds it around disconnect_free_connections()

    # -- resource hooks -------------------------------------------------------------------------------
    def _open(self):
        """Connect and handshake within ``socket_connect_timeout``: redis-py bounds only the TCP connect by it
        and reads the handshake replies (CLIENT SETNAME, ...) with ``socket_timeout``, so a listener that
        accepts and never answers would hold the checkout that long (forever if ``socket_timeout=None``)."""
        connection = self.connection_class(**self.connection_kwargs)
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
        return connection

    def _close_resource(self, connection):
        connection.retire()

    def _forget_resource(self, connection):
        connection.forget()

    def _check(self, connection, idle_for):
        poller = connection._poller  # inlined has_input(): this runs on every checkout
        if poller is None or poller.poll(0):  # EOF (server closed it) or bytes nobody asked for
            return False
        if self.health_check_interval and idle_for >= self.health_check_interval:
            try:
                connection.send_command("PING", check_health=False)
                return connection.read_response() in (b"PONG", "PONG")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return False
        return True

    def _return_problem(self, connection):
        problem = connection.return_problem()
        if problem is not None:
            in_flight = sys.exc_info()[0]  # release() runs in redis-py's finally: name a cancellation as such
            if in_flight is not None and not issubclass(in_flight, Exception):
                return "cancelled"
        return problem

    # -- borrowing --------------------------------------------------------------------------------------
    def connection(self, timeout=None):
        """``with pool.connection() as conn``: borrow a raw redis-py connection for the block.

        Waits up to ``timeout`` (default: the pool's) and raises ``PoolTimeout``; raises ``PoolClosed``
        when closed. If the block raises a BaseException (gevent.Timeout, kill, exit) or a connection
        error, the connection is closed, never reused; after other errors it is reused only if no reply
        is left unread and no session state (MULTI, WATCH, SUBSCRIBE, SELECT) is left behind.
        """
        return _Borrowed(self, timeout)

    def client(self, timeout=None):
        """``with pool.client() as r``: a ``redis.Redis`` pinned to one borrowed connection for the block.

        Every command, pipeline and transaction of ``r`` uses that connection. Timeout, close and
        cancellation behave as for ``connection()``; ``r`` must not be used after the block.
        """
        return _PinnedClient(self, timeout)

    def _pinned_redis(self, connection):
        template = self._client_template
        if template is None:
            template = self._client_template = PooledRedis(connection_pool=self)
        client = PooledRedis.__new__(PooledRedis)
        client.__dict__.update(template.__dict__)
        client.connection_pool = _PinnedPool(self, connection)
        client.connection = connection
        return client

    # -- redis-py's ConnectionPoolInterface -------------------------------------------------------------
    def get_connection(self, command_name=None, *keys, **options):
        """Borrow a connection for one command (redis-py's protocol); give it back with ``release()``.

        On a multiplexed pool this is a light ``SharedHandle``: commands that may share go to a shared
        connection, and the handle borrows an exclusive connection before the first one that may not."""
        if self._mux is not None:
            return SharedHandle(self)
        return self.getconn()

    def release(self, connection):
        if type(connection) is SharedHandle:
            connection.release()
        else:
            self.putconn(connection)

    def get_encoder(self):
        if self._encoder is None:
            kwargs = self.connection_kwargs
            self._encoder = Encoder(kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"),
                                    kwargs.get("decode_responses", False))
        return self._encoder

    def get_protocol(self):
        return self.connection_kwargs.get("protocol")

    def reset(self):
        """Close the idle connections; borrowed ones are closed when they come back."""
        self.disconnect(inuse_connections=False)

    def disconnect_free_connections(self, moving_address_src=None):
        """Close the idle connections (redis-py's cluster client calls this after a node error)."""
        self.reset()

    def update_active_connections_for_reconnect(self, moving_address_src=None):
        """Nothing to mark: a borrowed connection is judged when it comes back and at its next checkout."""

    def update_maint_notifications_config(self, maint_notifications_config, **handlers):
        """Maintenance notifications are not supported: refused if required, ignored if 'auto' (RESP3 default)."""
        if maint_notifications_config.enabled is True:
            raise ValueError("maintenance notifications are not supported by RedisPool")

    def disconnect(self, inuse_connections=True):
        """Close idle connections (and borrowed ones too, if asked); the pool stays open. Shared connections
        are retired: they take no new commands, and close once the replies they owe have arrived."""
        for slot in list(self._idle.queue):
            slot.resource.disconnect()
        mux = self._mux
        if inuse_connections:
            for connection in list(self._borrowed):
                if mux is None or not mux.owns(connection):
                    connection.disconnect()
        if mux is not None:
            mux.retire_all()

    def set_retry(self, retry):
        self.connection_kwargs["retry"] = retry
        for connection in [slot.resource for slot in self._idle.queue] + list(self._borrowed):
            connection.retry = retry

    def re_auth_callback(self, token):
        """New credentials: idle connections are closed; new ones authenticate with the provider's token."""
        self.reset()

    def get_connection_count(self):
        attributes = {"db.client.connection.pool.name": self.name}
        return [(self._idle.qsize(), dict(attributes, state="idle")),
                (len(self._borrowed), dict(attributes, state="used"))]

    def owns_connection(self, connection):
        if type(connection) is SharedHandle:
            return connection._pool is self
        return connection in self._borrowed

    def __repr__(self):
        base = super().__repr__()
        shared = f" multiplex={self.multiplex}" if self.multiplex else ""
        return f"{base[:-1]}{shared} target={_describe_target(self.connection_kwargs)}>"


def _describe_target(kwargs):
    """host:port/db or the socket path; never credentials."""
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    host = kwargs.get("host", "localhost")
    return f"{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


_USERINFO_PASSWORD = re.compile(r"^([\w+.-]+://[^:/?#@]*):.*@")  # greedy: a password may hold '/', '?' or '@'
_QUERY_PASSWORD = re.compile(r"((?:^|[?&])(?:sentinel_)?password=)[^&#]*")


def redact_url(url):
    """The URL with its passwords (user info, ``password=`` and ``sentinel_password=`` in the query) replaced
    by ``***``, for logs. Errs on the side of hiding too much when a password holds unescaped reserved characters."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


class _Borrowed:
    """The context manager behind ``connection()``: decide on exit whether the connection may be reused."""

    __slots__ = ("pool", "timeout", "conn")

    def __init__(self, pool, timeout):
        self.pool = pool
        self.timeout = timeout

    def __enter__(self):
        self.conn = self.pool.getconn(self.timeout)
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.pool.putconn(self.conn)
        elif not issubclass(exc_type, Exception):
            self.pool.discard(self.conn, "cancelled")
        elif issubclass(exc_type, (RedisConnectionError, RedisTimeoutError, OSError)):
            self.pool.discard(self.conn, "error")
        else:  # an application or command error: reusable if the stream is at a reply boundary
            self.pool.putconn(self.conn)
        return False


class _PinnedClient(_Borrowed):
    __slots__ = ("client",)

    def __enter__(self):
        self.client = self.pool._pinned_redis(super().__enter__())
        return self.client

    def __exit__(self, exc_type, exc, tb):
        # A client (or a pipeline made from it) kept past the block must not reach a connection now lent to
        # someone else: cut it loose before the connection goes back.
        self.client.connection_pool._connection = None
        self.client.connection = None
        return super().__exit__(exc_type, exc, tb)


class _PinnedPool:
    """What a pinned ``redis.Redis`` sees as its pool: always the one connection, never given back early."""

    __slots__ = ("_pool", "_connection")

    def __init__(self, pool, connection):
        self._pool = pool
        self._connection = connection

    def get_connection(self, command_name=None, *keys, **options):
        if self._connection is None:
            raise PoolError("this client was pinned to a connection that its `with pool.client()` block gave back")
        return self._connection

    def release(self, connection):
        """The block that borrowed the connection gives it back, not the client."""

    def owns_connection(self, connection):
        return connection is self._connection

    def __getattr__(self, name):
        return getattr(self._pool, name)
