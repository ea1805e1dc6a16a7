"""Issue 4, library-level fault scenarios 1-5 and 10-14: the pool under injected faults, real processes on loopback.

Every test asserts the scenario's expected behaviour and that no reply reached the wrong caller: keys hold
their own names, so a crossed reply shows as a wrong value. Faults come from ``faults.py`` (a gevent TCP
proxy, a listener that never answers, process signals); tests wait on state, not on sleeps.
"""
import functools
import time

import gevent
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pool import core
from pool import stats as S
from pool.testing import SilentListener, kill_server, wait_until

FAILURES = (RedisConnectionError, RedisTimeoutError)  # redis-py's TimeoutError is not a ConnectionError
SLACK = 0.25  # tolerance added to a timing bound: scheduling on a busy CI machine, not the pool's slowness
OWN_KEYS = [f"own:{i}" for i in range(20)]


# -- helpers -------------------------------------------------------------------------------------------------
@pytest.fixture
def make_pool(new_pool):
    """``make_pool(url, **options)``: a ``RedisPool`` named f0, f1...; closed at teardown."""
    return functools.partial(new_pool, prefix="f")


@pytest.fixture
def own_keys(admin):
    admin.mset({key: key for key in OWN_KEYS})


def stat(p, key):
    return p.get_stats()[key]


def assert_settled(p):
    """Nothing borrowed or waiting, and every open connection idle: no slot lost, none leaked."""
    got = p.get_stats()
    assert (got[S.POOL_IN_USE], got[S.REQUESTS_WAITING]) == (0, 0), got
    assert got[S.POOL_SIZE] == got[S.POOL_AVAILABLE] <= p.max_size, got


def assert_own_replies(p, rounds=5):
    """Greenlets, as many as keys, each GET their own key and ECHO a token of their own: all replies match."""
    r = redis.Redis(connection_pool=p)

    def ask(key):
        for n in range(rounds):
            assert r.get(key) == key.encode()
            assert r.echo(f"{key}#{n}") == f"{key}#{n}".encode()

    askers = [gevent.spawn(ask, key) for key in OWN_KEYS]
    gevent.joinall(askers, timeout=10, raise_error=True)
    assert all(g.successful() for g in askers)


def pooled_ids(admin, p):
    return {c["id"] for c in admin.client_list() if c["name"] == f"greenpool:{p.name}"}


def incr_calls(admin):
    """How many times the server ran INCR (redis-py's ``incr`` sends INCRBY)."""
    stats = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("incr", "incrby"))


# -- 1-3. interrupted commands -------------------------------------------------------------------------------------
def test_gevent_timeout_mid_read_discards_the_connection(make_pool, proxy, admin, own_keys):
    """A gevent.Timeout while the reply is on its way closes that connection; its late reply reaches nobody."""
    p = make_pool(proxy.url, max_size=1)
    r = redis.Redis(connection_pool=p)
    old = r.client_id()
    proxy.delay(0.15)  # the GET and its reply are each held 0.15 s
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.1):
            r.get("own:0")
    assert (stat(p, S.DISCARDED_CANCELLED), stat(p, S.POOL_SIZE)) == (1, 0)
    wait_until(lambda: proxy.received_down > 0 and proxy.open_connections == 0, what="the late reply to be dropped")
    proxy.passthrough()
    assert r.client_id() != old
    assert old not in pooled_ids(admin, p)
    assert_own_replies(p)
    assert_settled(p)


def test_kill_mid_command_discards_the_connection(make_pool, proxy, admin, own_keys):
    """kill() of a greenlet whose command was sent and whose reply is pending closes that connection."""
    p = make_pool(proxy.url, max_size=1)
    r = redis.Redis(connection_pool=p)
    old = r.client_id()
    proxy.delay(0.2)
    sent_before = proxy.received_up
    holder = gevent.spawn(r.get, "own:0")
    wait_until(lambda: proxy.received_up > sent_before, what="the GET to be on the wire")
    holder.kill(timeout=1)
    assert holder.dead and holder.successful()  # GreenletExit is a normal end for a killed greenlet
    assert (stat(p, S.DISCARDED_CANCELLED), stat(p, S.POOL_SIZE)) == (1, 0)
    proxy.passthrough()
    assert r.client_id() != old
    assert_own_replies(p)
    assert_settled(p)


@pytest.mark.parametrize("path", ["connection", "client", "redis.Redis"])
def test_exception_between_send_and_read_discards_the_connection(make_pool, redis_url, admin, own_keys, path):
    """An ordinary exception after a command was sent and before its reply was read: the connection owes a
    reply, so it is closed (reason 'reset'), not lent again; the next borrower reads only its own replies."""
    p = make_pool(redis_url, max_size=1)
    r = redis.Redis(connection_pool=p)
    old = r.client_id()
    with pytest.raises(ValueError):
        if path == "connection":
            with p.connection() as conn:
                conn.send_command("GET", "own:0")
                raise ValueError("application error")
        elif path == "client":
            with p.client() as c:
                c.connection.send_command("GET", "own:0")
                raise ValueError("application error")
        else:
            conn = p.getconn()
            p.putconn(conn)  # the one connection r borrows next
            real_send = conn.send_command

            def send_then_fail(*args, **kwargs):
                del conn.send_command  # one shot
                real_send(*args, **kwargs)
                raise ValueError("application error")

            conn.send_command = send_then_fail
            r.get("own:0")
    assert (stat(p, S.DISCARDED_RESET), stat(p, S.POOL_SIZE)) == (1, 0)
    assert r.client_id() != old
    wait_until(lambda: old not in pooled_ids(admin, p), what="the old connection to go")
    assert_own_replies(p)
    assert_settled(p)


# -- 4. a cancelled blocking pop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["redis.Redis", "client"])
def test_cancelled_blpop_does_not_consume_the_next_job(make_pool, redis_url, admin, own_keys, path):
    """A BLPOP cancelled by gevent.Timeout is gone server-side by the time the caller regains control in
    practice: a job pushed right afterwards stays queued (nobody's dead socket receives it)."""
    p = make_pool(redis_url, max_size=1)
    r = redis.Redis(connection_pool=p)
    for n in range(20):  # the push follows the cancel at once, with no wait: repeat to catch a race
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.02):
                if path == "client":
                    with p.client() as c:
                        c.blpop("jobs", 0)
                else:
                    r.blpop("jobs", 0)
        admin.rpush("jobs", f"job-{n}")
        assert admin.llen("jobs") == 1, f"round {n}: the cancelled BLPOP took the job"
        assert admin.lpop("jobs") == f"job-{n}"
    assert stat(p, S.DISCARDED_CANCELLED) == 20
    assert_own_replies(p)
    assert r.blpop("jobs", 0.01) is None
    assert_settled(p)


# -- 5. a huge reply abandoned half-read -------------------------------------------------------------------------------
HUGE = 20 * 1024 * 1024


@pytest.mark.parametrize("cancel", ["gevent.Timeout", "socket_timeout"])
def test_huge_reply_cut_short_is_never_read_as_a_reply(make_pool, proxy, admin, own_keys, cancel):
    """A 20 MB value whose read is cut short (part of it already in the client's buffer): the connection is
    closed, and the rest of the value never reaches the next borrower as its reply."""
    admin.set("huge", b"x" * HUGE)
    # socket_timeout must outlast the trickle's gaps on a loaded machine; it fires once the blackhole stops it
    options = {"socket_timeout": 0.5} if cancel == "socket_timeout" else {}
    p = make_pool(proxy.url, max_size=1, **options)
    r = redis.Redis(connection_pool=p)
    r.ping()
    proxy.delay(0.002)  # a trickle: about 0.6 s or more for the whole value
    down_before = proxy.forwarded_down
    reader = gevent.spawn(r.get, "huge")
    wait_until(lambda: proxy.forwarded_down - down_before > 256 * 1024, timeout=10, what="part of the value to arrive")
    if cancel == "socket_timeout":
        proxy.blackhole()  # the rest stops coming: the next recv times out
        reader.join(timeout=5)
        assert isinstance(reader.exception, RedisTimeoutError)
        assert stat(p, S.DISCARDED_ERROR) == 1
    else:
        reader.kill(gevent.Timeout, timeout=2)  # as an outer gevent.Timeout firing now, mid-read
        assert isinstance(reader.exception, gevent.Timeout)
        assert stat(p, S.DISCARDED_CANCELLED) == 1
    assert 0 < proxy.forwarded_down - down_before < HUGE  # cut short mid-read
    assert stat(p, S.POOL_SIZE) == 0
    proxy.passthrough()
    assert r.get("own:1") == b"own:1"
    assert r.strlen("huge") == HUGE
    assert_own_replies(p)
    assert_settled(p)


# -- 10. blackhole -----------------------------------------------------------------------------------------------------
@pytest.mark.timing
def test_blackhole_timeouts_fire_and_slots_come_back(make_pool, proxy, admin, own_keys):
    """With the network silently dropping everything (no FIN, no RST), commands fail by socket_timeout, not
    hang; every slot comes back; once traffic flows again the pool serves, with its own replies."""
    p = make_pool(proxy.url, max_size=4, socket_timeout=0.2)
    r = redis.Redis(connection_pool=p)
    assert_own_replies(p, rounds=1)  # four connections open and idle
    assert stat(p, S.POOL_SIZE) == 4
    proxy.blackhole()
    outcomes = []

    def call(key):
        started = time.monotonic()
        try:
            outcomes.append(("reply", r.get(key), key, time.monotonic() - started))
        except FAILURES as error:  # TimeoutError, or PoolError while reconnects back off
            outcomes.append(("error", error, key, time.monotonic() - started))

    callers = [gevent.spawn(call, key) for key in OWN_KEYS[:8]]  # twice as many callers as slots
    gevent.joinall(callers, timeout=3)
    assert all(g.dead for g in callers), "a caller hangs in the blackhole"
    assert len(outcomes) == 8 and all(kind == "error" for kind, *_ in outcomes), outcomes
    assert max(elapsed for *_, elapsed in outcomes) < 2 * 0.2 + SLACK  # its command, then at most a connect
    assert sum(isinstance(error, RedisTimeoutError) for _, error, *_ in outcomes) >= 4
    assert_settled(p)
    assert stat(p, S.POOL_SIZE) == 0  # all four blackholed connections were discarded
    proxy.passthrough()

    def serves():
        try:
            return r.get("own:0") == b"own:0"
        except RedisConnectionError:
            return False

    wait_until(serves, timeout=2, what="the pool to serve again")
    assert_own_replies(p)
    assert_settled(p)
    wait_until(lambda: len(pooled_ids(admin, p)) <= p.max_size, what="blackholed connections to close")


# -- 11. a listener that never answers --------------------------------------------------------------------------------
@pytest.mark.timing
@pytest.mark.parametrize("accept", [True, False], ids=["accepts-never-answers", "syn-dropped"])
def test_silent_listener_connect_timeout_is_honoured_and_attempts_bounded(make_pool, accept):
    """Against a port that never answers (TCP accepted but no handshake reply, or SYNs dropped), opening a
    connection fails after socket_connect_timeout, never later, even with no socket_timeout set; while it
    fails, the reconnect backoff bounds the connection attempts; every caller gets an error, none hangs."""
    connect_timeout, max_size, duration = 0.2, 2, 1.0
    with SilentListener(accept=accept) as listener:
        p = make_pool(listener.url, max_size=max_size, socket_connect_timeout=connect_timeout)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            with gevent.Timeout(connect_timeout + 2.0):  # a hang shows as gevent.Timeout, not as a pass
                p.getconn()
        assert connect_timeout * 0.9 <= time.monotonic() - started < connect_timeout + SLACK
        slowest = []

        def caller():
            end = time.monotonic() + duration
            while time.monotonic() < end:
                began = time.monotonic()
                with pytest.raises(FAILURES):  # TimeoutError, or PoolError in the backoff
                    with gevent.Timeout(connect_timeout + 2.0):
                        p.getconn()
                slowest.append(time.monotonic() - began)
                gevent.sleep(0.01)

        callers = [gevent.spawn(caller) for _ in range(10)]
        gevent.joinall(callers, timeout=duration + 5, raise_error=True)
        attempts = stat(p, S.CONNECTIONS_ERRORS)
        # At most max_size attempts in flight, each lasting connect_timeout, each round followed by a backoff.
        assert 2 <= attempts <= max_size * (duration / connect_timeout + 2), attempts
        if accept:
            assert listener.accepted == attempts
        assert max(slowest) < connect_timeout + SLACK
        assert stat(p, S.CONNECTIONS_NUM) == 0
        assert_settled(p)


# -- 12. connection refused ------------------------------------------------------------------------------------------
@pytest.mark.timing
def test_connection_refused_fails_fast_with_backoff_then_recovers(make_pool, redis_server, admin, monkeypatch):
    """With the server gone (SIGKILL: the port refuses), every call fails fast; connection attempts are
    spaced by the backoff, not one per call; when the server is back on its port the pool recovers at once."""
    p = make_pool(redis_server.url, max_size=4)
    r = redis.Redis(connection_pool=p)
    r.ping()
    kill_server(redis_server)
    failures, slowest = 0, 0.0
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # one caller, back to back: 0.5 s of calls
        began = time.monotonic()
        with pytest.raises(RedisConnectionError):
            r.ping()
        failures += 1
        slowest = max(slowest, time.monotonic() - began)
    assert slowest < 0.05
    attempts = stat(p, S.CONNECTIONS_ERRORS)
    # Backoff windows (jittered) of 25-50, 50-100, 100-200, 200-400 ms...: a handful of attempts in 0.5 s.
    assert 2 <= attempts <= 7, (attempts, failures)
    assert failures > 10 * attempts  # the rest were refused by the backoff without touching the network
    assert_settled(p)
    redis_server.start()
    admin.mset({key: key for key in OWN_KEYS})
    back = time.monotonic()

    def serves():
        try:
            return r.get("own:0") == b"own:0"
        except RedisConnectionError:
            return False

    wait_until(serves, timeout=1 + SLACK, what="recovery")
    assert time.monotonic() - back <= core.BACKOFF_CAP + SLACK
    assert_own_replies(p)
    assert_settled(p)


# -- 13. a slow reply to a non-idempotent command ----------------------------------------------------------------
@pytest.mark.timing
def test_slow_incr_times_out_and_is_applied_at_most_once(make_pool, proxy, admin, own_keys):
    """An INCR whose reply takes longer than socket_timeout: the caller gets TimeoutError at socket_timeout;
    the INCR is not re-sent by the pool or redis-py; after the delay has passed it was applied once."""
    p = make_pool(proxy.url, max_size=2, socket_timeout=0.2)
    r = redis.Redis(connection_pool=p)
    r.ping()
    admin.config_resetstat()
    proxy.delay(0.4)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        r.incr("counter")
    assert 0.2 <= time.monotonic() - started < 0.2 + SLACK
    assert stat(p, S.DISCARDED_ERROR) == 1
    wait_until(lambda: proxy.open_connections == 0, timeout=3, what="the delayed INCR to be delivered and closed")
    assert admin.get("counter") == "1"
    assert incr_calls(admin) == 1
    proxy.passthrough()
    assert r.incr("counter") == 2
    assert_own_replies(p)
    assert_settled(p)


# -- 14. an error reply ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["redis.Redis", "client", "pipeline"])
def test_wrongtype_keeps_the_connection_healthy_and_reused(make_pool, redis_url, admin, own_keys, path):
    """A WRONGTYPE error is a complete reply: the connection is at a reply boundary, goes back to the pool
    and is reused (same CLIENT ID, no new connection, nothing discarded); its next replies are its own."""
    p = make_pool(redis_url, max_size=1)
    r = redis.Redis(connection_pool=p)
    admin.set("text", "not a list")
    first = r.client_id()
    opened = stat(p, S.CONNECTIONS_NUM)
    for _ in range(3):
        if path == "pipeline":
            replies = r.pipeline(transaction=False).get("own:0").lpush("text", 1).get("own:1").execute(
                raise_on_error=False)
            assert replies[0] == b"own:0" and replies[2] == b"own:1"
            assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
        else:
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                if path == "client":
                    with p.client() as c:
                        c.lpush("text", 1)
                else:
                    r.lpush("text", 1)
        assert r.client_id() == first
    assert stat(p, S.CONNECTIONS_NUM) == opened == 1
    for reason in ("cancelled", "error", "reset", "lost"):
        assert stat(p, S.DISCARD_REASONS[reason]) == 0
    assert r.get("text") == b"not a list"
    assert_own_replies(p)
    assert r.client_id() == first
    assert_settled(p)


# -- Redis at maxclients ---------------------------------------------------------------------------------------
def test_redis_at_maxclients_checkouts_wait_for_the_open_connections(make_pool, redis_factory):
    """Redis refuses connections past ``maxclients`` ("max number of clients reached") while the pool's open
    ones work: 30 greenlets on a pool of 10 that Redis lets open only 3 all succeed, each checkout that could not
    open a connection waiting for one of the open ones (it used to fail at once: 1485 of 1500 here). Alone, with
    nothing open, a refused connect still fails at once."""
    server = redis_factory("--maxclients", "4")
    blocker = redis.Redis(port=server.port)
    blocker.ping()  # one of the 4: the pool gets 3
    p = make_pool(server.url, max_size=10, timeout=5.0)
    failures, ok = [], []

    def work():
        for _ in range(50):
            try:
                with p.client() as r:
                    assert r.echo("x") == b"x"
                    gevent.sleep(0.001)
                ok.append(1)
            except Exception as error:  # noqa: BLE001 -- any failure is the finding
                failures.append(repr(error))

    gevent.joinall([gevent.spawn(work) for _ in range(30)], timeout=60, raise_error=True)
    assert failures == [] and len(ok) == 1500
    assert stat(p, S.CONNECTIONS_ERRORS) >= 1  # Redis did refuse connections
    assert stat(p, S.POOL_SIZE) <= 3
    assert_settled(p)
    lone = make_pool(server.url, max_size=10, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match="max number of clients reached"):
        lone.getconn()
    assert time.monotonic() - started < 1.0
