"""Cancellation, bounds and lifecycle of the multiplexed path (issue 12), against a real redis-server.

A cancelled caller (``gevent.Timeout``, ``kill()``, a released handle) gets its exception at once. A command
still unsent is never written (proved from the server: INFO commandstats); a sent one keeps its place in
the FIFO and its reply is read and dropped, while the connection stays in service (same CLIENT ID, no new
connection). Bounds queue callers in arrival order with the pool's errors; close, fork, health checks and
lifetime behave as on the exclusive path.
"""
import functools
import time

import gevent
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from test_pool_lifecycle import run_in_child

from pool import PoolClosed, PooledRedis, PoolTimeout, RedisPool, TooManyRequests
from pool import stats as S
from pool.testing import wait_until

OWN_KEYS = [f"own:{i}" for i in range(20)]
SLACK = 0.25


@pytest.fixture
def make_pool(new_pool):
    """``make_pool(url, **options)``: a multiplexed RedisPool (multiplex=1 unless given), closed at teardown."""
    return functools.partial(new_pool, prefix="m", multiplex=1, max_size=4)


@pytest.fixture
def own_keys(admin):
    admin.mset({key: key for key in OWN_KEYS})


def calls(admin, command):
    return admin.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def stat(p, key):
    return p.get_stats()[key]


def assert_own_replies(p, rounds=5):
    """Greenlets, one per key, GET their own key and ECHO a token of their own on the shared path."""
    r = PooledRedis(connection_pool=p)

    def ask(key):
        for n in range(rounds):
            assert r.get(key) == key.encode()
            assert r.echo(f"{key}#{n}") == f"{key}#{n}".encode()

    gevent.joinall([gevent.spawn(ask, key) for key in OWN_KEYS], timeout=10, raise_error=True)


def shared_id(p):
    return PooledRedis(connection_pool=p).client_id()


# -- cancelled before the write -------------------------------------------------------------------------------
def test_released_before_the_write_is_never_sent(make_pool, redis_url, admin):
    """A command queued behind another (unsent until the loop runs) whose caller gives up first is dropped
    whole: the server never runs it, and the command before it gets its own reply."""
    p = make_pool(redis_url)
    shared_id(p)
    admin.config_resetstat()
    first, second = p.get_connection(), p.get_connection()
    first.send_command("GET", "k")  # the connection is idle: written at once
    second.send_command("INCR", "counter")  # queued behind it, to leave with the next write
    p.release(second)  # gives up before that write
    assert first.read_response() is None
    p.release(first)
    assert p.execute("PING") == b"PONG"
    assert calls(admin, "incr") == 0 and admin.get("counter") is None
    assert stat(p, S.MUX_CANCELLED_UNSENT) == 1 and stat(p, S.MUX_REPLIES_DROPPED) == 0
    assert stat(p, S.MUX_CONNECTIONS_NUM) == 1


@pytest.mark.parametrize("how", ["gevent.Timeout", "kill"])
def test_cancelled_while_queued_behind_a_write_backlog_is_never_sent(make_pool, proxy, admin, own_keys, how):
    """A 32 MB SET that the network does not take (blackhole) holds later commands unsent; callers cancelled
    by gevent.Timeout or kill() then are dropped: the server never runs their commands, and a caller that
    waits on gets its own reply once the network flows again."""
    p = make_pool(proxy.url, socket_timeout=10, multiplex_max_queued_bytes=64 * 1024 * 1024)
    r = PooledRedis(connection_pool=p)
    r.ping()
    admin.config_resetstat()
    proxy.blackhole()
    writer = gevent.spawn(r.set, "big", b"x" * (32 * 1024 * 1024))
    wait_until(lambda: p._mux._alive[0]._out, what="a write backlog")
    if how == "kill":
        doomed = [gevent.spawn(r.incr, f"doomed:{i}") for i in range(10)]
        gevent.sleep(0.05)
        for g in doomed:
            g.kill(timeout=1)
        assert all(g.dead for g in doomed)
    else:
        for i in range(10):
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.01):
                    r.incr(f"doomed:{i}")
    survivor = gevent.spawn(r.get, "own:3")
    gevent.sleep(0.05)
    proxy.passthrough()
    assert writer.get(timeout=20) is True
    assert survivor.get(timeout=5) == b"own:3"
    assert calls(admin, "incrby") + calls(admin, "incr") == 0
    assert admin.keys("doomed:*") == []
    assert stat(p, S.MUX_CANCELLED_UNSENT) == 10
    assert stat(p, S.MUX_CONNECTIONS_NUM) == 1 and stat(p, S.DISCARDED_ERROR) == 0
    assert_own_replies(p)


# -- cancelled after the write --------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["gevent.Timeout", "kill"])
def test_cancelled_after_the_write_keeps_the_connection_and_drops_the_reply(make_pool, proxy, admin, own_keys, how):
    """The caller gets its exception at once; the connection stays in service (same CLIENT ID, no new
    connection, nothing discarded); the late reply is read and dropped, and never reaches anyone else."""
    p = make_pool(proxy.url)
    r = PooledRedis(connection_pool=p)
    before = shared_id(p)
    proxy.delay(0.15)
    started = time.monotonic()
    if how == "kill":
        sent_before = proxy.received_up
        holder = gevent.spawn(r.get, "own:0")
        wait_until(lambda: proxy.received_up > sent_before, what="the GET on the wire")
        holder.kill(timeout=1)
        assert holder.dead
    else:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                r.get("own:0")
    assert time.monotonic() - started < 0.15 + SLACK  # at once, not when the reply comes
    others = [gevent.spawn(r.get, key) for key in OWN_KEYS[1:6]]  # queued behind the dropped reply
    assert [g.get(timeout=5) for g in others] == [key.encode() for key in OWN_KEYS[1:6]]
    wait_until(lambda: stat(p, S.MUX_REPLIES_DROPPED) == 1, what="the late reply to be dropped")
    proxy.passthrough()
    assert shared_id(p) == before
    assert stat(p, S.CONNECTIONS_NUM) == 1
    assert sum(stat(p, S.DISCARD_REASONS[reason]) for reason in ("cancelled", "error", "reset", "lost")) == 0
    assert_own_replies(p)


def test_cancelled_pipeline_drops_all_its_replies(make_pool, proxy, own_keys):
    """A pipeline whose caller times out after the write: its three replies are dropped, the next caller's
    replies are its own, the connection is the same."""
    p = make_pool(proxy.url)
    r = redis.Redis(connection_pool=p)
    before = shared_id(p)
    proxy.delay(0.1)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            r.pipeline(transaction=False).get("own:0").get("own:1").get("own:2").execute()
    assert r.pipeline(transaction=False).get("own:3").get("own:4").execute() == [b"own:3", b"own:4"]
    wait_until(lambda: stat(p, S.MUX_REPLIES_DROPPED) == 3, what="three dropped replies")
    proxy.passthrough()
    assert shared_id(p) == before


def test_error_between_send_and_read_drops_the_reply(make_pool, redis_url, own_keys):
    """An application error after send_command and before read_response on a handle: released, the reply is
    dropped when it comes, and the shared connection stays (no 'reset' discard as on the exclusive path)."""
    p = make_pool(redis_url)
    before = shared_id(p)
    handle = p.get_connection()
    try:
        handle.send_command("GET", "own:0")
        raise ValueError("application error")
    except ValueError:
        p.release(handle)
    assert p.execute("GET", "own:1") == b"own:1"
    assert stat(p, S.MUX_REPLIES_DROPPED) == 1
    assert shared_id(p) == before and stat(p, S.DISCARDED_RESET) == 0


# -- bounds ---------------------------------------------------------------------------------------------
def test_in_flight_bound_queues_callers_in_order(make_pool, proxy, own_keys):
    """With multiplex_max_in_flight=2, at most two replies are owed per shared connection; the other callers
    wait their turn (FIFO) and all get their own replies."""
    p = make_pool(proxy.url, multiplex=1, multiplex_max_in_flight=2, timeout=10)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.delay(0.02)
    peak, finished = [0], []

    def watch():
        while len(finished) < 10:
            peak[0] = max(peak[0], p._mux.in_flight())
            gevent.sleep(0.001)

    def ask(i):
        assert r.get(OWN_KEYS[i]) == OWN_KEYS[i].encode()
        finished.append(i)

    watcher = gevent.spawn(watch)
    askers = []
    for i in range(10):
        askers.append(gevent.spawn(ask, i))
        gevent.sleep(0.001)
    gevent.joinall(askers, timeout=10, raise_error=True)
    watcher.join(timeout=1)
    assert peak[0] == 2
    assert finished[:2] == [0, 1] and sorted(finished) == list(range(10))
    assert finished == sorted(finished)  # served in arrival order
    assert stat(p, S.REQUESTS_QUEUED) >= 7


def test_in_flight_bound_errors_are_the_pools(make_pool, proxy, own_keys):
    """Beyond the bound: PoolTimeout after the pool's timeout, TooManyRequests beyond max_waiting, and
    PoolClosed for the callers still waiting when the pool closes."""
    p = make_pool(proxy.url, multiplex=1, multiplex_max_in_flight=1, timeout=0.2, max_waiting=1)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.delay(0.5)
    first = gevent.spawn(r.get, "own:0")  # owes the one reply allowed
    gevent.sleep(0.02)
    waiting = gevent.spawn(r.get, "own:1")  # waits for room
    gevent.sleep(0.02)
    with pytest.raises(TooManyRequests):
        r.get("own:2")
    with pytest.raises(PoolTimeout):
        waiting.get(timeout=2)
    assert stat(p, S.REQUESTS_TIMEOUTS) == 1 and stat(p, S.REQUESTS_REJECTED) == 1
    assert first.get(timeout=2) == b"own:0"
    proxy.passthrough()
    p.timeout = 5
    proxy.delay(0.3)
    busy = gevent.spawn(r.get, "own:0")
    gevent.sleep(0.02)
    late = gevent.spawn(r.get, "own:1")
    gevent.sleep(0.02)
    closer = gevent.spawn(p.close, 2.0)
    with pytest.raises(PoolClosed):
        late.get(timeout=2)
    assert busy.get(timeout=2) == b"own:0"  # owed before the close: it arrives within the deadline
    closer.join(timeout=3)


def test_callers_waiting_for_the_first_shared_connection_count_and_are_bounded(make_pool, proxy):
    """While the first shared connection opens (a slow handshake), the callers waiting for it show in
    requests_waiting and beyond max_waiting get TooManyRequests at once, as callers waiting for a connection
    do on the exclusive path; the one that opens it and those within the bound get their replies."""
    p = make_pool(proxy.url, max_waiting=2, timeout=5)
    r = PooledRedis(connection_pool=p)
    proxy.delay(0.1)
    callers = [gevent.spawn(r.ping) for _ in range(10)]
    wait_until(lambda: sum(g.dead for g in callers) >= 7, what="the callers beyond the bound to be refused")
    assert stat(p, S.REQUESTS_WAITING) == 2
    gevent.joinall(callers, timeout=5)
    assert sum(isinstance(g.exception, TooManyRequests) for g in callers) == 7
    assert [g.value for g in callers if g.successful()] == [True] * 3
    assert stat(p, S.REQUESTS_REJECTED) == 7 and stat(p, S.REQUESTS_WAITING) == 0


def test_timeout_zero_opens_the_first_shared_connection_then_never_waits(make_pool, proxy, own_keys):
    """``timeout=0`` ("do not wait") lets a call open the first shared connection, as an exclusive checkout may
    open a connection into a free slot; beyond the in-flight bound it fails at once with PoolTimeout."""
    p = make_pool(proxy.url, multiplex=1, multiplex_max_in_flight=1, timeout=0)
    r = PooledRedis(connection_pool=p)
    assert r.get("own:0") == b"own:0"  # the open is not a wait
    proxy.delay(0.3)
    first = gevent.spawn(r.get, "own:1")  # owes the one reply allowed
    gevent.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        r.get("own:2")
    assert time.monotonic() - started < 0.1
    assert first.get(timeout=2) == b"own:1"


def test_queued_bytes_bound_holds_writers_back(make_pool, proxy, own_keys):
    """With the network not taking bytes, a caller whose command would push the unwritten bytes past
    multiplex_max_queued_bytes waits (PoolTimeout after the pool's timeout) instead of growing the queue."""
    p = make_pool(proxy.url, multiplex=1, multiplex_max_queued_bytes=1024 * 1024, timeout=0.3, socket_timeout=10)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.blackhole()
    big = gevent.spawn(r.set, "big", b"x" * (16 * 1024 * 1024))
    wait_until(lambda: p._mux._alive[0].queued > 1024 * 1024, what="a backlog over the bound")
    with pytest.raises(PoolTimeout):
        r.set("more", b"y" * 100_000)
    proxy.passthrough()
    assert big.get(timeout=20) is True
    assert r.get("own:0") == b"own:0"


def test_load_spreads_over_shared_connections_and_a_lone_caller_uses_one(make_pool, redis_url, admin, own_keys):
    """A lone caller never opens a second shared connection; 100 concurrent callers get up to `multiplex`
    of them, each carrying commands, and never more."""
    p = make_pool(redis_url, multiplex=3, max_size=5)
    r = PooledRedis(connection_pool=p)
    for key in OWN_KEYS * 10:
        assert r.get(key) == key.encode()
    assert stat(p, S.MUX_CONNECTIONS_NUM) == 1

    def work(i):
        for _n in range(50):
            assert r.get(OWN_KEYS[i % 20]) == OWN_KEYS[i % 20].encode()

    gevent.joinall([gevent.spawn(work, i) for i in range(100)], timeout=30, raise_error=True)
    stats = p.get_stats()
    assert stats[S.MUX_CONNECTIONS_NUM] == 3 and stats[S.POOL_SIZE] == 3
    carried = [c for c in admin.client_list() if c["name"] == "greenpool:m0" and c["cmd"] == "get"]
    assert len(carried) == 3
    assert stats[S.MUX_COMMANDS] / stats[S.MUX_BATCHES] > 2  # concurrent commands were coalesced


# -- lifecycle -----------------------------------------------------------------------------------------------
def test_close_lets_owed_replies_arrive_then_fails_the_rest(make_pool, proxy, own_keys):
    """close(timeout): new commands get PoolClosed at once; replies owed arrive until the deadline; after it
    the callers still waiting get PoolClosed; the pool ends empty."""
    p = make_pool(proxy.url)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.delay(0.2)
    early = [gevent.spawn(r.get, key) for key in OWN_KEYS[:3]]
    gevent.sleep(0.02)
    closer = gevent.spawn(p.close, 1.0)
    gevent.sleep(0.01)
    with pytest.raises(PoolClosed):
        r.get("own:5")
    assert [g.get(timeout=2) for g in early] == [b"own:0", b"own:1", b"own:2"]
    closer.join(timeout=2)
    assert stat(p, S.POOL_SIZE) == 0

    q = make_pool(proxy.url)
    rq = PooledRedis(connection_pool=q)
    proxy.passthrough()
    rq.ping()
    proxy.delay(0.5)
    late = gevent.spawn(rq.get, "own:0")
    gevent.sleep(0.02)
    started = time.monotonic()
    q.close(0.1)
    assert time.monotonic() - started < 0.1 + SLACK
    with pytest.raises(PoolClosed):
        late.get(timeout=1)
    assert stat(q, S.POOL_SIZE) == 0


SLOW_SCRIPT = """
local start = redis.call('TIME')
while true do
    local now = redis.call('TIME')
    if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) * 1000000 then break end
end
return ARGV[2]
"""


def test_forked_child_never_reads_the_parents_shared_socket(make_pool, redis_url, own_keys):
    """A reply in flight at fork time (a 0.3 s script) reaches the parent's caller, not the child, whose hub
    runs while the reply arrives; the child opens a shared connection of its own and gets its own replies."""
    p = make_pool(redis_url)
    r = PooledRedis(connection_pool=p)
    parent_id = shared_id(p)
    pending = gevent.spawn(r.eval, SLOW_SCRIPT, 0, 0.3, "parent-reply")
    gevent.sleep(0.05)

    def child():
        # the copy of the parent's waiting greenlet: its reply goes to the parent, so it fails at once here
        try:
            inherited = pending.get(timeout=0.2)
        except RedisConnectionError:
            inherited = "ConnectionError"
        except gevent.Timeout:
            inherited = "still waiting"
        gevent.sleep(0.5)  # the parent's reply arrives meanwhile: the child must not take it
        via_handle = redis.Redis(connection_pool=p).get("own:9").decode()  # the per-call handle path too
        return {"id": PooledRedis(connection_pool=p).client_id(), "value": r.get("own:8").decode(),
                "handle": via_handle, "shared": p.get_stats()[S.MUX_CONNECTIONS_NUM], "inherited": inherited}

    report = run_in_child(child)
    assert pending.get(timeout=5) == b"parent-reply"
    assert report["inherited"] == "ConnectionError"
    assert (report["value"], report["handle"], report["shared"]) == ("own:8", "own:9", 1)
    assert report["id"] != parent_id
    assert shared_id(p) == parent_id and stat(p, S.MUX_CONNECTIONS_NUM) == 1
    assert_own_replies(p)


def test_idle_shared_connection_is_pinged_before_use(make_pool, redis_url, admin, own_keys):
    """Idle longer than health_check_interval, the shared connection answers a PING through its own FIFO
    before the next command; a connection the server closed while idle is replaced, and nobody sees an error."""
    p = make_pool(redis_url, health_check_interval=0.2)
    r = PooledRedis(connection_pool=p)
    first = shared_id(p)
    admin.config_resetstat()
    for _ in range(5):
        r.get("own:0")
    assert calls(admin, "ping") == 0
    gevent.sleep(0.3)
    assert r.get("own:1") == b"own:1"
    assert calls(admin, "ping") == 1 and shared_id(p) == first
    admin.client_kill_filter(_id=first)
    wait_until(lambda: stat(p, S.CONNECTIONS_LOST) == 1, what="the closed idle connection to be noticed")
    assert r.get("own:2") == b"own:2"
    assert shared_id(p) != first and stat(p, S.MUX_CONNECTIONS_NUM) == 2


@pytest.mark.timing
def test_failed_health_check_replaces_the_connection_before_the_command_is_sent(make_pool, redis_url, admin,
                                                                               own_keys):
    """An idle shared connection whose PING gets no answer within socket_timeout (the server paused) is
    replaced; the caller's command was never sent on it: it runs once, on the new connection, with no error."""
    # The PING fails after 0.4-0.5 s (socket_timeout, checked every 0.1 s); the pause ends at 0.6 s, well
    # within the new connection's own socket_timeout for its handshake.
    p = make_pool(redis_url, health_check_interval=0.2, socket_timeout=0.4, socket_connect_timeout=3)
    r = PooledRedis(connection_pool=p)
    first = shared_id(p)
    gevent.sleep(0.3)
    admin.config_resetstat()
    admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
    started = time.monotonic()
    assert r.get("own:0") == b"own:0"
    assert 0.55 <= time.monotonic() - started < 0.6 + 1.0
    assert calls(admin, "get") == 1
    assert stat(p, S.CONNECTIONS_LOST) == 1 and stat(p, S.MUX_CONNECTIONS_NUM) == 2
    assert shared_id(p) != first


def test_shared_connection_is_recycled_after_max_lifetime(make_pool, redis_url, own_keys):
    """Past max_lifetime a shared connection takes no new commands, finishes what it owes and is replaced."""
    p = make_pool(redis_url, max_lifetime=0.5)
    r = PooledRedis(connection_pool=p)
    first = shared_id(p)
    deadline = time.monotonic() + 3
    while shared_id(p) == first and time.monotonic() < deadline:
        assert r.get("own:0") == b"own:0"
        gevent.sleep(0.05)
    assert shared_id(p) != first
    assert stat(p, S.DISCARDED_LIFETIME) >= 1


def test_leak_detection_ignores_shared_connections(make_pool, redis_url, caplog):
    """Shared connections are held for good by the multiplexer: leak_threshold never reports them."""
    p = make_pool(redis_url, leak_threshold=0.05)
    shared_id(p)
    gevent.sleep(0.3)
    assert stat(p, S.LEAKS_REPORTED) == 0


@pytest.mark.parametrize("options, message", [
    ({"multiplex": 4, "max_size": 4}, "multiplex .4. must be below max_size .4."),
    ({"multiplex": -1}, "multiplex must be an integer >= 0"),
    ({"multiplex": True}, "multiplex must be an integer"),
    ({"multiplex": 1.5}, "multiplex must be an integer"),
    ({"multiplex": 1, "multiplex_max_in_flight": 0}, "multiplex_max_in_flight must be an integer >= 1"),
    ({"multiplex": 1, "multiplex_max_queued_bytes": 0}, "multiplex_max_queued_bytes must be an integer >= 1"),
])
def test_bad_multiplex_options_are_refused(options, message):
    """Invalid multiplex options raise ValueError naming the option; nothing is created."""
    with pytest.raises(ValueError, match=message):
        RedisPool(**options)


def test_multiplex_from_url_and_repr(redis_url):
    """multiplex may come in the URL's query; repr shows it; the default is 0 (off)."""
    p = RedisPool.from_url(redis_url + "?multiplex=2&max_size=5")
    try:
        assert p.multiplex == 2 and "multiplex=2" in repr(p)
        assert RedisPool().multiplex == 0
        assert type(p.get_connection()).__name__ == "SharedHandle"
    finally:
        p.close()


def test_unix_socket_shared_connection(redis_factory, tmp_path):
    """A unix-socket server works on the shared path as on TCP."""
    path = str(tmp_path / "r.sock")
    redis_factory("--unixsocket", path, "--unixsocketperm", "700")
    p = RedisPool.from_url(f"unix://{path}", max_size=3, multiplex=1, name="unix")
    try:
        r = PooledRedis(connection_pool=p)
        gevent.joinall([gevent.spawn(lambda i=i: [r.set(f"u{i}", i) and r.get(f"u{i}") for _ in range(50)])
                        for i in range(20)], raise_error=True)
        assert [r.get(f"u{i}") for i in range(20)] == [str(i).encode() for i in range(20)]
        assert p.get_stats()[S.MUX_COMMANDS] >= 2000
    finally:
        p.close()

