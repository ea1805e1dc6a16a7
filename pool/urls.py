"""One parser for every Redis URL the pool understands: a single server, a Sentinel group or a Cluster.

=============================================================  ========================================
``redis://[[user]:password@]host[:6379][/db][?options]``       one server (``rediss://`` for TLS)
``unix://[[user]:password@]/path/to/socket[?db=0&options]``    one server on a unix socket
``redis+sentinel://[[user]:password@]h1[:26379],h2/name[/db]``  the master of Sentinel service ``name``
``redis+cluster://[[user]:password@]h1[:6379],h2[?options]``   a Redis Cluster, from its seed nodes
=============================================================  ========================================

``rediss+sentinel://`` and ``rediss+cluster://`` use TLS. The credentials in the URL are those of the
Redis servers holding the data; sentinels that need their own take ``sentinel_username`` and
``sentinel_password`` in the query. IPv6 hosts go in brackets (``[::1]:26379``). Percent-encode
reserved characters in passwords.

Query options: the pool's (``max_size``, ``min_size``, ``timeout``, ``max_waiting``,
``health_check_interval``, ``max_lifetime``, ``max_idle``, ``leak_threshold``, ``name``; see
``pool.options``), connection options (``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``,
``client_name``, ``protocol``, ``username``, ``password``; ``db`` for a single server; ``ssl_*`` with TLS),
and for Sentinel ``master_check_interval``, ``min_other_sentinels``, ``sentinel_username``,
``sentinel_password``, ``sentinel_socket_timeout``. Every value is cast and checked here, with the same
messages as the pools' constructors; an unknown option is an error, whatever the scheme.
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import options as O
from .options import Option

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    from .backend import Backend

__all__ = ["SCHEMES", "RedisTarget", "parse_redis_url", "redact_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
_SENTINEL_ONLY = ("master_check_interval", "min_other_sentinels")
POOL_OPTIONS = {name: option for name, option in O.OPTIONS.items() if name not in _SENTINEL_ONLY}
_CONNECTION_OPTIONS = {
    "socket_timeout": Option(float), "socket_connect_timeout": Option(float),
    "socket_keepalive": Option(bool), "client_name": Option(str), "protocol": Option(int, minimum=2),
    "username": Option(str), "password": Option(str),
}
_SSL_OPTIONS = {name: Option(str) for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")}
_SSL_OPTIONS["ssl_check_hostname"] = Option(bool)
_SENTINEL_OPTIONS = {**{name: O.OPTIONS[name] for name in _SENTINEL_ONLY}, "sentinel_username": Option(str),
                     "sentinel_password": Option(str), "sentinel_socket_timeout": Option(float)}
_DEFAULT_PORTS = {"redis": 6379, "sentinel": 26379, "cluster": 6379}


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """What a URL names: ``kind`` is ``"redis"``, ``"sentinel"`` or ``"cluster"``.

    ``addresses``: sentinels or cluster seeds as ``(host, port)``; ``service_name``: the Sentinel service;
    ``connection_kwargs``: redis-py connection arguments for the data servers; ``pool_options``: the
    pool's; ``sentinel_kwargs``: for the connections to the sentinels. Build with ``make_pool()`` or
    ``make_client()``. Its repr never shows passwords.
    """

    kind: str
    url: str = dataclasses.field(repr=False)
    addresses: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    connection_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    pool_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sentinel_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    master_check_interval: float | None = 5.0
    min_other_sentinels: int = 0

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def make_pool(self, **options: Any) -> Backend:
        """The pool this URL names: a ``RedisPool``, a ``SentinelRedisPool`` or a ``ClusterPool`` (one pool
        over the cluster's node pools); keywords override the URL's options. No I/O happens here."""
        if self.kind == "sentinel":
            from .sentinel import SentinelRedisPool
            return SentinelRedisPool.from_target(self, **options)
        if self.kind == "cluster":
            from .cluster import ClusterPool
            return ClusterPool.from_target(self, **options)
        from .redis_pool import RedisPool
        return RedisPool.from_target(self, **options)

    def make_client(self, **options: Any) -> redis.Redis | RedisCluster:
        """``redis.Redis`` over ``make_pool()``, or a ``RedisCluster`` with one pool per node.

        For a cluster, pool options (``max_size`` or ``max_connections``, ``min_size``, ``name``, ...) go
        to each node's pool and other keywords to ``RedisCluster``.
        """
        if self.kind != "cluster":
            import redis
            return redis.Redis(connection_pool=self.make_pool(**options))  # type: ignore[arg-type]  # a pool interface
        from .cluster import cluster_client
        kwargs = {**self.connection_kwargs, **self.pool_options, **options}
        pool_options = {name: kwargs.pop(name) for name in list(kwargs) if name in POOL_OPTIONS and name != "timeout"}
        max_connections = pool_options.pop("max_size", pool_options.pop("max_connections", 10))
        return cluster_client(self.addresses, max_connections=max_connections, pool_options=pool_options, **kwargs)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse any URL in the module docstring's table into a ``RedisTarget``; ``ValueError`` if malformed.

    Every part is checked (hosts, ports, db, service name, each query option's value); the message names
    what is wrong and shows the URL with its passwords replaced by ``***``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"not a Redis URL: {redact_url(url) if isinstance(url, str) else url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r} in {redact_url(url)!r}; use one of {', '.join(SCHEMES)}")
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"malformed URL {redact_url(url)!r}: {error}") from None
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    _check_at_signs(url, scheme, parts.netloc, userinfo)
    kind = scheme.partition("+")[2] or "redis"
    tls = scheme.startswith("rediss")
    allowed = {**POOL_OPTIONS, **_CONNECTION_OPTIONS, **(_SSL_OPTIONS if tls else {}),
               **(_SENTINEL_OPTIONS if kind == "sentinel" else {}), **({"db": Option(int)} if kind == "redis" else {})}
    query = _query(parts.query, url, allowed)
    pool_options = {name: query.pop(name) for name in list(query) if name in POOL_OPTIONS}
    connection_kwargs = {**query, **_credentials(userinfo)}
    path = [unquote(p) for p in parts.path.split("/") if p]
    if kind == "redis":
        return _single_target(url, scheme, hostlist, parts.path, path, connection_kwargs, pool_options)
    if tls:
        connection_kwargs["ssl"] = True
    addresses = tuple(_address(item, _DEFAULT_PORTS[kind], url) for item in hostlist.split(","))
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ValueError(f"a cluster URL takes no service name and no db other than 0: {redact_url(url)!r}")
        return RedisTarget("cluster", url, addresses, connection_kwargs=connection_kwargs, pool_options=pool_options)
    return _sentinel_target(url, addresses, path, connection_kwargs, pool_options)


def _single_target(url: str, scheme: str, hostlist: str, raw_path: str, path: list[str],
                   connection_kwargs: dict[str, Any], pool_options: dict[str, Any]) -> RedisTarget:
    from redis.connection import SSLConnection, UnixDomainSocketConnection

    if scheme == "unix":
        if hostlist or not raw_path.startswith("/"):
            raise ValueError(f"a unix URL needs an absolute socket path (unix:///path.sock): {redact_url(url)!r}")
        connection_kwargs.update(path=unquote(raw_path), connection_class=UnixDomainSocketConnection)
        return RedisTarget("redis", url, connection_kwargs=connection_kwargs, pool_options=pool_options)
    if "," in hostlist:
        raise ValueError(f"a {scheme}:// URL names one server; for several use redis+sentinel:// or "
                         f"redis+cluster://: {redact_url(url)!r}")
    connection_kwargs["host"], connection_kwargs["port"] = _address(hostlist, _DEFAULT_PORTS["redis"], url)
    if len(path) > 1:
        raise ValueError(f"a {scheme}:// URL takes at most a db after the host: {redact_url(url)!r}")
    if path:
        connection_kwargs["db"] = O.from_text("db", path[0], Option(int), repr(redact_url(url)))
    if scheme == "rediss":
        connection_kwargs["connection_class"] = SSLConnection
    return RedisTarget("redis", url, connection_kwargs=connection_kwargs, pool_options=pool_options)


def _sentinel_target(url: str, addresses: tuple[tuple[str, int], ...], path: list[str],
                     connection_kwargs: dict[str, Any], pool_options: dict[str, Any]) -> RedisTarget:
    if not 1 <= len(path) <= 2:
        raise ValueError(f"a sentinel URL needs /service_name[/db] after the hosts: {redact_url(url)!r}")
    db = O.from_text("db", path[1], Option(int), repr(redact_url(url))) if len(path) == 2 else 0
    connection_kwargs["db"] = db
    sentinel_kwargs: dict[str, Any] = {}
    for name, key in (("sentinel_username", "username"), ("sentinel_password", "password"),
                      ("sentinel_socket_timeout", "socket_timeout")):
        if name in connection_kwargs:
            sentinel_kwargs[key] = connection_kwargs.pop(name)
    if "socket_timeout" in sentinel_kwargs:
        sentinel_kwargs["socket_connect_timeout"] = sentinel_kwargs["socket_timeout"]
    if connection_kwargs.get("ssl"):
        import redis
        sentinel_kwargs["connection_class"] = redis.SSLConnection
    master_check_interval = connection_kwargs.pop("master_check_interval", 5.0)
    min_other_sentinels = connection_kwargs.pop("min_other_sentinels", 0)
    return RedisTarget("sentinel", url, addresses, path[0], connection_kwargs, pool_options, sentinel_kwargs,
                       master_check_interval, min_other_sentinels)


def _check_at_signs(url: str, scheme: str, netloc: str, userinfo: str) -> None:
    """Refuse an ``@`` that does not separate the user info from the hosts: a password with an unescaped ``@``,
    ``/``, ``?`` or ``#`` would otherwise be read in part as a host name, a path or options (and shown as such)."""
    after_hosts = url.partition("://")[2][len(netloc):]
    if "@" in userinfo or (scheme != "unix" and "@" in after_hosts):  # a unix socket path may hold an '@'
        raise ValueError(f"an '@' in {redact_url(url)!r} does not separate the user info from the host: "
                         "percent-encode '@', '/', '?' and '#' in a password (%40, %2F, %3F, %23)")


def _credentials(userinfo: str) -> dict[str, str]:
    if not userinfo:
        return {}
    username, has_password, password = userinfo.partition(":")
    kwargs = {}
    if username:
        kwargs["username"] = unquote(username)
    if has_password and password:
        kwargs["password"] = unquote(password)
    return kwargs


def _address(item: str, default_port: int, url: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"empty host in {redact_url(url)!r}")
    if not port_text:
        return unquote(host), default_port
    port = int(port_text) if port_text.isdigit() else 0
    if not 0 < port < 65536:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port_text!r} (in {redact_url(url)!r})")
    return unquote(host), port


def _query(query: str, url: str, allowed: dict[str, Option]) -> dict[str, Any]:
    parsed = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        option = allowed.get(name)
        if option is None:
            raise ValueError(f"unknown option {name!r} in {redact_url(url)!r}; known: {', '.join(sorted(allowed))}")
        parsed[name] = O.from_text(name, values[-1], option, repr(redact_url(url)))
    return parsed


_USERINFO_PASSWORD = re.compile(r"^([\w+.-]+://[^:/?#@]*):.*@")  # greedy: a password may hold '/', '?' or '@'
_QUERY_PASSWORD = re.compile(r"((?:^|[?&])(?:sentinel_)?password=)[^&#]*")


def redact_url(url: str) -> str:
    """The URL with its passwords (user info, ``password=`` and ``sentinel_password=`` in the query) replaced
    by ``***``, for logs. Errs on the side of hiding too much when a password holds unescaped reserved characters."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))
