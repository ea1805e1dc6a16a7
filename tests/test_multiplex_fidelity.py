"""redis-py fidelity of the multiplexed path (issue 12): the same calls return the same values and raise the
same exceptions as on redis-py's own ``ConnectionPool``, over strings, hashes, lists, sets, sorted sets,
streams, scripts, pipelines (with errors), transactions and never-decode commands, with
``decode_responses`` both ways and RESP2 and RESP3.

Each script runs once on redis-py's pool and once on the multiplexed pool, against the same freshly
flushed server; the two transcripts (values, or exception class and message) must be identical, and the
multiplexed run must really have gone through shared connections.
"""
import gevent
import pytest
import redis
from redis.exceptions import NoScriptError

from pool import PooledRedis, RedisPool
from pool import stats as S

BAD_UTF8 = b"\xff\xfe not utf-8"


def outcome(call):
    """A comparable record of one call: its value, or the exception's class and message."""
    try:
        value = call()
    except Exception as error:  # noqa: BLE001 - the exception itself is what is compared
        return ("raised", type(error).__name__, str(error))
    if isinstance(value, list):
        value = [("raised", type(v).__name__, str(v)) if isinstance(v, Exception) else v for v in value]
    return ("returned", value)


def strings_and_keys(r):
    yield lambda: r.set("s", "v1")
    yield lambda: r.get("s")
    yield lambda: r.set("s", "v2", get=True)
    yield lambda: r.mset({"m1": "a", "m2": "b"})
    yield lambda: r.mget("m1", "m2", "nope")
    yield lambda: r.mget([])  # EMPTY_RESPONSE: answered without a round trip, or the server's error
    yield lambda: r.incr("n")
    yield lambda: r.incrby("n", 41)
    yield lambda: r.incrbyfloat("f", 1.5)
    yield lambda: r.incr("s")  # ResponseError: not an integer
    yield lambda: r.append("s", "-tail")
    yield lambda: r.getrange("s", 0, 3)
    yield lambda: r.setrange("s", 1, "XY")
    yield lambda: r.strlen("s")
    yield lambda: r.getset("s", "v3")
    yield lambda: r.setnx("s", "never")
    yield lambda: r.getdel("m2")
    yield lambda: r.set("e", "x", ex=100)
    yield lambda: 98 <= r.ttl("e") <= 100
    yield lambda: r.persist("e")
    yield lambda: r.setbit("bits", 7, 1)
    yield lambda: r.getbit("bits", 7)
    yield lambda: r.bitcount("bits")
    yield lambda: r.bitfield("bf").set("u8", 0, 200).get("u8", 0).execute()
    yield lambda: r.exists("s", "m1", "nope")
    yield lambda: r.type("s")
    yield lambda: r.rename("nope", "x")  # ResponseError: no such key
    yield lambda: r.copy("s", "s-copy")
    yield lambda: r.touch("s", "m1")
    yield lambda: r.unlink("s-copy")
    yield lambda: sorted(r.keys("m*"))
    yield lambda: sorted(r.scan_iter(match="m*"))
    yield lambda: r.object("encoding", "n")
    yield lambda: r.dump("n")  # NEVER_DECODE: raw bytes even with decode_responses
    yield lambda: r.restore("n-restored", 0, r.dump("n"))
    yield lambda: r.get("n-restored")
    yield lambda: r.delete("m1", "nope")
    yield lambda: r.ping()
    yield lambda: r.echo("hello")
    yield lambda: r.set("bad", BAD_UTF8)
    yield lambda: r.get("bad")  # UnicodeDecodeError with decode_responses, bytes without
    yield lambda: r.get("s")  # and the connection carries on


def hashes_lists_sets(r):
    yield lambda: r.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
    yield lambda: r.hget("h", "a")
    yield lambda: r.hmget("h", ["a", "zz", "c"])
    yield lambda: r.hgetall("h")
    yield lambda: r.hincrby("h", "a", 10)
    yield lambda: r.hincrbyfloat("h", "b", 0.5)
    yield lambda: sorted(r.hkeys("h"))
    yield lambda: sorted(r.hvals("h"))
    yield lambda: (r.hlen("h"), r.hexists("h", "c"), r.hstrlen("h", "c"), r.hsetnx("h", "c", "9"))
    yield lambda: r.hdel("h", "c", "zz")
    yield lambda: r.hscan("h")
    yield lambda: r.lpush("l", "a", "b", "c")
    yield lambda: r.rpush("l", "x", "y")
    yield lambda: r.lrange("l", 0, -1)
    yield lambda: (r.lpop("l"), r.rpop("l", 2), r.llen("l"), r.lindex("l", 0))
    yield lambda: (r.lset("l", 0, "B"), r.linsert("l", "after", "B", "B2"), r.lrem("l", 1, "a"))
    yield lambda: (r.lpos("l", "B2"), r.ltrim("l", 0, 10), r.lmove("l", "l2"), r.rpoplpush("l2", "l"))
    yield lambda: r.lpush("h", "x")  # WRONGTYPE
    yield lambda: r.lset("l", 99, "x")  # ERR index out of range
    yield lambda: r.sadd("st", "a", "b", "c")
    yield lambda: r.sadd("st2", "b", "c", "d")
    yield lambda: r.smembers("st")
    yield lambda: (r.sismember("st", "a"), r.smismember("st", ["a", "z"]), r.scard("st"))
    yield lambda: (r.sinter("st", "st2"), r.sunion("st", "st2"), r.sdiff("st", "st2"))
    yield lambda: (r.sinterstore("st3", ["st", "st2"]), r.smove("st", "st2", "a"), r.srem("st", "b", "zz"))
    yield lambda: r.sscan("st2")


def sorted_sets_and_more(r):
    yield lambda: r.zadd("z", {"a": 1, "b": 2.5, "c": 3})
    yield lambda: r.zrange("z", 0, -1, withscores=True)
    yield lambda: r.zrangebyscore("z", 2, "+inf", withscores=True)
    yield lambda: r.zrevrange("z", 0, 1)
    yield lambda: (r.zscore("z", "b"), r.zincrby("z", 2, "a"), r.zrank("z", "a"), r.zcard("z"))
    yield lambda: (r.zcount("z", 0, 10), r.zlexcount("z", "-", "+"), r.zmscore("z", ["a", "q"]))
    yield lambda: r.zpopmin("z")
    yield lambda: (r.zunionstore("zu", ["z", "z"]), r.zrange("zu", 0, -1, withscores=True))
    yield lambda: (r.zrangestore("zs", "z", 0, 0), r.zrem("z", "c", "q"))
    yield lambda: r.zadd("z", {"a": "not a float"})  # ResponseError
    yield lambda: r.pfadd("hll", "a", "b", "c")
    yield lambda: r.pfcount("hll")
    yield lambda: r.geoadd("geo", (13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"))
    yield lambda: r.geodist("geo", "Palermo", "Catania", unit="km")
    yield lambda: r.geopos("geo", "Palermo", "nowhere")
    yield lambda: r.xadd("stream", {"f": "1"}, id="1-1")
    yield lambda: r.xadd("stream", {"f": "2"}, id="2-1")
    yield lambda: r.xadd("stream", {"f": "0"}, id="1-0")  # ERR: smaller than the top item
    yield lambda: (r.xlen("stream"), r.xrange("stream"), r.xrevrange("stream", count=1))
    yield lambda: r.xgroup_create("stream", "grp", id="0")
    yield lambda: r.xreadgroup("grp", "consumer", {"stream": ">"}, count=1)
    yield lambda: r.xread({"stream": "0"}, count=5)
    yield lambda: r.xack("stream", "grp", "1-1")
    yield lambda: r.xpending("stream", "grp")
    yield lambda: r.xinfo_groups("stream")
    yield lambda: (r.xdel("stream", "2-1"), r.xtrim("stream", maxlen=10))
    yield lambda: r.xgroup_create("stream", "grp", id="0")  # BUSYGROUP


def scripts(r):
    body = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1] .. ':n')}"
    sha = "0" * 40
    yield lambda: r.evalsha(sha, 0)  # NoScriptError
    yield lambda: r.eval(body, 1, "sk", "arg")
    yield lambda: r.eval("return redis.error_reply('MYERR custom')", 0)
    yield lambda: r.eval("return redis.call('LPUSH', KEYS[1], 1)", 1, "s")  # WRONGTYPE from inside a script
    yield lambda: r.eval("return {1, 'two', {3, 'four'}, redis.status_reply('OK')}", 0)
    yield lambda: r.script_exists(r.script_load(body))
    script = r.register_script("return redis.call('GET', KEYS[1])")
    yield lambda: script(keys=["s"])
    yield lambda: r.script_flush()
    yield lambda: script(keys=["s"])  # NOSCRIPT, then loaded again by redis-py


def pipelines(r):
    def plain(raise_on_error):
        with r.pipeline(transaction=False) as pipe:
            pipe.set("p", "1").incr("p").lpush("p", "x").get("p").hgetall("h").dump("p").get("bad")
            return pipe.execute(raise_on_error=raise_on_error)

    def transaction(raise_on_error):
        with r.pipeline(transaction=True) as pipe:
            pipe.incr("t").lpush("t", "x").get("t").dump("t")
            return pipe.execute(raise_on_error=raise_on_error)

    def watched():
        with r.pipeline() as pipe:
            pipe.watch("w")
            current = pipe.get("w")
            pipe.multi()
            pipe.set("w", (current or b"0") + b"!")
            return pipe.execute()

    def scripted():
        with r.pipeline(transaction=False) as pipe:
            pipe.eval("return ARGV[1]", 0, "a").evalsha("0" * 40, 0).get("p")
            return pipe.execute(raise_on_error=False)

    yield lambda: r.set("bad", BAD_UTF8)
    yield lambda: r.hset("h", "k", "v")
    yield lambda: plain(False)
    yield lambda: plain(True)  # raises the first error (annotated with its command)
    yield lambda: transaction(False)
    yield lambda: transaction(True)
    yield watched
    yield watched
    yield scripted
    yield lambda: r.get("p")


SCRIPTS = [strings_and_keys, hashes_lists_sets, sorted_sets_and_more, scripts, pipelines]


def transcript(client, flush, script):
    flush()
    return [outcome(call) for call in script(client)]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("client_class", [redis.Redis, PooledRedis])
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.__name__ for s in SCRIPTS])
def test_same_values_and_exceptions_as_redis_py(redis_url, admin, script, client_class, decode, protocol):
    """Every call of the script returns the same value (or raises the same exception class with the same
    message) on the multiplexed pool as on redis-py's own pool; the shared path really carried them."""
    reference_pool = redis.ConnectionPool.from_url(redis_url, decode_responses=decode, protocol=protocol)
    p = RedisPool.from_url(redis_url, max_size=4, multiplex=2, decode_responses=decode, protocol=protocol,
                           name="fidelity")
    try:
        expected = transcript(redis.Redis(connection_pool=reference_pool), admin.flushdb, script)
        got = transcript(client_class(connection_pool=p), admin.flushdb, script)
        for index, (want, have) in enumerate(zip(expected, got, strict=False)):
            assert have == want, f"call {index} of {script.__name__}"
        assert len(got) == len(expected)
        stats = p.get_stats()
        assert stats[S.MUX_COMMANDS] >= len(got) // 2, stats
        assert (stats[S.POOL_IN_USE] - stats[S.MUX_CONNECTIONS_NUM], stats[S.REQUESTS_WAITING]) == (0, 0), stats
    finally:
        p.close(timeout=1.0)
        reference_pool.disconnect()


def test_connection_attributes_set_on_a_handle_reach_its_exclusive_connection(redis_url):
    """redis-py code (and its tests) set and patch attributes of the connection a client holds: on a
    multiplexed pool that object is a SharedHandle, and an attribute it does not have of its own is set on, and
    deleted from, its exclusive connection (as reading one is); mock.patch.object restores it; the handle's own
    methods may be patched on the handle itself."""
    from unittest import mock

    p = RedisPool.from_url(redis_url, max_size=3, multiplex=1, name="attrs")
    try:
        handle = p.get_connection()
        assert handle.exclusive_connection is None
        handle.next_health_check = 12.5
        conn = handle.exclusive_connection
        assert conn is not None and conn.next_health_check == 12.5 == handle.next_health_check
        parser = conn._parser
        with mock.patch.object(handle, "_parser") as patched:
            assert conn._parser is patched
        assert conn._parser is parser
        with mock.patch.object(handle, "send_command", wraps=handle.send_command) as spied:
            handle.send_command("PING")
        assert spied.call_args_list == [mock.call("PING")] and "send_command" not in vars(handle)
        assert handle.read_response() == b"PONG"
        p.release(handle)
    finally:
        p.close(timeout=1.0)


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_raw_execute_returns_what_read_response_returns(redis_url, admin, decode):
    """``p.execute(...)`` on the shared path returns exactly what ``send_command`` + ``read_response`` return
    on an exclusive connection (no response callbacks), and raises the same error replies."""
    p = RedisPool.from_url(redis_url, max_size=3, multiplex=1, decode_responses=decode, name="raw")
    exclusive = RedisPool.from_url(redis_url, max_size=1, decode_responses=decode, name="excl")

    def seed():
        admin.flushdb()
        admin.hset("h", mapping={"a": "1", "b": "2"})
        admin.set("s", "text")

    def exclusive_execute(*args, never_decode=False):
        with exclusive.connection() as conn:
            conn.send_command(*args)
            return conn.read_response(disable_decoding=never_decode)

    try:
        for args, never in [(("HGETALL", "h"), False), (("GET", "s"), False), (("DUMP", "s"), True),
                            (("SET", "x", "1"), False), (("ZADD", "z", "1", "m"), False),
                            (("ZRANGE", "z", 0, -1, "WITHSCORES"), False), (("LPUSH", "s", 1), False),
                            (("EVALSHA", "0" * 40, 0), False), (("CLIENT", "GETNAME"), False)]:
            seed()
            want = outcome(lambda args=args, never=never: exclusive_execute(*args, never_decode=never))
            seed()
            have = outcome(lambda args=args, never=never: p.execute(*args, never_decode=never))
            if args[0] == "CLIENT":  # each pool names its connections after itself
                want, have = want[0], have[0]
            assert have == want, args
        with pytest.raises(NoScriptError):
            p.execute("EVALSHA", "0" * 40, 0)
        assert p.get_stats()[S.MUX_COMMANDS] >= 9
    finally:
        p.close(timeout=1.0)
        exclusive.close(timeout=1.0)


def test_commands_sent_on_one_handle_before_reading_run_in_the_order_sent(redis_url):
    """As on one redis-py connection, commands sent on one handle before their replies are read run in the
    order sent, although two shared connections are open (an INCR, a pipeline batch and a GET of the same
    key, read afterwards: the GET sees both increments); and a handle whose connection is full (the in-flight
    bound) first reads its replies, then sends on another, never overtaking them."""
    p = RedisPool.from_url(redis_url, max_size=4, multiplex=2, multiplex_max_in_flight=3, name="order")
    try:
        r = PooledRedis(connection_pool=p)
        gevent.joinall([gevent.spawn(lambda: [r.ping() for _ in range(50)]) for _ in range(20)], raise_error=True)
        assert p.get_stats()[S.MUX_CONNECTIONS_NUM] == 2
        for _ in range(300):
            handle = p.get_connection()
            handle.send_command("INCR", "c")
            handle.send_packed_command(handle.pack_commands([("INCR", "c"), ("INCR", "c")]))
            handle.send_command("GET", "c")  # the fourth reply owed: beyond the bound of 3
            first = handle.read_response()
            assert [handle.read_response(), handle.read_response()] == [first + 1, first + 2]
            assert int(handle.read_response()) == first + 2
            p.release(handle)
    finally:
        p.close(timeout=1.0)


def test_a_connection_attribute_set_on_the_handle_reaches_its_connection(redis_url, admin):
    """As on a redis-py connection, ``r.connection.password = ...`` (redis-py's own test suite does this before
    re-authenticating) takes effect: the handle moves to an exclusive connection and sets it there, so its
    reconnect authenticates; the shared connections are untouched."""
    p = RedisPool.from_url(redis_url, max_size=3, multiplex=1, name="attrs")
    r = redis.Redis(connection_pool=p, single_connection_client=True)
    try:
        assert r.ping()
        admin.config_set("requirepass", "secret")
        r.connection.password = "secret"
        assert r.connection.password == "secret"
        r.connection.disconnect()
        assert r.ping() and r.set("k", "v") and r.get("k") == b"v"
    finally:
        admin.config_set("requirepass", "")
        r.close()
        p.close(timeout=1.0)
