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
``health_check_interval``, ``max_lifetime``, ``max_idle``, ``leak_threshold``, ``name``), connection
options (``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``, ``client_name``,
``protocol``, ``ssl_*``), and for Sentinel ``master_check_interval``, ``min_other_sentinels``,
``sentinel_username``, ``sentinel_password``, ``sentinel_socket_timeout``. An unknown option in a
``+sentinel`` or ``+cluster`` URL is an error (in ``redis://`` URLs redis-py passes it through).
"""
import dataclasses
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url as redis_parse_url

from .redis_pool import _URL_OPTIONS, RedisPool, redact_url

__all__ = ["RedisTarget", "parse_redis_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
_POOL_OPTIONS = dict(_URL_OPTIONS, max_connections=int)
_CONNECTION_OPTIONS = {
    name: URL_QUERY_ARGUMENT_PARSERS.get(name, str)
    for name in ("socket_timeout", "socket_connect_timeout", "socket_keepalive", "client_name", "protocol",
                 "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
}
_SENTINEL_OPTIONS = {"master_check_interval": float, "min_other_sentinels": int, "sentinel_username": str,
                     "sentinel_password": str, "sentinel_socket_timeout": float}
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}


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
    addresses: tuple = ()
    service_name: str = None
    connection_kwargs: dict = dataclasses.field(default_factory=dict, repr=False)
    pool_options: dict = dataclasses.field(default_factory=dict)
    sentinel_kwargs: dict = dataclasses.field(default_factory=dict, repr=False)
    master_check_interval: float = 5.0
    min_other_sentinels: int = 0

    @property
    def redacted_url(self):
        return redact_url(self.url)

    def make_pool(self, **options):
        """A ``RedisPool`` (one server) or ``SentinelRedisPool``; keywords override the URL's options.

        A cluster has one pool per node, made by the cluster client: use ``make_client()``.
        """
        kwargs = {**self.connection_kwargs, **self.pool_options, **options}
        if self.kind == "redis":
            return RedisPool(**kwargs)
        if self.kind == "sentinel":
            from .sentinel import SentinelRedisPool
            kwargs.setdefault("master_check_interval", self.master_check_interval)
            kwargs.setdefault("min_other_sentinels", self.min_other_sentinels)
            return SentinelRedisPool(self.addresses, self.service_name, sentinel_kwargs=dict(self.sentinel_kwargs),
                                     **kwargs)
        raise ValueError("a cluster has one pool per node, made by the cluster client: use make_client()")

    def make_client(self, **options):
        """``redis.Redis`` over ``make_pool()``, or a ``RedisCluster`` with one pool per node.

        For a cluster, pool options (``max_size`` or ``max_connections``, ``min_size``, ``name``, ...) go
        to each node's pool and other keywords to ``RedisCluster``.
        """
        if self.kind != "cluster":
            return redis.Redis(connection_pool=self.make_pool(**options))
        from .cluster import cluster_client
        kwargs = {**self.connection_kwargs, **self.pool_options, **options}
        pool_options = {name: kwargs.pop(name) for name in list(kwargs) if name in _URL_OPTIONS and name != "timeout"}
        max_connections = pool_options.pop("max_size", kwargs.pop("max_connections", 10))
        return cluster_client(self.addresses, max_connections=max_connections, pool_options=pool_options, **kwargs)


def parse_redis_url(url):
    """Parse any URL in the module docstring's table into a ``RedisTarget``; ``ValueError`` if malformed."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"not a Redis URL: {url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r} in {redact_url(url)!r}; use one of {', '.join(SCHEMES)}")
    if "+" not in scheme:
        return _parse_single(url)
    kind = scheme.split("+", 1)[1]
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    connection_kwargs = _credentials(userinfo)
    if scheme.startswith("rediss"):
        connection_kwargs["ssl"] = True
    addresses = tuple(_address(item, _DEFAULT_PORTS[kind], url) for item in hostlist.split(","))
    query = _query(parts.query, url, sentinel=kind == "sentinel")
    pool_options = {k: query.pop(k) for k in list(query) if k in _POOL_OPTIONS}
    path = [unquote(p) for p in parts.path.split("/") if p]
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ValueError(f"a cluster URL takes no service name and no db other than 0: {redact_url(url)!r}")
        connection_kwargs.update(query)
        return RedisTarget("cluster", url, addresses, connection_kwargs=connection_kwargs, pool_options=pool_options)
    return _sentinel_target(url, addresses, path, query, connection_kwargs, pool_options)


def _parse_single(url):
    kwargs = redis_parse_url(url)
    pool_options = {}
    for option, cast in _URL_OPTIONS.items():
        if option in kwargs:
            pool_options[option] = _cast(option, kwargs.pop(option), cast, url)
    if "max_connections" in kwargs:
        pool_options["max_connections"] = kwargs.pop("max_connections")
    return RedisTarget("redis", url, connection_kwargs=kwargs, pool_options=pool_options)


def _sentinel_target(url, addresses, path, query, connection_kwargs, pool_options):
    if not 1 <= len(path) <= 2:
        raise ValueError(f"a sentinel URL needs /service_name[/db] after the hosts: {redact_url(url)!r}")
    connection_kwargs["db"] = _cast("db", path[1], int, url) if len(path) == 2 else 0
    sentinel_kwargs = {}
    for name, key in (("sentinel_username", "username"), ("sentinel_password", "password"),
                      ("sentinel_socket_timeout", "socket_timeout")):
        if name in query:
            sentinel_kwargs[key] = query.pop(name)
    if "socket_timeout" in sentinel_kwargs:
        sentinel_kwargs["socket_connect_timeout"] = sentinel_kwargs["socket_timeout"]
    if connection_kwargs.get("ssl"):
        sentinel_kwargs["connection_class"] = redis.SSLConnection
    master_check_interval = query.pop("master_check_interval", 5.0)
    min_other_sentinels = query.pop("min_other_sentinels", 0)
    connection_kwargs.update(query)
    return RedisTarget("sentinel", url, addresses, path[0], connection_kwargs, pool_options, sentinel_kwargs,
                       master_check_interval, min_other_sentinels)


def _credentials(userinfo):
    if not userinfo:
        return {}
    username, has_password, password = userinfo.partition(":")
    kwargs = {}
    if username:
        kwargs["username"] = unquote(username)
    if has_password and password:
        kwargs["password"] = unquote(password)
    return kwargs


def _address(item, default_port, url):
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"empty host in {redact_url(url)!r}")
    port = _cast("port", port, int, url) if port else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {redact_url(url)!r}: {port}")
    return unquote(host), port


def _query(query, url, *, sentinel):
    allowed = {**_POOL_OPTIONS, **_CONNECTION_OPTIONS, **(_SENTINEL_OPTIONS if sentinel else {})}
    parsed = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in allowed:
            raise ValueError(f"unknown option {name!r} in {redact_url(url)!r}; known: {', '.join(sorted(allowed))}")
        parsed[name] = _cast(name, values[-1], allowed[name], url)
    return parsed


def _cast(name, value, cast, url):
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} in {redact_url(url)!r} must be {getattr(cast, '__name__', 'valid')}, "
                         f"got {value!r}") from None
