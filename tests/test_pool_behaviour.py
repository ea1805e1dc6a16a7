"""The pool's public API and behaviours 1-7 of issue 2, proven against a real redis-server.

Server-side facts come from CLIENT LIST / CLIENT INFO through the ``admin`` client; the pool's own view
from ``get_stats()`` keyed by ``pool.stats`` names. Tests wait on state with ``wait_until`` instead of sleeping.
"""
import time

import gevent
import pytest
import redis
from gevent.event import Event

from pool import PoolClosed, PoolError, PoolTimeout, RedisPool, TooManyRequests, core
from pool import stats as S
from pool.server import free_port
from pool.testing import server_clients, wait_until


# -- helpers --------------------------------------------------------------------------------------------
def stat(pool, key):
    return pool.get_stats()[key]


def client_id(conn):
    conn.send_command("CLIENT", "ID")
    return conn.read_response()


def assert_settled(pool, size):
    """Nothing borrowed or waiting, and every open connection is idle: no slot lost, none leaked."""
    got = pool.get_stats()
    assert (got[S.POOL_SIZE], got[S.POOL_AVAILABLE], got[S.POOL_IN_USE], got[S.REQUESTS_WAITING]) == (size, size, 0, 0)


def borrow_all_at_once(pool, count):
    """Hold ``count`` connections at the same time, PING each, and return them; their client ids."""
    conns = [pool.getconn(0.5) for _ in range(count)]
    try:
        for conn in conns:
            conn.send_command("PING")
            assert conn.read_response() in (b"PONG", "PONG")
        return {client_id(conn) for conn in conns}
    finally:
        for conn in conns:
            pool.putconn(conn)


@pytest.fixture
def make_pool(new_pool, redis_server):
    """``make_pool(url=None, **options)``: a ``RedisPool`` on the test server, named t0, t1...; closed at teardown."""
    return lambda url=None, **options: new_pool(url or redis_server.url, **options)


# -- public API ---------------------------------------------------------------------------------------------
def test_redis_client_runs_commands_pipelines_and_transactions(make_pool):
    """``redis.Redis(connection_pool=p)`` works for plain commands, pipelines and transactions, and clean
    use returns the connection for reuse (one connection serves a sequential caller)."""
    p = make_pool(max_size=2)
    r = redis.Redis(connection_pool=p)
    assert r.set("a", "1") is True
    assert r.incr("a") == 2
    assert r.get("a") == b"2"
    with r.pipeline(transaction=False) as pipe:
        assert pipe.set("b", "x").get("b").incr("a").execute() == [True, b"x", 3]
    with r.pipeline(transaction=True) as pipe:
        assert pipe.incr("a").get("a").execute() == [4, b"4"]

    def double(pipe):  # WATCH-based optimistic transaction
        value = int(pipe.get("a"))
        pipe.multi()
        pipe.set("a", value * 2)

    assert r.transaction(double, "a") == [True]
    assert r.get("a") == b"8"
    assert_settled(p, 1)
    got = p.get_stats()
    assert got[S.CONNECTIONS_NUM] == 1
    assert got[S.DISCARDED_RESET] == got[S.DISCARDED_ERROR] == got[S.DISCARDED_CANCELLED] == 0


def test_redis_client_pubsub(make_pool):
    """Pub/sub through ``redis.Redis(connection_pool=p)`` receives messages, and closing it frees its slot."""
    p = make_pool(max_size=2)
    r = redis.Redis(connection_pool=p)
    pubsub = r.pubsub()
    try:
        pubsub.subscribe("news")
        assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
        assert stat(p, S.POOL_IN_USE) == 1
        assert r.publish("news", "hello") == 1
        message = pubsub.get_message(timeout=1.0)
        assert (message["type"], message["data"]) == ("message", b"hello")
    finally:
        pubsub.close()
    # the subscribed connection is never lent again: only the publisher's connection is left
    assert_settled(p, 1)
    assert r.get("missing") is None


def test_client_is_pinned_to_one_connection(make_pool, admin):
    """``p.client()`` yields a Redis whose commands, pipelines and transactions all use one borrowed
    connection, held for the whole block and given back (not closed) at its end."""
    p = make_pool(max_size=3)
    with p.client() as r:
        first = r.client_id()
        assert r.set("k", "v") is True
        assert stat(p, S.POOL_IN_USE) == 1
        assert r.client_id() == first
        with r.pipeline(transaction=False) as pipe:
            assert pipe.client_id().get("k").execute() == [first, b"v"]
        with r.pipeline(transaction=True) as pipe:
            assert pipe.client_id().incr("n").execute() == [first, 1]
        assert r.client_getname() == f"greenpool:{p.name}"
        assert stat(p, S.POOL_IN_USE) == 1
    assert_settled(p, 1)
    assert [c["id"] for c in server_clients(admin, p)] == [str(first)]
    with p.client() as r:
        assert r.client_id() == first  # reused, not reopened


def test_connection_yields_a_raw_connection(make_pool):
    """``p.connection()`` yields the raw redis-py connection for send/read and takes it back clean."""
    p = make_pool(max_size=2)
    with p.connection() as conn:
        assert isinstance(conn, redis.connection.Connection)
        conn.send_command("SET", "raw", "1")
        conn.send_command("GET", "raw")
        assert conn.read_response() is not None
        assert conn.read_response() == b"1"
    assert_settled(p, 1)
    assert stat(p, S.DISCARDED_RESET) == 0


def test_repr_shows_live_counts(make_pool):
    """``repr(p)`` names the pool, its state and live size/idle/in_use/waiting counts, never credentials."""
    p = make_pool(url="redis://:secret@127.0.0.1:1/0", max_size=3, name="shown")
    assert repr(p) == ("<RedisPool 'shown' open size=0, idle=0, in_use=0, waiting=0, max_size=3 "
                       "target=127.0.0.1:1/0>")
    q = make_pool(max_size=3, name="live")
    conns = [q.getconn() for _ in range(3)]
    waiter = gevent.spawn(q.getconn, 5)
    wait_until(lambda: stat(q, S.REQUESTS_WAITING) == 1, what="a waiter")
    assert "'live' open size=3, idle=0, in_use=3, waiting=1, max_size=3" in repr(q)
    waiter.kill()
    q.putconn(conns.pop())
    assert "'live' open size=3, idle=1, in_use=2, waiting=0, max_size=3" in repr(q)
    for conn in conns:
        q.putconn(conn)
    q.close()
    assert "'live' closed size=0, idle=0, in_use=0, waiting=0" in repr(q)
    assert "secret" not in repr(p)


def test_errors_are_redis_connection_errors():
    """The pool's errors subclass redis-py's ConnectionError, so existing ``except`` clauses catch them."""
    for error in (PoolError, PoolTimeout, PoolClosed, TooManyRequests):
        assert issubclass(error, redis.exceptions.ConnectionError)
    for error in (PoolTimeout, PoolClosed, TooManyRequests):
        assert issubclass(error, PoolError)


def test_stats_keys_are_the_documented_names(make_pool):
    """``get_stats()`` returns exactly the gauges and counters named in ``pool.stats``; ``pop_stats()``
    resets the counters and keeps the gauges."""
    p = make_pool(max_size=2, min_size=0)
    redis.Redis(connection_pool=p).ping()
    got = p.get_stats()
    assert set(got) == set(S.GAUGES) | set(S.COUNTERS)
    assert (got[S.POOL_MAX], got[S.POOL_MIN], got[S.REQUESTS_NUM], got[S.CONNECTIONS_NUM]) == (2, 0, 1, 1)
    popped = p.pop_stats()
    assert popped[S.REQUESTS_NUM] == 1
    after = p.get_stats()
    assert after[S.REQUESTS_NUM] == 0 and after[S.POOL_SIZE] == 1


# -- options --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("max_size", 0), ("max_size", -1), ("max_size", 1.5), ("max_size", "3"), ("max_size", True),
    ("min_size", -1), ("min_size", 11), ("min_size", 0.5),
    ("timeout", -1), ("timeout", "1"), ("timeout", float("nan")),
    ("max_waiting", -1), ("max_waiting", 1.5),
    ("health_check_interval", -1), ("health_check_interval", "30"), ("health_check_interval", float("nan")),
    ("max_lifetime", -5), ("max_lifetime", "1h"), ("max_lifetime", float("nan")),
    ("max_idle", -5), ("leak_threshold", -1), ("health_check_interval", True),
    ("name", 5),
])
def test_invalid_option_raises_value_error_naming_it(option, value):
    """Every invalid pool option is refused at construction with a ValueError that names the option."""
    with pytest.raises(ValueError, match=option):
        RedisPool(**{option: value})


def test_zero_means_off_for_every_period_and_limit(make_pool, admin):
    """0 means off, as None does: max_lifetime=0 and max_idle=0 never recycle, leak_threshold=0 never reports,
    health_check_interval=0 never PINGs, max_waiting=0 never refuses; the URL query takes the same zeros.
    (A literal 0 would expire every connection at once and report every borrow as a leak.)"""
    p = make_pool(url=None, max_size=1, max_lifetime=0, max_idle=0, leak_threshold=0, health_check_interval=0,
                  max_waiting=0)
    assert RedisPool.from_url("redis://127.0.0.1:1/0?max_lifetime=0&max_idle=0&leak_threshold=0"
                              "&health_check_interval=0&max_waiting=0").max_lifetime == 0
    pings = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
    with p.connection() as conn:
        first = client_id(conn)
        waiters = [gevent.spawn(p.getconn, 5.0) for _ in range(3)]  # all queue: none is refused
        wait_until(lambda: stat(p, S.REQUESTS_WAITING) == 3, 2)
        gevent.sleep(0.1)  # held "longer than" 0 s, and housekeeping had its chances
        gevent.killall(waiters)
    with p.connection() as conn:
        assert client_id(conn) == first  # the same connection: not recycled, not re-checked by PING
    assert admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) == pings
    got = p.get_stats()
    quiet = (S.DISCARDED_LIFETIME, S.DISCARDED_IDLE, S.LEAKS_REPORTED, S.REQUESTS_REJECTED)
    assert [got[key] for key in quiet] == [0] * 4


def test_zero_checkout_timeout_means_do_not_wait(make_pool):
    """timeout=0 is the one exception: not "off" but "do not wait": a free connection is lent, a busy pool
    raises PoolTimeout at once."""
    p = make_pool(max_size=1)
    with p.connection(timeout=0):
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            p.getconn(0)
        assert time.monotonic() - started < 0.05


@pytest.mark.parametrize("query, option", [
    ("max_size=abc", "max_size"), ("max_size=0", "max_size"), ("timeout=soon", "timeout"),
    ("min_size=-1", "min_size"), ("max_waiting=x", "max_waiting"), ("max_idle=-1", "max_idle"),
    ("health_check_interval=x", "health_check_interval"), ("leak_threshold=-1", "leak_threshold"),
])
def test_invalid_url_option_raises_value_error_naming_it(query, option):
    """A bad option in a URL's query string is a ValueError naming it, too."""
    with pytest.raises(ValueError, match=option):
        RedisPool.from_url(f"redis://127.0.0.1:1/0?{query}")


def test_from_url_casts_query_options(redis_url, admin):
    """``from_url`` casts pool options from the query string; keywords override the URL."""
    url = (redis_url.rsplit("/", 1)[0] + "/3?max_size=4&min_size=1&timeout=0.5&max_waiting=7"
           "&health_check_interval=2&max_lifetime=100&max_idle=50&leak_threshold=7.5&name=web")
    p = RedisPool.from_url(url, max_waiting=9)
    try:
        assert (p.max_size, p.min_size, p.timeout, p.max_waiting) == (4, 1, 0.5, 9)
        assert (p.health_check_interval, p.max_lifetime, p.max_idle, p.leak_threshold) == (2, 100.0, 50.0, 7.5)
        assert p.name == "web" and isinstance(p.timeout, float) and isinstance(p.max_size, int)
        with p.client() as r:
            info = r.client_info()
        assert (info["name"], int(info["db"])) == ("greenpool:web", 3)
        assert len(server_clients(admin, p)) == 1
    finally:
        p.close()


# -- 1. bounded ------------------------------------------------------------------------------------------------
def test_never_more_than_max_size_connections_server_side(make_pool, admin):
    """Under 200 greenlets of mixed load (per-command, pinned clients, pipelines), the server never sees
    more than ``max_size`` of the pool's connections, and the pool's size never exceeds it either."""
    max_size = 8
    p = make_pool(max_size=max_size, timeout=10)
    r = redis.Redis(connection_pool=p)
    seen_server, seen_size = [], []
    done = Event()

    def monitor():
        while not done.is_set():
            seen_server.append(len(server_clients(admin, p)))
            gevent.sleep(0.001)

    def worker(i):
        key = f"key:{i}"
        for j in range(6):
            seen_size.append(stat(p, S.POOL_SIZE))
            if j % 3 == 0:
                assert r.set(key, key) is True
                assert r.get(key) == key.encode()
            elif j % 3 == 1:
                with p.client() as c:
                    assert c.incr(f"n:{i}") == (j + 2) // 3
                    gevent.sleep(0.001)  # hold it a while, so the others must queue
                    assert c.get(key) == key.encode()
            else:
                with r.pipeline(transaction=j % 2 == 0) as pipe:
                    assert pipe.get(key).exists(key).execute() == [key.encode(), 1]

    watcher = gevent.spawn(monitor)
    workers = [gevent.spawn(worker, i) for i in range(200)]
    gevent.joinall(workers, raise_error=True)
    done.set()
    watcher.join()
    assert max(seen_server) <= max_size and max(seen_size) <= max_size
    assert max(seen_server) == max_size  # the load did saturate the pool
    assert stat(p, S.REQUESTS_QUEUED) > 0
    assert_settled(p, max_size)
    assert len(server_clients(admin, p)) == max_size


# -- 2. fair ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("returned", ["clean", "discarded"])
def test_waiters_are_served_in_arrival_order(make_pool, returned):
    """Queued checkouts are served strictly first come, first served, whether each holder hands its
    connection on or discards it (the freed place goes to the oldest waiter); a newcomer arriving as a
    connection is returned queues behind the waiters instead of grabbing it."""
    p = make_pool(max_size=1, timeout=5)
    order = []

    def waiter(tag):
        with p.connection() as conn:
            order.append(tag)
            conn.send_command("MULTI" if returned == "discarded" else "PING")
            conn.read_response()  # yields to the hub while holding the connection

    held = p.getconn()
    greenlets = []
    for i in range(30):
        greenlets.append(gevent.spawn(waiter, i))
        wait_until(lambda i=i: stat(p, S.REQUESTS_WAITING) == i + 1, what=f"waiter {i} queued")
    p.putconn(held)
    greenlets.append(gevent.spawn(waiter, "newcomer"))
    gevent.joinall(greenlets, raise_error=True)
    assert order == list(range(30)) + ["newcomer"]
    assert_settled(p, 0 if returned == "discarded" else 1)
    assert stat(p, S.DISCARDED_RESET) == (31 if returned == "discarded" else 0)


def test_cancelled_waiters_never_get_a_connection_and_none_is_lost(make_pool, admin):
    """A waiter that timed out, was killed, or hit an outer gevent.Timeout is never handed a connection,
    even one handed to it just before it was killed; no connection or slot is lost, and afterwards all
    ``max_size`` connections are usable at once."""
    p = make_pool(max_size=2, timeout=5)
    served = []

    def waiter(tag, timeout=None):
        conn = p.getconn(timeout)
        served.append(tag)
        p.putconn(conn)

    held = [p.getconn(), p.getconn()]
    timed_out = gevent.spawn(waiter, "timed out", 0.1)
    killed = gevent.spawn(waiter, "killed")
    outer = gevent.spawn(gevent.with_timeout, 0.1, waiter, "outer timeout")
    patient = gevent.spawn(waiter, "patient")
    wait_until(lambda: stat(p, S.REQUESTS_WAITING) == 4, what="four waiters")
    killed.kill()
    gevent.joinall([timed_out, outer])
    assert isinstance(timed_out.exception, PoolTimeout)
    assert isinstance(outer.exception, gevent.Timeout)
    assert stat(p, S.REQUESTS_WAITING) == 1
    p.putconn(held.pop())
    patient.join(2)
    assert served == ["patient"]

    # The race: a connection is handed to a waiter whose kill is already scheduled, before it runs.
    held.append(p.getconn(0))
    doomed = gevent.spawn(waiter, "handed, then killed")
    after = gevent.spawn(waiter, "next in line")
    wait_until(lambda: stat(p, S.REQUESTS_WAITING) == 2, what="two waiters")
    doomed.kill(block=False)
    p.putconn(held.pop())  # hands the connection to `doomed`, whose GreenletExit arrives first
    gevent.joinall([doomed, after])
    assert doomed.successful() and after.successful()  # GreenletExit counts as success
    assert served == ["patient", "next in line"]
    p.putconn(held.pop())

    got = p.get_stats()
    assert (got[S.REQUESTS_TIMEOUTS], got[S.REQUESTS_CANCELLED]) == (1, 3)
    assert got[S.DISCARDED_CANCELLED] == 0  # none was even borrowed
    assert_settled(p, 2)
    assert len(borrow_all_at_once(p, 2)) == 2
    assert len(server_clients(admin, p)) == 2
    assert got[S.CONNECTIONS_NUM] == 2


# -- 3. timeouts and max_waiting ----------------------------------------------------------------------------------
@pytest.mark.timing
def test_pool_timeout_is_on_time_and_carries_live_counts(make_pool):
    """A checkout that cannot be served raises PoolTimeout within [timeout, timeout + 50 ms], from the
    pool's default, an explicit timeout, or the redis.Redis path; its message has the live counts."""
    p = make_pool(max_size=1, timeout=0.2)
    r = redis.Redis(connection_pool=p)
    held = p.getconn()
    other = gevent.spawn(p.getconn, 10)  # so the message counts one other waiter
    wait_until(lambda: stat(p, S.REQUESTS_WAITING) == 1, what="a waiter")
    for timeout, call in ((0.2, p.getconn), (0.1, lambda: p.getconn(0.1)), (0.2, lambda: r.get("k"))):
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as raised:
            call()
        elapsed = time.monotonic() - started
        assert timeout <= elapsed <= timeout + 0.05
        for count in ("size=1", "idle=0", "in_use=1", "waiting=1"):
            assert count in str(raised.value)
    assert stat(p, S.REQUESTS_TIMEOUTS) == 3
    other.kill()
    p.putconn(held)
    assert_settled(p, 1)


def test_max_waiting_refuses_at_once(make_pool):
    """With ``max_waiting`` checkouts queued, the next one gets TooManyRequests at once (no waiting)."""
    p = make_pool(max_size=1, max_waiting=2, timeout=5)
    held = p.getconn()
    queued = [gevent.spawn(p.getconn) for _ in range(2)]
    wait_until(lambda: stat(p, S.REQUESTS_WAITING) == 2, what="two waiters")
    started = time.monotonic()
    with pytest.raises(TooManyRequests, match="waiting=2"):
        p.getconn()
    assert time.monotonic() - started < 0.01
    with pytest.raises(TooManyRequests):
        redis.Redis(connection_pool=p).ping()
    assert stat(p, S.REQUESTS_REJECTED) == 2
    assert stat(p, S.REQUESTS_WAITING) == 2
    gevent.killall(queued)
    p.putconn(held)
    assert_settled(p, 1)


# -- 4. cancellation while borrowed -------------------------------------------------------------------------------
def _cancel_after_send(p, how, ids):
    """Borrow a raw connection, send ECHO 'stale' without reading its reply, then be cancelled by ``how``."""
    sent = Event()

    def borrow():
        with p.connection() as conn:
            ids.append(client_id(conn))
            conn.send_command("ECHO", "stale")
            sent.set()
            if how in (SystemExit, KeyboardInterrupt):
                raise how()
            gevent.sleep(10)

    if how == "gevent.Timeout":
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                borrow()
    elif how == "kill":
        holder = gevent.spawn(borrow)
        sent.wait(2)
        holder.kill()
        assert holder.dead
    else:
        with pytest.raises(how):
            borrow()


@pytest.mark.parametrize("how", ["gevent.Timeout", "kill", SystemExit, KeyboardInterrupt])
def test_cancellation_between_send_and_read_discards_the_connection(make_pool, admin, how):
    """A BaseException after a command was sent and before its reply was read closes that connection
    (server-side it disappears) and frees its slot; the next borrower's replies are its own."""
    p = make_pool(max_size=1)
    ids = []
    _cancel_after_send(p, how, ids)
    assert stat(p, S.DISCARDED_CANCELLED) == 1
    assert stat(p, S.POOL_SIZE) == 0
    wait_until(lambda: not server_clients(admin, p), what="the cancelled connection to go")
    with p.client() as r:
        assert r.client_id() != ids[0]
        assert r.set("k", "fresh") is True
        assert r.get("k") == b"fresh"  # not b"stale"
        assert r.echo("mine") == b"mine"
    assert_settled(p, 1)


@pytest.mark.parametrize("borrow", ["connection", "client"])
def test_base_exception_discards_even_a_clean_connection(make_pool, admin, borrow):
    """A BaseException ends a borrow by closing the connection even when no reply is pending: the pool
    does not guess how far the interrupted code got."""
    p = make_pool(max_size=1)
    with pytest.raises(KeyboardInterrupt):
        with getattr(p, borrow)() as handle:
            conn = handle if borrow == "connection" else handle.connection
            old_id = client_id(conn)
            raise KeyboardInterrupt
    assert stat(p, S.DISCARDED_CANCELLED) == 1
    assert stat(p, S.POOL_SIZE) == 0
    wait_until(lambda: not server_clients(admin, p), what="the connection to go")
    with p.client() as r:
        assert r.client_id() != old_id


@pytest.mark.parametrize("how", [SystemExit, KeyboardInterrupt, gevent.Timeout])
def test_cancellation_after_send_via_redis_client_discards_without_redis_py(make_pool, admin, how):
    """Through ``redis.Redis(connection_pool=p)``, an exception right after the command was sent (before
    redis-py reads, so redis-py closes nothing itself) still discards the connection: the pool counts the
    unread reply on its own. The next command gets its own reply."""
    p = make_pool(max_size=1)
    r = redis.Redis(connection_pool=p)
    assert r.ping()
    conn = p.getconn()  # the one connection redis.Redis will borrow next (max_size=1)
    p.putconn(conn)
    real_send = conn.send_command
    old_id = server_clients(admin, p)[0]["id"]
    redis_py_closed = []

    def send_then_raise(*args, **kwargs):
        del conn.send_command  # one shot
        real_send(*args, **kwargs)
        redis_py_closed.append(conn._sock is None)
        raise how()

    conn.send_command = send_then_raise
    with pytest.raises(how):
        r.echo("stale")
    assert redis_py_closed == [False]
    assert stat(p, S.DISCARDED_CANCELLED) == 1
    assert stat(p, S.POOL_SIZE) == 0
    wait_until(lambda: old_id not in [c["id"] for c in server_clients(admin, p)], what="the old connection to go")
    assert r.echo("mine") == b"mine"
    assert r.set("k", "v") is True
    assert_settled(p, 1)


@pytest.mark.parametrize("path", ["command", "pipeline", "pinned client"])
def test_timeout_while_reading_a_blocking_reply_discards_the_connection(make_pool, admin, path):
    """A gevent.Timeout while a reply is pending (BLPOP blocking server-side) discards the connection
    whichever way it was borrowed; the next borrower is not handed the late reply."""
    p = make_pool(max_size=1)
    r = redis.Redis(connection_pool=p)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            if path == "command":
                r.blpop("queue", 0)
            elif path == "pipeline":
                r.pipeline(transaction=False).set("x", 1).blpop("queue", 0).execute()
            else:
                with p.client() as c:
                    c.blpop("queue", 0)
    assert stat(p, S.DISCARDED_CANCELLED) == 1
    assert stat(p, S.POOL_SIZE) == 0
    wait_until(lambda: not server_clients(admin, p), what="the blocked connection to go")
    admin.rpush("queue", "late")  # would have been the blocked BLPOP's reply
    assert r.echo("mine") == b"mine"
    assert r.lrange("queue", 0, -1) == [b"late"]
    assert_settled(p, 1)


# -- 5. server-side closes --------------------------------------------------------------------------------------------
def test_connections_killed_by_the_server_are_never_handed_out(make_pool, admin):
    """After CLIENT KILL of every idle pooled connection, the caller's next commands succeed: broken
    connections are detected at checkout and replaced, whatever the borrowing path."""
    p = make_pool(max_size=3)
    r = redis.Redis(connection_pool=p)
    old = borrow_all_at_once(p, 3)
    for client in server_clients(admin, p):
        admin.client_kill_filter(_id=client["id"])
    wait_until(lambda: not server_clients(admin, p), what="the kills")
    assert r.set("after", "kill") is True
    assert stat(p, S.CONNECTIONS_LOST) == 3
    with p.client() as c:
        assert c.get("after") == b"kill"
    with r.pipeline() as pipe:
        assert pipe.get("after").execute() == [b"kill"]
    assert not old & borrow_all_at_once(p, 3)
    assert_settled(p, 3)


def test_connection_killed_while_borrowed_is_not_reused(make_pool, admin):
    """A connection killed under its holder fails only the holder's own command, is discarded when it
    comes back, and is not lent again."""
    p = make_pool(max_size=1)
    with pytest.raises(redis.exceptions.ConnectionError):
        with p.client() as c:
            admin.client_kill_filter(_id=c.client_id())
            c.get("k")
    assert stat(p, S.DISCARDED_ERROR) == 1
    assert redis.Redis(connection_pool=p).echo("ok") == b"ok"
    assert_settled(p, 1)


def test_redis_restart_on_the_same_port(make_pool, redis_server):
    """After Redis restarts on the same port, the caller's next commands succeed on every path."""
    p = make_pool(max_size=3)
    r = redis.Redis(connection_pool=p)
    borrow_all_at_once(p, 3)
    redis_server.restart()
    assert r.set("after", "restart") is True
    with p.client() as c:
        assert c.get("after") == b"restart"
    assert len(borrow_all_at_once(p, 3)) == 3
    assert stat(p, S.CONNECTIONS_LOST) == 3
    assert_settled(p, 3)


# -- 6. session state --------------------------------------------------------------------------------------------------
def _leave_state(p, state):
    if state == "SELECT via redis.Redis":
        redis.Redis(connection_pool=p).execute_command("SELECT", 5)
        return
    if state == "MULTI via client()":
        with p.client() as r:
            r.execute_command("MULTI")
        return
    with p.connection() as conn:
        args = {"MULTI": ("MULTI",), "WATCH": ("WATCH", "w"), "SUBSCRIBE": ("SUBSCRIBE", "ch"),
                "SELECT": ("SELECT", 5), "PSUBSCRIBE": ("PSUBSCRIBE", "c*")}[state]
        conn.send_command(*args)
        conn.read_response(push_request=True)  # RESP3 sends (p)subscribe confirmations as pushes


@pytest.mark.parametrize("state", ["MULTI", "WATCH", "SUBSCRIBE", "PSUBSCRIBE", "SELECT",
                                   "SELECT via redis.Redis", "MULTI via client()"])
def test_connection_returned_with_session_state_is_discarded(make_pool, admin, state):
    """A connection given back inside MULTI or WATCH, subscribed, or switched to another db is discarded;
    the next borrower's connection is clean: configured db, no transaction, no subscription, no watch."""
    p = make_pool(max_size=1, db=2)
    with p.client() as r:
        first = r.client_id()
    _leave_state(p, state)
    assert stat(p, S.DISCARDED_RESET) == 1
    assert stat(p, S.POOL_SIZE) == 0
    admin.execute_command("SELECT", 2)
    admin.set("w", "changed by someone else")  # would make a leftover WATCH abort the EXEC below
    with p.client() as r:
        info = r.client_info()
        assert r.client_id() != first
        assert (int(info["db"]), int(info["multi"]), int(info["sub"]), int(info["psub"])) == (2, -1, 0, 0)
        assert r.set("x", "1") is True  # not b"QUEUED"
        with r.pipeline(transaction=True) as pipe:
            assert pipe.get("x").execute() == [b"1"]  # not None (an aborted EXEC)
    assert admin.get("x") == "1"
    assert_settled(p, 1)


# -- 7. connect failures -----------------------------------------------------------------------------------------------
def test_connect_failure_is_fast_loses_no_slot_and_recovers(redis_factory, monkeypatch):
    """With nothing listening: a redis ConnectionError at once and no slot lost; attempts inside the
    backoff window fail fast with PoolError without connecting; when a server starts on the port, the pool
    recovers within about a second."""
    monkeypatch.setattr(core, "BACKOFF_BASE", 0.2)  # a window wide enough to land in deterministically
    port = free_port()
    p = RedisPool(host="127.0.0.1", port=port, max_size=2, name="down", socket_connect_timeout=2)
    r = redis.Redis(connection_pool=p)
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as raised:
            r.ping()
        assert time.monotonic() - started < 0.5
        assert not isinstance(raised.value, PoolError)  # the real connect error, not ours
        assert (stat(p, S.POOL_SIZE), stat(p, S.CONNECTIONS_ERRORS)) == (0, 1)

        started = time.monotonic()
        with pytest.raises(PoolError, match="next attempt in"):
            r.ping()
        with pytest.raises(PoolError):
            p.getconn()
        assert time.monotonic() - started < 0.05
        assert stat(p, S.CONNECTIONS_ERRORS) == 1  # no connect was attempted in the window

        # A crowd failing together, before and after the window: everyone fails fast, no slot is lost.
        for _ in range(2):
            crowd = [gevent.spawn(r.ping) for _ in range(20)]
            gevent.joinall(crowd, timeout=2)
            assert all(isinstance(g.exception, redis.exceptions.ConnectionError) for g in crowd)
            assert_settled(p, 0)
            gevent.sleep(0.5)  # past the largest window (BACKOFF_CAP)

        redis_factory(port=port)
        ready = time.monotonic()

        def ping():
            try:
                return r.ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_until(ping, timeout=1.0, what="recovery")
        assert time.monotonic() - ready <= 1.0
        assert len(borrow_all_at_once(p, 2)) == 2
        assert_settled(p, 2)
    finally:
        p.close()


def test_reconnect_backoff_grows_with_jitter(monkeypatch):
    """Consecutive connect failures back off exponentially (full jitter between half and all of
    ``BACKOFF_BASE * 2**n``, capped by ``BACKOFF_CAP``); a success resets it."""
    monkeypatch.setattr(core, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(core, "BACKOFF_CAP", 0.08)
    p = RedisPool(host="127.0.0.1", port=free_port(), max_size=1, name="backoff")
    windows = []
    try:
        for _failure in range(5):
            with pytest.raises(redis.exceptions.ConnectionError):
                p.getconn()
            with pytest.raises(PoolError) as raised:
                p.getconn()
            windows.append(float(str(raised.value).rsplit("next attempt in ", 1)[1].rstrip("s")))
            gevent.sleep(windows[-1] + 0.002)  # the announced window (rounded to ms) has passed
        for n, window in enumerate(windows):
            ceiling = min(0.08, 0.01 * 2 ** n)
            assert ceiling * 0.5 - 0.005 <= window <= ceiling
        assert stat(p, S.CONNECTIONS_ERRORS) == 5
        assert_settled(p, 0)
    finally:
        p.close()


def test_server_going_down_fails_fast_then_recovers(make_pool, redis_server):
    """While Redis is down, commands fail fast with a redis ConnectionError (no hang, no lost slot); once
    it is back on the same port, commands succeed again."""
    p = make_pool(max_size=2)
    r = redis.Redis(connection_pool=p)
    borrow_all_at_once(p, 2)
    redis_server.stop()
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(redis.exceptions.ConnectionError):
            r.ping()
    assert time.monotonic() - started < 0.5
    assert_settled(p, 0)
    redis_server.start()

    def ping():
        try:
            return r.ping()
        except redis.exceptions.ConnectionError:
            return False

    wait_until(ping, timeout=1.0, what="recovery")
    assert_settled(p, 1)
