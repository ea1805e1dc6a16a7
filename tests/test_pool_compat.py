"""What libraries built on redis-py ask of the pool, against real redis-servers (issue 14, "The library").

django-redis calls ``pool.disconnect()`` after each request (``DJANGO_REDIS_CLOSE_CONNECTION``) while other
greenlets are mid-command; ``pubsub.close()`` is a normal end; kombu passes ``client_name=None``; ACL users may
lack ``client|setname``; callers who ask for retries (``retry=``, ``retry_on_error``, ``retry_on_timeout``)
get them, and nobody else does; idle subscriptions keep redis-py's keepalive PING.
"""
import time
from unittest import mock

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError, ReadOnlyError
from redis.retry import Retry

from pool import PooledRedis, PoolTimeout
from pool import stats as S
from pool.testing import FaultProxy, server_clients, wait_until

SLACK = 0.2  # scheduling tolerance for timing windows on a loaded machine


@pytest.fixture
def make_pool(new_pool, redis_url):
    """``make_pool(name, url=None, **options)``: a RedisPool, closed at teardown."""
    return lambda name, url=None, **options: new_pool(url or redis_url, name=name, **options)


def client_ids(admin, p):
    return {int(c["id"]) for c in server_clients(admin, p)}


def command_calls(admin, name):
    """(calls, rejected_calls) of one command in INFO commandstats (``client|setname``, ``ping``, ...)."""
    entry = admin.info("commandstats").get(f"cmdstat_{name}", {})
    return entry.get("calls", 0), entry.get("rejected_calls", 0)


# -- disconnect(inuse_connections=True) -------------------------------------------------------------------
def _blocked_readers(p, admin, count, timeout=5):
    """``count`` greenlets, each blocked in BLPOP on its own key through a borrowed connection; once all are
    blocked in the server, return them (each returns what its BLPOP returned, or the exception it raised)."""
    r = redis.Redis(connection_pool=p)

    def reader(i):
        try:
            return r.blpop(f"q{i}", timeout=timeout)
        except Exception as error:  # noqa: BLE001 - the test asserts there is none
            return error

    readers = [gevent.spawn(reader, i) for i in range(count)]
    wait_until(lambda: admin.info("clients")["blocked_clients"] == count, what=f"{count} blocked BLPOPs")
    return readers


@pytest.mark.parametrize("multiplex", [0, 1])
def test_disconnect_in_use_never_closes_a_socket_under_its_holder(make_pool, admin, multiplex):
    """``disconnect()`` (inuse_connections=True, as django-redis calls it) while other greenlets are reading
    replies: none of them sees an error (before the fix: "Bad file descriptor"); each connection closes when it
    comes back, the idle and shared ones at once, and commands afterwards run on new connections."""
    p = make_pool("dj", max_size=8, multiplex=multiplex, decode_responses=True)
    r = redis.Redis(connection_pool=p)
    assert r.set("k", "v")
    readers = _blocked_readers(p, admin, 4)
    old = client_ids(admin, p)
    assert len(old) == 4 + multiplex  # the readers' (one of them reused the idle one), and the shared one

    p.disconnect()  # django-redis: connection_pool.disconnect() at the end of some other request

    assert p.get_stats()[S.POOL_IN_USE] == 4  # still lent: nothing closed under its holder (the idle one is)
    for i in range(4):
        admin.rpush(f"q{i}", f"value {i}")
    assert [g.get(timeout=5) for g in readers] == [(f"q{i}", f"value {i}") for i in range(4)]
    wait_until(lambda: not client_ids(admin, p) & old, what="the old connections to close")
    stats = p.get_stats()
    assert stats[S.POOL_SIZE] == 0 and stats[S.POOL_AVAILABLE] == 0
    assert stats[S.DISCARDED_ERROR] == stats[S.DISCARDED_RESET] == stats[S.CONNECTIONS_LOST] == 0
    assert r.get("k") == "v"  # a new connection
    assert not client_ids(admin, p) & old


def test_disconnect_on_a_multiplexed_pool_retires_the_shared_connection(make_pool, redis_server, admin):
    """Shared connections owing replies when ``disconnect()`` is called take no new command, deliver every
    reply they owe to its own caller, then close; the next commands go to a new shared connection."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        p = make_pool("mx", url=proxy.url, max_size=4, multiplex=1)
        p.execute("SET", "k", "v")
        [old_id] = client_ids(admin, p)
        proxy.delay(0.2)  # replies in flight for 0.4 s
        callers = [gevent.spawn(p.execute, "CLIENT", "ID") for _ in range(20)]
        wait_until(lambda: p._mux.in_flight() == 20, what="20 replies owed on the shared connection")

        p.disconnect()
        assert client_ids(admin, p) == {old_id}  # still open: it owes replies
        late = gevent.spawn(p.execute, "CLIENT", "ID")  # after disconnect(): must not go to the retiring one
        gevent.sleep(0.05)
        assert p._mux.in_flight() == 20  # the late command is not queued behind them
        proxy.passthrough()  # (the replies held by the proxy still take their 0.2 s)

        assert [g.get(timeout=5) for g in callers] == [old_id] * 20
        new_id = late.get(timeout=5)
        assert new_id != old_id
        wait_until(lambda: client_ids(admin, p) == {new_id}, what="the retired connection to close")
        stats = p.get_stats()
        assert stats[S.MUX_CONNECTIONS_NUM] == 2
        assert stats[S.DISCARDED_ERROR] == stats[S.CONNECTIONS_LOST] == stats[S.MUX_REPLIES_DROPPED] == 0


# -- pubsub.close() -----------------------------------------------------------------------------------------
def test_pubsub_close_counts_as_a_reset_not_an_error(make_pool, admin):
    """A subscription ended with ``pubsub.close()`` is discarded as session state (``discarded_reset``); a
    connection that really failed still counts as ``discarded_error``."""
    p = make_pool("ps")
    ps = redis.Redis(connection_pool=p).pubsub()
    ps.subscribe("news")
    assert wait_until(lambda: ps.get_message(timeout=0.05))["type"] == "subscribe"
    ps.close()
    stats = p.get_stats()
    assert (stats[S.DISCARDED_RESET], stats[S.DISCARDED_ERROR]) == (1, 0)

    single = redis.Redis(connection_pool=p, single_connection_client=True)
    admin.client_kill_filter(_id=single.client_id())
    with pytest.raises(redis.ConnectionError):
        single.get("k")
    single.close()
    stats = p.get_stats()
    assert (stats[S.DISCARDED_RESET], stats[S.DISCARDED_ERROR]) == (1, 1)


# -- client names and ACL users without client|setname ----------------------------------------------------------
@pytest.mark.parametrize("given", [None, ""])
def test_a_client_name_of_none_keeps_the_pool_name(make_pool, admin, given):
    """kombu passes ``client_name=None``: the connections still carry ``greenpool:<name>``; a real name wins."""
    p = make_pool("kombu", client_name=given)
    assert PooledRedis(connection_pool=p).client_getname() == "greenpool:kombu"
    named = make_pool("other", client_name="celery-worker")
    assert PooledRedis(connection_pool=named).client_getname() == "celery-worker"


@pytest.fixture
def limited_user(admin):
    """An ACL user that may GET, SET, BLPOP, PING and CLIENT ID/GETNAME, but not CLIENT SETNAME."""
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+get", "+set", "+blpop", "+ping", "+client|id", "+client|getname"])
    admin.config_resetstat()
    return {"username": "limited", "password": "pw"}


@pytest.mark.parametrize("multiplex", [0, 2])
def test_an_acl_user_without_client_setname_connects_unnamed(make_pool, admin, limited_user, multiplex):
    """A user whose ACL lacks ``client|setname`` connects and works, as through redis-py's own pool (which
    names nothing by default); its connections stay unnamed, and the pool asks only once."""
    p = make_pool("acl", max_size=6, multiplex=multiplex, **limited_user)
    r = PooledRedis(connection_pool=p)
    assert r.get("nothing") is None  # the first connection: its CLIENT SETNAME is refused

    def work(i):
        r.set(f"k{i}", str(i))
        r.blpop(f"empty{i}", timeout=0.05)  # exclusive on a multiplexed pool: another connection
        return r.get(f"k{i}")

    assert [g.get(timeout=10) for g in [gevent.spawn(work, i) for i in range(10)]] == [b"%d" % i for i in range(10)]
    mine = [c for c in admin.client_list() if c["user"] == "limited"]
    assert len(mine) >= 2 and {c["name"] for c in mine} == {""}
    assert command_calls(admin, "client|setname") == (0, 1)  # refused once; later connections skip it
    stats = p.get_stats()
    assert stats[S.CONNECTIONS_ERRORS] == 0 and stats[S.CONNECTIONS_NUM] == len(mine)


def test_an_acl_user_that_may_setname_gets_the_pool_name(make_pool, admin, limited_user):
    """The name is kept wherever the server allows it, and a name the caller gave is the caller's: refused,
    it is an error at connect, as with redis-py's pool."""
    admin.acl_setuser("limited", enabled=True, commands=["+client|setname"])
    assert PooledRedis(connection_pool=make_pool("named", **limited_user)).client_getname() == "greenpool:named"
    admin.acl_setuser("limited", enabled=True, commands=["-client|setname"])
    explicit = make_pool("explicit", client_name="mine", **limited_user)
    with pytest.raises(NoPermissionError):
        PooledRedis(connection_pool=explicit).get("k")


# -- retries: none by default, those the caller asked for -----------------------------------------------------
def test_retry_options_without_retry_mean_what_they_mean_to_redis_py(make_pool):
    """``retry_on_error`` / ``retry_on_timeout`` without ``retry=`` give redis-py's Connection default (one
    retry, no backoff) on those errors; with ``retry=`` they add their errors to it; neither: no retries."""
    assert make_pool("none").retry.get_retries() == 0
    on_error = make_pool("on-error", retry_on_error=[ReadOnlyError]).retry
    assert on_error.get_retries() == 1 and ReadOnlyError in on_error._supported_errors
    on_timeout = make_pool("on-timeout", retry_on_timeout=True).retry
    assert on_timeout.get_retries() == 1 and redis.TimeoutError in on_timeout._supported_errors
    given = Retry(NoBackoff(), 3)
    both = make_pool("both", retry=given, retry_on_error=[ReadOnlyError])
    assert both.retry.get_retries() == 3 and ReadOnlyError in both.retry._supported_errors
    assert ReadOnlyError not in given._supported_errors  # the caller's object is left as it was
    with make_pool("conn", retry_on_timeout=True).connection() as conn:
        assert conn.retry.get_retries() == 1


def incr_calls(admin):
    stats = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("incr", "incrby"))


CLIENTS = {"redis.Redis": redis.Redis, "PooledRedis": PooledRedis}


@pytest.mark.timing
@pytest.mark.parametrize("multiplex", [0, 2])
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("asked", ["retry_on_timeout", "retry=", "nothing"])
def test_a_timed_out_command_is_retried_only_when_asked(make_pool, redis_server, admin, client, multiplex, asked):
    """With the server frozen past ``socket_timeout``, an INCR runs twice when the caller asked for one retry
    (``retry_on_timeout=True`` or ``retry=Retry(NoBackoff(), 1)``), on the exclusive and the shared path and
    through either client; asked for nothing, it runs once and the caller gets the timeout."""
    options = {"retry_on_timeout": {"retry_on_timeout": True}, "retry=": {"retry": Retry(NoBackoff(), 1)},
               "nothing": {}}[asked]
    p = make_pool("retry", socket_timeout=0.3, max_size=4, multiplex=multiplex, **options)
    r = CLIENTS[client](connection_pool=p)
    r.ping()
    admin.config_resetstat()
    redis_server.pause()
    resumer = gevent.spawn_later(0.45, redis_server.resume)  # the retry reconnects at 0.3 and reads until 0.6
    try:
        if asked == "nothing":
            with pytest.raises(redis.TimeoutError):
                r.incr("counter")
        else:
            assert r.incr("counter") == 2  # the first attempt timed out but ran; the retry ran it again
    finally:
        resumer.join()
        redis_server.resume()
    wait_until(lambda: incr_calls(admin) == (1 if asked == "nothing" else 2), what="the INCRs to be counted")
    assert admin.get("counter") == ("1" if asked == "nothing" else "2")


@pytest.mark.timing
def test_a_pool_timeout_is_never_retried(make_pool):
    """A caller who asked for retries still gets ``PoolTimeout`` after one checkout timeout on the shared path:
    the pool's own errors are not a connection's failure, and its deadline has passed."""
    p = make_pool("deadline", max_size=2, multiplex=1, timeout=0.2, retry=Retry(NoBackoff(), 3))
    held = [p.getconn(), p.getconn()]  # no slot left for the shared connection
    r = PooledRedis(connection_pool=p)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        r.get("k")
    assert time.monotonic() - started < 0.2 + SLACK
    for conn in held:
        p.putconn(conn)
    assert r.get("k") is None


# -- pub/sub keepalive -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("multiplex", [0, 2])
def test_an_idle_subscription_keeps_redis_py_keepalive(make_pool, admin, multiplex):
    """A subscribed connection idle past ``health_check_interval`` is PINGed by redis-py's keepalive while its
    holder polls for messages (what keeps it open through a proxy or NAT), and messages still arrive."""
    p = make_pool("sub", health_check_interval=0.2, max_size=4, multiplex=multiplex)
    ps = redis.Redis(connection_pool=p).pubsub(ignore_subscribe_messages=True)
    ps.subscribe("news")
    admin.config_resetstat()
    deadline = time.monotonic() + 10
    while command_calls(admin, "ping")[0] < 2 and time.monotonic() < deadline:
        assert ps.get_message(timeout=0.05) is None  # keepalive replies are not handed to the caller
    assert command_calls(admin, "ping")[0] >= 2
    admin.publish("news", "hello")
    assert wait_until(lambda: ps.get_message(timeout=0.05))["data"] == b"hello"
    ps.close()


@pytest.mark.parametrize("multiplex", [0, 2])
def test_the_keepalive_ping_goes_through_the_connection_its_holder_has(make_pool, admin, multiplex):
    """The keepalive PING before a SUBSCRIBE is sent through the object the holder calls its connection (a
    ``SharedHandle`` on a multiplexed pool), so a wrapper of its ``send_command`` sees it, as redis-py's own
    health-check tests expect; the PING reached Redis."""
    p = make_pool("ka", health_check_interval=30, max_size=4, multiplex=multiplex)
    ps = redis.Redis(connection_pool=p).pubsub()
    ps.connection = p.get_connection()
    ps.connection.next_health_check = 0  # due now
    admin.config_resetstat()
    with mock.patch.object(ps.connection, "send_command", wraps=ps.connection.send_command) as sent:
        ps.subscribe("news")
        sent.assert_any_call("PING", check_health=False)
    assert command_calls(admin, "ping")[0] == 1
    assert wait_until(lambda: ps.get_message(timeout=0.05))["type"] == "subscribe"
    ps.close()


def test_commands_on_a_held_connection_carry_no_per_command_ping(make_pool, admin):
    """Outside pub/sub, redis-py's per-command health check stays off: the pool checks at checkout, and a
    connection held across the interval sends its commands without a PING first (the hot path)."""
    p = make_pool("held", health_check_interval=0.1)
    with p.client() as r:
        r.get("k")
        admin.config_resetstat()
        gevent.sleep(0.3)
        r.get("k")
    assert command_calls(admin, "ping") == (0, 0)


def test_a_single_connection_client_on_a_multiplexed_pool_can_set_its_password(make_pool, admin):
    """``r.connection.password = ...`` (redis-py's own tests re-authenticate this way) on a single-connection
    client of a multiplexed pool reaches the connection that reconnects: it authenticates with it."""
    p = make_pool("auth", max_size=4, multiplex=1)
    r = redis.Redis(connection_pool=p, single_connection_client=True)
    admin.ping()  # its connection is open before the password is set: it can undo it
    try:
        r.config_set("requirepass", "s3cret")  # exclusive: the client holds that connection from now on
        r.connection.password = "s3cret"
        r.connection.disconnect()
        assert r.ping() is True  # reconnected, and authenticated with the new password
        assert r.connection.password == "s3cret"
    finally:
        admin.execute_command("AUTH", "s3cret")
        admin.config_set("requirepass", "")
        r.close()
