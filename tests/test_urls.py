"""pool.urls: one parser for redis://, unix://, redis+sentinel:// and redis+cluster:// URLs."""
import pytest

from pool import Backend, ConnectionBackend, RedisPool
from pool import redact_url as redact
from pool.urls import parse_redis_url


def test_single_server_url_splits_pool_options_from_connection_arguments():
    target = parse_redis_url("redis://:pw@127.0.0.1:7000/2?max_size=3&socket_timeout=1.5&timeout=0.5")
    assert target.kind == "redis"
    assert target.pool_options == {"max_size": 3, "timeout": 0.5}
    assert target.connection_kwargs == {"password": "pw", "host": "127.0.0.1", "port": 7000, "db": 2,
                                        "socket_timeout": 1.5}
    pool = target.make_pool(name="u")
    assert type(pool) is RedisPool and pool.max_size == 3 and "127.0.0.1:7000/2" in repr(pool)
    pool.close()


def test_sentinel_url():
    target = parse_redis_url("rediss+sentinel://user:s%40cret@h1,h2:5000,[::1]/mymaster/3"
                             "?max_size=4&sentinel_password=sp&master_check_interval=2&socket_timeout=1")
    assert target.kind == "sentinel" and target.service_name == "mymaster"
    assert target.addresses == (("h1", 26379), ("h2", 5000), ("::1", 26379))  # default ports, parsed only
    assert target.connection_kwargs == {"username": "user", "password": "s@cret", "ssl": True, "db": 3,
                                        "socket_timeout": 1.0}
    assert target.sentinel_kwargs["password"] == "sp"
    assert target.pool_options == {"max_size": 4} and target.master_check_interval == 2.0
    assert "s%40cret" not in repr(target) and "sp" not in target.redacted_url


def test_cluster_url():
    target = parse_redis_url("redis+cluster://:pw@h1:7000,h2?max_size=5")
    assert target.kind == "cluster" and target.addresses == (("h1", 7000), ("h2", 6379))  # parsed only
    assert target.connection_kwargs == {"password": "pw"} and target.pool_options == {"max_size": 5}


@pytest.mark.parametrize("url, message", [
    ("http://x", "unsupported scheme"),
    ("redis+sentinel://h1", "service_name"),
    ("redis+sentinel://h1/m/x", "db"),
    ("redis+sentinel://h1:0/m", "port must be an integer from 1 to 65535"),
    ("redis+sentinel://h1/m?max_size=many", "max_size"),
    ("redis+cluster://h1?bogus=1", "unknown option 'bogus'"),
    ("redis+cluster://:pw@,h2", "empty host"),
])
def test_malformed_urls_are_refused_without_showing_passwords(url, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_redis_url(url + ("&" if "?" in url else "?") + "sentinel_password=hidden" if "sentinel" in url else url)
    assert "hidden" not in str(info.value)


def test_redact_hides_every_password():
    assert redact("redis+sentinel://u:pw@h/m?sentinel_password=sp&password=p2") == \
        "redis+sentinel://u:***@h/m?sentinel_password=***&password=***"


def test_one_parser_one_message_for_every_scheme_and_the_constructors():
    """A bad pool option gets the same message from the constructor, from RedisPool.from_url and from
    parse_redis_url of any scheme (only the URL, redacted, is added); unknown options are refused everywhere."""
    with pytest.raises(ValueError) as direct:
        RedisPool(max_size=0)
    assert str(direct.value) == "max_size must be an integer >= 1, got 0"
    for url in ("redis://:pw@h/0?max_size=0", "unix:///tmp/r.sock?max_size=0", "redis+cluster://:pw@h?max_size=0",
                "redis+sentinel://:pw@h/m?max_size=0"):
        with pytest.raises(ValueError) as parsed:
            parse_redis_url(url)
        assert str(parsed.value) == f"max_size must be an integer >= 1, got '0' (in {redact(url)!r})"
    with pytest.raises(ValueError, match="max_size must be an integer >= 1, got '0'"):
        RedisPool.from_url("redis://h/0?max_size=0")
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        RedisPool.from_url("redis://h/0?bogus=1")
    with pytest.raises(ValueError, match="port must be an integer from 1 to 65535, got 'notaport'") as bad_port:
        parse_redis_url("redis://:hunter2@h:notaport/0")
    assert "hunter2" not in str(bad_port.value)


def test_each_from_url_takes_its_own_kind_and_make_pool_takes_any():
    """RedisPool.from_url refuses a sentinel or cluster URL (naming what takes it); make_pool() builds the pool
    each URL names, without I/O; all are Backends, and only the first two lend raw connections."""
    from pool.cluster import ClusterPool
    from pool.sentinel import SentinelRedisPool

    with pytest.raises(ValueError, match="RedisPool.from_url takes redis://"):
        RedisPool.from_url("redis+cluster://h:7000")
    with pytest.raises(ValueError, match="ClusterPool.from_url takes redis\\+cluster://"):
        ClusterPool.from_url("redis://h/0")
    pools = [parse_redis_url(url).make_pool() for url in
             ("redis://h/0", "redis+sentinel://h1/m", "redis+cluster://h1:7000")]
    try:
        assert [type(p) for p in pools] == [RedisPool, SentinelRedisPool, ClusterPool]
        assert all(isinstance(p, Backend) for p in pools)  # the one interface the service uses
        assert [isinstance(p, ConnectionBackend) for p in pools] == [True, True, False]
    finally:
        for p in pools:
            p.close(0)
