"""Faults on the multiplexed path (issue 12): the exclusive path's fault scenarios, on shared connections.

A fault on a shared connection (CLIENT KILL, a restart, a frozen or blackholed server, a reply cut in the
middle, a protocol error) fails every caller waiting on it with redis' ConnectionError / TimeoutError: no
command is re-sent (it may or may not have run), the connection is discarded, and later commands get a new
one (with the pool's backoff). No caller ever receives another caller's reply: keys hold their own names.
"""
import functools
import time

import gevent
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from test_multiplex_cancel import SLOW_SCRIPT
from test_sentinel import StaleSentinel

from pool import PooledRedis
from pool import stats as S
from pool.sentinel import SentinelRedisPool
from pool.testing import FaultProxy, frozen, kill_server, restart_server, wait_until

FAILURES = (RedisConnectionError, RedisTimeoutError)
OWN_KEYS = [f"own:{i}" for i in range(20)]
SLACK = 0.3


@pytest.fixture
def make_pool(new_pool):
    """``make_pool(url, **options)``: a multiplexed RedisPool (multiplex=1 unless given), closed at teardown."""
    return functools.partial(new_pool, prefix="f", multiplex=1, max_size=4)


@pytest.fixture
def own_keys(admin):
    admin.mset({key: key for key in OWN_KEYS})


def stat(p, key):
    return p.get_stats()[key]


def shared_ids(admin, p):
    return {c["id"] for c in admin.client_list() if c["name"] == f"greenpool:{p.name}"}


def start_waiters(r, count=10, key_of=lambda i: OWN_KEYS[i % len(OWN_KEYS)]):
    """``count`` greenlets each GET their own key on the shared path; returns them."""
    return [gevent.spawn(r.get, key_of(i)) for i in range(count)]


def outcomes(greenlets, timeout=10):
    gevent.joinall(greenlets, timeout=timeout)
    assert all(g.dead for g in greenlets), "a caller hangs"
    return [g.value if g.successful() else g.exception for g in greenlets]


def assert_serves_own_replies(p, rounds=3):
    r = PooledRedis(connection_pool=p)

    def ask(key):
        for n in range(rounds):
            assert r.get(key) == key.encode()
            assert r.echo(f"{key}#{n}") == f"{key}#{n}".encode()

    gevent.joinall([gevent.spawn(ask, key) for key in OWN_KEYS], timeout=10, raise_error=True)


def assert_settled(p):
    got = p.get_stats()
    assert got[S.REQUESTS_WAITING] == 0 and p._mux.in_flight() == 0, got
    assert got[S.POOL_IN_USE] == len(p._mux._alive) <= p.multiplex, got


def serves(p):
    def check():
        try:
            return PooledRedis(connection_pool=p).get("own:0") == b"own:0"
        except FAILURES:
            return False
    return check


# -- the server closes or goes away ------------------------------------------------------------------------------
def test_client_kill_fails_every_waiter_and_nothing_is_resent(make_pool, proxy, admin, own_keys):
    """CLIENT KILL of the shared connection while ten callers' commands are on their way (a delaying proxy):
    every one of them gets a ConnectionError, the INCR among them ran at most once (never re-sent), and the
    next commands get a new connection and their own replies."""
    p = make_pool(proxy.url)
    r = PooledRedis(connection_pool=p)
    first = r.client_id()
    proxy.delay(0.2)
    waiters = [gevent.spawn(r.incr, "counter")] + start_waiters(r, 9)
    gevent.sleep(0.05)
    admin.client_kill_filter(_id=first)
    results = outcomes(waiters)
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    proxy.passthrough()
    assert int(admin.get("counter") or 0) <= 1
    assert stat(p, S.DISCARDED_ERROR) == 1
    assert r.client_id() != first
    assert stat(p, S.MUX_CONNECTIONS_NUM) == 2
    assert_serves_own_replies(p)
    assert_settled(p)


def test_a_failed_shared_call_borrows_nothing_while_redis_py_logs_it(make_pool, proxy, admin, caplog):
    """redis.Redis on the per-call handle, with redis-py's debug logging on: when the shared connection fails,
    redis-py logs the connection's details before closing it. That borrows no exclusive connection (which
    would cost a checkout, here a new connection's handshake through a slow network, before the caller
    gets its ConnectionError, or a PoolTimeout instead of it on a full pool)."""
    p = make_pool(proxy.url, timeout=1.0)
    r = redis.Redis(connection_pool=p)
    first = r.client_id()
    caplog.set_level("DEBUG", logger="redis")
    proxy.delay(0.2)
    pending = gevent.spawn(r.get, "k")
    gevent.sleep(0.05)
    admin.client_kill_filter(_id=first)
    started = time.monotonic()
    assert isinstance(outcomes([pending])[0], RedisConnectionError)
    assert time.monotonic() - started < 0.4
    proxy.passthrough()
    assert any("Operation failed" in message for message in caplog.messages)
    assert stat(p, S.EXCLUSIVE_CHECKOUTS) == 0
    assert r.get("k") is None


def test_redis_restarted_fails_waiters_then_recovers(make_pool, redis_server, admin, own_keys):
    """The server restarts under callers: those waiting get ConnectionError, none hangs; once it is back,
    the pool opens a new shared connection and serves."""
    p = make_pool(redis_server.url, socket_timeout=2)
    r = PooledRedis(connection_pool=p)
    r.ping()
    stop, results = [], []

    def load(i):
        while not stop:
            key = OWN_KEYS[i]
            try:
                value = r.get(key)
                results.append(value in (key.encode(), None))  # None: the restarted server is empty
            except FAILURES:
                results.append("error")
                gevent.sleep(0.01)

    loaders = [gevent.spawn(load, i) for i in range(20)]
    gevent.sleep(0.1)
    restart_server(redis_server, kill=True)
    admin.mset({key: key for key in OWN_KEYS})
    wait_until(serves(p), timeout=5, what="the pool to serve again")
    gevent.sleep(0.1)
    stop.append(True)
    gevent.joinall(loaders, timeout=5)
    assert all(g.dead for g in loaders)
    assert False not in results  # every reply was the caller's own key (or None right after the restart)
    assert "error" in results and results.count(True) > 100
    assert_serves_own_replies(p)
    assert_settled(p)


def test_refused_connection_backs_off_on_the_shared_path(make_pool, redis_server, own_keys):
    """With the server gone, shared commands fail fast; reconnect attempts follow the pool's backoff."""
    p = make_pool(redis_server.url)
    r = PooledRedis(connection_pool=p)
    r.ping()
    kill_server(redis_server)
    failures = 0
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        with pytest.raises(RedisConnectionError):
            r.ping()
        failures += 1
    attempts = stat(p, S.CONNECTIONS_ERRORS)
    assert 1 <= attempts <= 8 and failures > 10 * attempts, (attempts, failures)
    redis_server.start()
    wait_until(lambda: r.ping(), timeout=2, what="recovery")


# -- frozen, blackholed -------------------------------------------------------------------------------------
@pytest.mark.timing
def test_frozen_server_fails_waiters_with_timeout_within_socket_timeout(make_pool, redis_server, own_keys):
    """SIGSTOP: replies owed longer than socket_timeout fail every waiter with TimeoutError (within about
    1.25 x socket_timeout: one timer per multiplexer, no timer per command); after SIGCONT the pool serves."""
    p = make_pool(redis_server.url, socket_timeout=0.3)
    r = PooledRedis(connection_pool=p)
    r.ping()
    with frozen(redis_server):
        started = time.monotonic()
        results = outcomes(start_waiters(r, 10), timeout=5)
        elapsed = time.monotonic() - started
    assert all(isinstance(result, RedisTimeoutError) for result in results), results
    assert 0.3 <= elapsed < 0.3 * 1.25 + SLACK
    assert stat(p, S.DISCARDED_ERROR) == 1
    wait_until(serves(p), timeout=3, what="recovery after SIGCONT")
    assert_serves_own_replies(p)
    assert_settled(p)


@pytest.mark.timing
def test_blackhole_fails_waiters_with_timeout_then_recovers(make_pool, proxy, own_keys):
    """Nothing flows (no FIN, no RST): the waiters fail by socket_timeout, nobody hangs; once traffic flows
    again a new shared connection serves, with every reply its caller's own."""
    p = make_pool(proxy.url, socket_timeout=0.2)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.blackhole()
    started = time.monotonic()
    results = outcomes(start_waiters(r, 20), timeout=3)
    assert all(isinstance(result, RedisTimeoutError) for result in results), results
    assert time.monotonic() - started < 0.2 * 1.25 + SLACK
    proxy.passthrough()
    wait_until(serves(p), timeout=3, what="the pool to serve again")
    assert_serves_own_replies(p)
    assert_settled(p)


@pytest.mark.parametrize("while_", ["busy", "health check"])
def test_a_silent_dead_connection_is_replaced_without_socket_timeout(make_pool, redis_factory, while_):
    """socket_timeout=None and the peer of the shared connection is gone without a FIN or RST (here: its
    server frozen for good, while the address now leads to a live server). Callers give up by their own
    gevent.Timeout, as on the exclusive path, where each one discards its connection. On the shared path
    the connection that owes replies and has heard nothing for health_check_interval takes no new commands:
    later callers get a new connection and their own replies; the dead one is closed once nobody waits."""
    dead, live = redis_factory(), redis_factory()
    redis.Redis(port=live.port).mset({key: key for key in OWN_KEYS})
    with FaultProxy("127.0.0.1", dead.port) as proxy:
        p = make_pool(proxy.url, socket_timeout=None, health_check_interval=0.5)
        r = PooledRedis(connection_pool=p)
        r.ping()
        if while_ == "health check":
            gevent.sleep(0.6)  # idle past health_check_interval: the next command is preceded by a PING
        dead.pause()
        proxy.target = ("127.0.0.1", live.port)  # new connections reach the live server
        served, gave_up = [], 0
        deadline = time.monotonic() + 5
        while not served and time.monotonic() < deadline:
            try:
                with gevent.Timeout(0.2):
                    served.append(r.get("own:1"))
            except gevent.Timeout:
                gave_up += 1
        dead.resume()
        assert served == [b"own:1"], f"never served again ({gave_up} callers gave up)"
        assert stat(p, S.MUX_CONNECTIONS_NUM) == 2
        assert_serves_own_replies(p)
        wait_until(lambda: len(p._mux._alive) == 1, what="the dead connection to be closed")


# -- a reply cut in the middle ------------------------------------------------------------------------------
HUGE = 8 * 1024 * 1024


def test_reply_cut_in_the_middle_fails_waiters_and_is_never_read_as_a_reply(make_pool, proxy, admin, own_keys):
    """An 8 MB reply trickles in, the proxy cuts the connection half-way: the reader of the huge value and the
    callers queued behind it get ConnectionError; the rest of the value never reaches anyone as a reply."""
    admin.set("huge", b"x" * HUGE)
    p = make_pool(proxy.url)
    r = PooledRedis(connection_pool=p)
    r.ping()
    proxy.delay(0.002)
    down_before = proxy.forwarded_down
    reader = gevent.spawn(r.get, "huge")
    wait_until(lambda: proxy.forwarded_down - down_before > 256 * 1024, timeout=10, what="part of the value")
    behind = start_waiters(r, 5)
    gevent.sleep(0.01)
    proxy.cut()
    results = outcomes([reader] + behind)
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    assert 0 < proxy.forwarded_down - down_before < HUGE
    proxy.passthrough()
    assert r.strlen("huge") == HUGE
    assert_serves_own_replies(p)
    assert_settled(p)


# -- protocol errors ------------------------------------------------------------------------------------------------
BAD = b"$3\r\nbad\r\n"  # the real server's reply to GET bad (each key holds its own name)


def own_names(admin, *keys):
    admin.mset({key: key for key in keys})


@pytest.mark.parametrize("fault", ["garbage", "extra reply"])
def test_protocol_error_fails_every_waiter_with_connection_error(make_pool, proxy, admin, fault):
    """A reply that is not RESP, or one more reply than was asked for (the proxy rewrites the real server's reply
    to GET bad): the stream can no longer be trusted, every caller on the connection gets a ConnectionError and
    the connection is replaced."""
    own_names(admin, "good", "bad", "after", *(f"k{i}" for i in range(5)))
    wrong = b"!not resp\r\n" if fault == "garbage" else BAD + b"$5\r\nextra\r\n"
    proxy.rewrite(lambda chunk: chunk.replace(BAD, wrong))
    try:
        p = make_pool(proxy.url, protocol=2)
        r = PooledRedis(connection_pool=p)
        assert r.get("good") == b"good"
        if fault == "garbage":
            results = outcomes([gevent.spawn(r.get, "bad")] + [gevent.spawn(r.get, f"k{i}") for i in range(5)])
            assert all(isinstance(result, RedisConnectionError) for result in results[:1]), results
            assert all(result in (f"k{i}".encode(),) or isinstance(result, RedisConnectionError)
                       for i, result in enumerate(results[1:])), results
        else:  # its own reply, or (the extra one in the same read) a ConnectionError: the stream may have shifted
            result = outcomes([gevent.spawn(r.get, "bad")])[0]
            assert result == b"bad" or isinstance(result, RedisConnectionError), result
            wait_until(lambda: stat(p, S.CONNECTIONS_LOST) + stat(p, S.DISCARDED_ERROR) == 1,
                       what="the connection with the extra reply to be dropped")
        assert r.get("after") == b"after"
        assert stat(p, S.MUX_CONNECTIONS_NUM) == 2
    finally:
        proxy.passthrough()


@pytest.mark.parametrize("extra", ["whole", "cut"])
def test_a_reply_nobody_asked_for_never_reaches_the_next_caller(make_pool, proxy, admin, extra):
    """One GET answered with two replies (the proxy adds one to the real server's): the extra one whole in the
    same read, or cut and finished only after the next command went out. The caller that writes its next command
    the moment the connection looks idle never receives the extra reply (nor do the callers after it: the stream
    is never shifted); it gets its own reply or a ConnectionError, and the connection is replaced."""
    own_names(admin, "good", "bad", "next", "after-1", "after-2", *(f"k{i}" for i in range(5)))
    next_reply = b"$4\r\nnext\r\n"

    def edit(chunk):
        if extra == "whole":
            return chunk.replace(BAD, BAD + b"$5\r\nextra\r\n")
        return chunk.replace(BAD, BAD + b"$5\r\nex").replace(next_reply, b"tra\r\n" + next_reply)

    proxy.rewrite(edit)
    try:
        p = make_pool(proxy.url, protocol=2)
        r = PooledRedis(connection_pool=p)
        assert r.get("good") == b"good"
        results = []
        for key in ("bad", "next", "after-1", "after-2"):  # each written as soon as the one before returns
            try:
                results.append(r.get(key))
            except RedisConnectionError as error:
                results.append(error)
        for key, result in zip(("bad", "next", "after-1", "after-2"), results, strict=True):
            assert result == key.encode() or isinstance(result, RedisConnectionError), results
        assert any(isinstance(result, RedisConnectionError) for result in results), results
        assert [r.get(f"k{i}") for i in range(5)] == [f"k{i}".encode() for i in range(5)]
        assert stat(p, S.MUX_CONNECTIONS_NUM) == 2
    finally:
        proxy.passthrough()


def test_push_messages_sent_to_a_shared_connection_never_shift_replies(make_pool, redis_url, admin, caplog):
    """RESP3: another client's CLIENT TRACKING ... REDIRECT <the shared connection's id> BCAST sends
    invalidation push messages the shared connection never asked for, between its replies and while it owes
    nothing; they are skipped, every caller still gets its own reply, and the connection stays in service."""
    p = make_pool(redis_url, protocol=3)
    r = PooledRedis(connection_pool=p)
    shared = r.client_id()
    tracker = redis.Redis.from_url(redis_url)
    writer = redis.Redis.from_url(redis_url)
    try:
        tracker.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", shared, "BCAST")
        caplog.set_level("DEBUG", logger="pool")

        def work(i):
            for n in range(100):
                writer.set(f"tracked:{i}", n)  # an invalidation push to the shared connection
                assert r.echo(f"{i}:{n}") == f"{i}:{n}".encode()

        gevent.joinall([gevent.spawn(work, i) for i in range(10)], timeout=20, raise_error=True)

        def pushes():
            return sum("push message" in message for message in caplog.messages)

        during_load = pushes()
        assert during_load > 0
        writer.set("tracked:idle", 1)  # one more while the shared connection owes nothing
        wait_until(lambda: pushes() > during_load, what="the push to the idle shared connection")
        assert r.echo("after") == b"after"
        assert r.client_id() == shared and stat(p, S.MUX_CONNECTIONS_NUM) == 1
        assert stat(p, S.CONNECTIONS_LOST) + stat(p, S.DISCARDED_ERROR) == 0
    finally:
        tracker.close()
        writer.close()


# -- a slow command inside a batch: head-of-line blocking, bounded ------------------------------------------------
@pytest.mark.timing
def test_slow_script_delays_the_callers_behind_it_and_no_more(make_pool, redis_server, own_keys):
    """A 0.3 s script on the shared connection delays the commands queued behind it (head-of-line) by about
    that long, never more, and they all get their own replies; DEBUG SLEEP on an exclusive connection
    delays the shared path the same way (the server itself is blocked) and runs on its own connection."""
    p = make_pool(redis_server.url)
    r = PooledRedis(connection_pool=p)
    r.ping()
    slow = gevent.spawn(r.eval, SLOW_SCRIPT, 0, 0.3, "slow")
    gevent.sleep(0.02)
    started = time.monotonic()
    behind = start_waiters(r, 10)
    results = outcomes(behind)
    elapsed = time.monotonic() - started
    assert results == [OWN_KEYS[i].encode() for i in range(10)]
    assert 0.2 <= elapsed < 0.3 + SLACK
    assert slow.get(timeout=1) == b"slow"
    assert_settled(p)


@pytest.mark.timing
def test_debug_sleep_on_an_exclusive_connection_only_blocks_what_the_server_blocks(make_pool, redis_factory, admin):
    """DEBUG SLEEP goes to an exclusive connection; shared callers wait for the server, then proceed with their
    own replies; the shared connection stays the same one."""
    server = redis_factory("--enable-debug-command", "yes")
    p = make_pool(server.url)
    r = PooledRedis(connection_pool=p)
    r.mset({key: key for key in OWN_KEYS})
    first = r.client_id()
    sleeper = gevent.spawn(redis.Redis(connection_pool=p).execute_command, "DEBUG", "SLEEP", 0.3)
    gevent.sleep(0.02)
    started = time.monotonic()
    results = outcomes(start_waiters(r, 10))
    assert results == [OWN_KEYS[i].encode() for i in range(10)]
    assert time.monotonic() - started < 0.3 + SLACK
    assert sleeper.get(timeout=1) in (b"OK", "OK")
    assert r.client_id() == first and stat(p, S.EXCLUSIVE_CHECKOUTS) >= 1


# -- Sentinel --------------------------------------------------------------------------------------------------
def test_readonly_on_a_shared_connection_retires_it_and_rediscovers(redis_factory):
    """A shared connection to a demoted master: the write that gets READONLY fails with a ConnectionError
    (never retried), that connection takes no more commands, the sentinels are asked again at once and every
    later command goes to the real master through a new shared connection."""
    master = redis_factory("--shutdown-timeout", "0")
    replica = redis_factory("--replicaof", "127.0.0.1", str(master.port))
    sentinel = StaleSentinel([])
    sentinel.answer = ("127.0.0.1", replica.port)
    p = SentinelRedisPool(sentinel, "mymaster", max_size=4, multiplex=1, master_check_interval=None, name="ro")
    try:
        r = PooledRedis(connection_pool=p)
        assert r.ping()
        sentinel.answer = ("127.0.0.1", master.port)
        asked = sentinel.asked
        with pytest.raises(RedisConnectionError, match="no longer the master"):
            r.set("k", "v")
        assert sentinel.asked > asked and p.master_address == ("127.0.0.1", master.port)
        for i in range(20):
            assert r.set("k", i) and r.get("k") == str(i).encode()
        assert p.get_stats()[S.MUX_CONNECTIONS_NUM] == 2
        assert redis.Redis(port=master.port).get("k") == b"19"
    finally:
        p.close()


def test_shared_connections_follow_a_manual_failover(topology):
    """SENTINEL FAILOVER under load on the shared path: no crossed reply, nothing hangs, and within 2 s of the
    switch every command is served by the new master."""
    p = SentinelRedisPool(topology.sentinel_addresses, topology.service_name, max_size=4, multiplex=2,
                          socket_timeout=1.0, master_check_interval=0.5, name="mux-failover")
    r = PooledRedis(connection_pool=p)
    successes, failures, crossed, stop = [], [], [], []

    def work(index):
        for seq in range(1_000_000):  # bounded; stopped long before
            if stop:
                return
            token = f"g{index}:{seq}"
            try:
                with gevent.Timeout(3):
                    # SET and GET in one pipeline: one connection, so one server even while two servers
                    # both act as master (separate commands may go to two connections, two servers)
                    wrote, got = r.pipeline(transaction=False).set(f"load:{index}", token).get(
                        f"load:{index}").execute()
                    echoed, role = r.echo(token), r.execute_command("ROLE")[0]
                if (wrote, got, echoed) != (True, token.encode(), token.encode()):
                    crossed.append((token, wrote, got, echoed))
                else:
                    successes.append((time.monotonic(), role))
            except redis.RedisError as error:
                failures.append(error)
                gevent.sleep(0.02)
            gevent.sleep(0.002)

    workers = [gevent.spawn(work, i) for i in range(10)]
    try:
        wait_until(lambda: len(successes) > 50, 10, what="load running")
        old = topology.master_address()
        with redis.Redis(port=topology.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", topology.service_name)
        wait_until(lambda: topology.master_address() != old, 10, what="a new master")
        switched = time.monotonic()
        wait_until(lambda: any(t > switched + 2.0 for t, _ in successes), 10, what="load after the switch")
    finally:
        stop.append(True)
        gevent.joinall(workers, timeout=10)
        p.close()
    assert crossed == [], crossed
    assert all(g.dead for g in workers)
    assert {role for t, role in successes if t > switched + 2.0} == {b"master"}
    assert p.master_address == topology.master_address()
