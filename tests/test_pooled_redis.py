"""PooledRedis (the lean redis.Redis for a RedisPool) and the pinned client's lifetime."""
import gevent
import pytest
import redis

from pool import PooledRedis, PoolError, RedisPool
from pool import stats as S


@pytest.fixture
def pool(redis_url):
    p = RedisPool.from_url(redis_url, max_size=2, name="lean")
    yield p
    p.close(timeout=1.0)


def test_pooled_redis_answers_like_redis(pool):
    """The lean command path gives the same parsed replies as redis.Redis, callbacks included."""
    lean, stock = PooledRedis(connection_pool=pool), redis.Redis(connection_pool=pool)
    lean.hset("h", mapping={"a": "1", "b": "2"})
    assert lean.hgetall("h") == stock.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert lean.set("k", "v") is True and lean.get("k") == b"v"
    assert lean.incr("n") == 1 and lean.exists("h", "k", "nope") == 2
    assert lean.pipeline().get("k").incr("n").execute() == [b"v", 2]
    assert pool.get_stats()[S.POOL_IN_USE] == 0


def test_pooled_redis_error_reply_keeps_the_connection(pool):
    """A command error (WRONGTYPE) is a reply: the connection stays clean and is reused."""
    lean = PooledRedis(connection_pool=pool)
    lean.set("s", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        lean.hgetall("s")
    assert lean.get("s") == b"x"
    stats = pool.get_stats()
    assert stats[S.CONNECTIONS_NUM] == 1 and stats[S.DISCARDED_RESET] == 0


def test_pooled_redis_cancelled_command_is_discarded(pool):
    """A gevent.Timeout while the reply is pending discards the connection; the next reply is the caller's own."""
    lean = PooledRedis(connection_pool=pool)
    lean.set("mine", "mine")
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            lean.blpop("empty-list", 1)
    assert pool.get_stats()[S.DISCARDED_CANCELLED] == 1
    assert lean.get("mine") == b"mine"


def test_pinned_client_is_cut_loose_after_its_block(pool):
    """A client or pipeline kept past its `with pool.client()` block cannot reach the connection, now lent to others."""
    with pool.client() as kept:
        kept.set("a", "1")
        pipe = kept.pipeline()
    with pool.client() as other:
        with pytest.raises(PoolError, match="gave back"):
            kept.get("a")
        with pytest.raises(PoolError, match="gave back"):
            pipe.get("a").execute()
        assert other.get("a") == b"1"


def test_pinned_client_never_takes_the_shared_path(redis_url):
    """On a multiplexed pool too, a pinned client runs every command on its one connection (the same CLIENT
    ID as the block's connection) and, kept past its block, raises PoolError instead of quietly using a
    shared connection."""
    p = RedisPool.from_url(redis_url, max_size=3, multiplex=1, name="pinned-mux")
    try:
        shared_id = PooledRedis(connection_pool=p).client_id()
        with p.client() as kept, p.connection() as raw:
            assert kept.client_id() != shared_id
            kept.set("a", "1")
            assert kept.get("a") == b"1" and kept.mget([]) == []
            raw.send_command("CLIENT", "ID")
            assert kept.client_id() != raw.read_response()
        with pytest.raises(PoolError, match="gave back"):
            kept.get("a")
        with pytest.raises(PoolError, match="gave back"):
            kept.mget([])
    finally:
        p.close(timeout=1.0)
