"""The pool's lifecycle against a real redis-server: no silent retries, fork, close, recycling, leaks, stats.

Issue 2, behaviours 8 to 13. The server is inspected from the outside (``admin``: CLIENT LIST, INFO
commandstats); the pool's own connections carry the client name ``greenpool:<pool name>``.
"""
import contextlib
import json
import logging
import os
import time

import gevent
import pytest
import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from pool import PoolClosed, PooledRedis, PoolTimeout, RedisPool, TooManyRequests
from pool import stats as S
from pool.testing import server_clients, wait_until

SLACK = 0.15  # scheduling tolerance for the timing windows (loaded CI machines)


# -- helpers ----------------------------------------------------------------------------------------------
@pytest.fixture
def make_pool(new_pool, redis_url):
    """``make_pool(name, **options)``: a RedisPool on the test's server, closed at teardown."""
    return lambda name, url=None, **options: new_pool(url or redis_url, name=name, **options)


def server_ids(admin, p):
    return {int(c["id"]) for c in server_clients(admin, p)}


def settle(admin):
    """Return once the server has processed everything clients sent before this call.

    The second PING is sent after the first reply, so it is read in a later event-loop round than any
    bytes already waiting in other clients' sockets.
    """
    admin.ping()
    admin.ping()


def incr_calls(admin):
    """How many times the server executed INCR (redis-py's ``incr`` sends INCRBY)."""
    stats = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("incr", "incrby"))


def borrow_many(p, n):
    """Borrow ``n`` connections together (opening as many as needed), give them all back; their CLIENT IDs."""
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(p.client()) for _ in range(n)]
        return [client.client_id() for client in clients]


# -- 8. no silent retries ---------------------------------------------------------------------------------
def _slow_server(kind, redis_server, admin, resume_after):
    """Make the server slow for ``resume_after`` seconds, from now; returns the greenlet that ends it."""
    if kind == "pause":
        redis_server.pause()
        return gevent.spawn_later(resume_after, redis_server.resume)
    # DEBUG SLEEP from another connection blocks the whole server; wait until it really is busy.
    sleeper = gevent.spawn(admin.execute_command, "DEBUG", "SLEEP", str(resume_after))
    wait_until(lambda: not redis_server.ping(timeout=0.02), what="DEBUG SLEEP to block the server")
    return sleeper


@pytest.mark.timing
@pytest.mark.parametrize("slow", ["pause", "debug-sleep"])
@pytest.mark.parametrize("cancel", ["gevent.Timeout", "socket_timeout"])
def test_timed_out_incr_is_applied_exactly_once(redis_factory, cancel, slow):
    """One INCR whose reply comes after its caller gave up is executed exactly once: neither the pool nor
    redis-py re-sends it, and the caller sees the timeout (it, not the library, decides about repeating)."""
    server = redis_factory("--enable-debug-command", "yes")
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    options = {"socket_timeout": 0.2} if cancel == "socket_timeout" else {}
    p = RedisPool.from_url(server.url, name="once", **options)
    try:
        r = redis.Redis(connection_pool=p)
        r.ping()  # one idle connection, so the INCR is sent at once
        admin.config_resetstat()
        ender = _slow_server(slow, server, admin, resume_after=0.4)
        started = time.monotonic()
        expected = gevent.Timeout if cancel == "gevent.Timeout" else redis.exceptions.TimeoutError
        try:
            with pytest.raises(expected):
                with gevent.Timeout(0.2 if cancel == "gevent.Timeout" else 2.0):
                    r.incr("counter")
            elapsed = time.monotonic() - started
        finally:
            ender.join()
            server.resume()
        # Any retry runs inside the call, after the server is responsive again; the call ended first.
        assert 0.2 <= elapsed < 0.2 + SLACK, elapsed
        settle(admin)
        assert admin.get("counter") == "1"
        assert incr_calls(admin) == 1
        assert p.get_stats()[S.DISCARDED_CANCELLED if cancel == "gevent.Timeout" else S.DISCARDED_ERROR] == 1
        assert r.incr("counter") == 2  # and the pool carries on with a clean connection
    finally:
        server.resume()
        p.close(timeout=1.0)
        admin.close()


@pytest.mark.timing
def test_retry_detector_sees_an_explicit_retry(redis_factory):
    """Control for the test above: when a caller opts into ``retry=``, the same scenario runs INCR twice, so
    the exactly-once check would catch a silent retry."""
    server = redis_factory()
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    p = RedisPool.from_url(server.url, name="retrying", socket_timeout=0.2, retry=Retry(NoBackoff(), 1))
    try:
        r = redis.Redis(connection_pool=p)
        r.ping()
        admin.config_resetstat()
        ender = _slow_server("pause", server, admin, resume_after=0.3)
        assert r.incr("counter") == 2  # first attempt timed out but was applied, the retry applied it again
        ender.join()
        settle(admin)
        assert incr_calls(admin) == 2
    finally:
        server.resume()
        p.close(timeout=1.0)
        admin.close()


# -- 9. fork -----------------------------------------------------------------------------------------------
def run_in_child(work, timeout=15.0):
    """Fork; in the child run ``work()`` and send its JSON result through a pipe, then ``os._exit``.

    Returns the child's result; raises if it failed or did not exit within ``timeout``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_fd)
            payload = {"ok": work()}
            status = 0
        except BaseException as error:  # report anything, including GreenletExit
            payload = {"error": f"{type(error).__name__}: {error}"}
        finally:
            try:
                os.write(write_fd, json.dumps(payload).encode())
            finally:
                os._exit(status)
    os.close(write_fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"child {pid} did not exit within {timeout}s")
            gevent.sleep(0.01)
        chunks = []
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    report = json.loads(b"".join(chunks) or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and "ok" in report, (status, report)
    return report["ok"]


def _own_port(client):
    """The local port of this client's connection, as the server sees it (CLIENT INFO addr)."""
    return int(client.client_info()["addr"].rsplit(":", 1)[1])


def test_forked_child_rebuilds_and_parent_connections_survive(make_pool, admin):
    """After os.fork() the child never touches the parent's sockets: it opens its own connections (other
    CLIENT IDs, other ports) lazily, and the parent's idle and borrowed connections keep working."""
    p = make_pool("fork", max_size=4)
    r = redis.Redis(connection_pool=p)
    r.set("k", "parent")
    with p.client() as held:  # borrowed across the fork
        with p.client() as a, p.client() as b:  # two more, idle at the fork
            parent_ids = {held.client_id(), a.client_id(), b.client_id()}
            parent_ports = {_own_port(held), _own_port(a), _own_port(b)}
        held_id = held.client_id()
        assert len(parent_ids) == 3

        def child():
            ids, ports = set(), set()
            with p.client() as c1, p.client() as c2:
                for c in (c1, c2):
                    ids.add(c.client_id())
                    ports.add(_own_port(c))
            child_r = redis.Redis(connection_pool=p)
            values = [child_r.get("k").decode() for _ in range(5)]
            child_r.set("k2", "child")
            ids.add(child_r.client_id())
            return {"ids": sorted(ids), "ports": sorted(ports), "values": values, "size": p.get_stats()[S.POOL_SIZE]}

        report = run_in_child(child)
        assert held.client_id() == held_id  # the borrowed connection still works, same server session
        assert held.get("k2") == b"child"
    assert report["values"] == ["parent"] * 5
    assert not set(report["ids"]) & parent_ids
    assert not set(report["ports"]) & parent_ports
    assert report["size"] == 2  # the child's pool started from nothing; inherited ones were dropped
    # The parent's idle connections are reused as they were (none was broken by the child).
    with p.client() as a, p.client() as b, p.client() as c:
        assert {a.client_id(), b.client_id(), c.client_id()} == parent_ids
    wait_until(lambda: server_ids(admin, p) == parent_ids, what="the child's connections to go away")
    assert p.get_stats()[S.CONNECTIONS_LOST] == 0
    assert r.get("k") == b"parent"


# -- 10. close ---------------------------------------------------------------------------------------------
def test_close_refuses_new_borrowers_at_once(make_pool):
    """After close(), every way of borrowing raises PoolClosed immediately (no waiting, no connecting)."""
    p = make_pool("closed", timeout=5.0)
    p.close()
    r = redis.Redis(connection_pool=p)
    started = time.monotonic()
    with pytest.raises(PoolClosed):
        p.getconn()
    with pytest.raises(PoolClosed):
        with p.connection():
            pass
    with pytest.raises(PoolClosed):
        with p.client():
            pass
    with pytest.raises(PoolClosed):
        r.get("k")
    with pytest.raises(PoolClosed):
        p.wait(timeout=1.0)
    assert time.monotonic() - started < 0.1
    assert p.closed and "closed" in repr(p)


def test_close_wakes_waiters_with_pool_closed(make_pool, admin):
    """Greenlets queued for a connection are woken by close() with PoolClosed, at once, not at their timeout."""
    p = make_pool("wake", max_size=1, timeout=10.0)
    release = Event()

    def holder():
        with p.connection():
            release.wait()

    holding = gevent.spawn(holder)
    wait_until(lambda: p.get_stats()[S.POOL_IN_USE] == 1, what="the holder to borrow")
    waiters = [gevent.spawn(p.getconn) for _ in range(3)]
    wait_until(lambda: p.get_stats()[S.REQUESTS_WAITING] == 3, what="three queued waiters")
    closer = gevent.spawn(p.close, timeout=5.0)
    started = time.monotonic()
    gevent.joinall(waiters, timeout=1.0)
    assert all(w.ready() for w in waiters) and time.monotonic() - started < 0.5
    assert all(isinstance(w.exception, PoolClosed) for w in waiters)
    assert p.get_stats()[S.REQUESTS_WAITING] == 0
    assert not closer.ready()  # still draining the borrowed connection
    release.set()
    holding.join(timeout=1.0)
    closer.join(timeout=1.0)
    assert closer.successful()
    wait_until(lambda: not server_clients(admin, p), what="the server to see the pool's connection closed")


def test_close_closes_idle_connections_at_once(make_pool, admin):
    """close() closes every idle connection before it returns; the server sees them go."""
    p = make_pool("idle", max_size=5)
    borrow_many(p, 3)
    assert len(server_clients(admin, p)) == 3
    started = time.monotonic()
    p.close(timeout=5.0)
    assert time.monotonic() - started < 0.1
    assert p.get_stats()[S.POOL_SIZE] == 0
    wait_until(lambda: not server_clients(admin, p), timeout=1.0, what="the server to see them closed")


def test_close_waits_for_borrowed_connection_to_come_back(make_pool, admin):
    """A borrowed connection is closed when returned (not reused), and close() returns right then."""
    p = make_pool("drain", max_size=3)
    borrow_many(p, 2)
    conn = p.getconn()
    conn.send_command("PING")
    assert conn.read_response() == b"PONG"
    closer = gevent.spawn(p.close, timeout=5.0)
    wait_until(lambda: len(server_clients(admin, p)) == 1, what="the idle ones to close")
    gevent.sleep(0.05)
    assert not closer.ready()
    p.putconn(conn)
    closer.join(timeout=1.0)
    assert closer.successful()
    assert p.get_stats()[S.POOL_SIZE] == 0
    wait_until(lambda: not server_clients(admin, p), timeout=1.0, what="the returned connection to close")


@pytest.mark.timing
def test_close_deadline_closes_a_connection_held_forever(make_pool, admin):
    """close(timeout=0.2) with a connection never given back returns in about 0.2 s, having closed that
    connection under its holder. The holder's next command fails (it does not silently reconnect behind
    the closed pool), and its late return is harmless."""
    p = make_pool("forever", max_size=2)
    with p.client() as r:
        assert r.ping()
        assert len(server_clients(admin, p)) == 1
        started = time.monotonic()
        p.close(timeout=0.2)
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.2 + SLACK, elapsed
        wait_until(lambda: not server_clients(admin, p), timeout=1.0, what="the held connection to be closed")
        stats = p.get_stats()
        assert (stats[S.POOL_SIZE], stats[S.POOL_IN_USE]) == (0, 0)
        with pytest.raises(redis.exceptions.ConnectionError, match="closed by its pool"):
            r.ping()
        settle(admin)
        assert not server_clients(admin, p)
    assert p.get_stats()[S.POOL_SIZE] == 0  # the late return changed nothing


def test_close_deadline_interrupts_a_holder_blocked_on_a_reply(make_pool, admin):
    """A holder blocked reading a reply when close()'s deadline passes gets a ConnectionError at once."""
    p = make_pool("blocked", max_size=1)
    admin.delete("q")

    def block():
        with p.client() as r:
            return r.blpop("q", timeout=30)

    blocked = gevent.spawn(block)
    wait_until(lambda: any(c["cmd"] == "blpop" for c in server_clients(admin, p)), what="BLPOP to block")
    p.close(timeout=0.1)
    blocked.join(timeout=1.0)
    assert blocked.ready() and isinstance(blocked.exception, redis.exceptions.ConnectionError), blocked.exception
    wait_until(lambda: not server_clients(admin, p), timeout=1.0, what="the blocked connection to be closed")


def test_second_close_is_harmless(make_pool):
    """close() on a closed pool returns at once and changes nothing."""
    p = make_pool("twice")
    borrow_many(p, 2)
    p.close(timeout=1.0)
    before = p.get_stats()
    started = time.monotonic()
    p.close(timeout=1.0)
    p.close(timeout=0)
    assert time.monotonic() - started < 0.05
    assert p.get_stats() == before and before[S.POOL_SIZE] == 0


def test_a_greenlet_copied_mid_command_fails_in_the_child_and_the_parent_gets_its_reply(make_pool, admin):
    """A greenlet waiting for a reply at fork time exists in the child too. There it fails at once with a
    ConnectionError (the child's copy of the socket is closed at fork): it never waits on, or reads, the reply
    that belongs to the parent, which gets it as if nothing had happened."""
    p = make_pool("fork-mid", max_size=2)
    r = PooledRedis(connection_pool=p)
    pending = gevent.spawn(r.blpop, "q", 5)
    wait_until(lambda: admin.info("clients")["blocked_clients"] == 1, what="BLPOP to block")

    def child():
        try:
            return repr(pending.get(timeout=1.0))
        except RedisConnectionError:
            return "ConnectionError"
        except gevent.Timeout:
            return "still waiting"

    report = run_in_child(child)
    admin.rpush("q", "parent-reply")
    assert pending.get(timeout=5) == (b"q", b"parent-reply")
    assert report == "ConnectionError"


def test_close_in_forked_child_leaves_parent_connections_alone(make_pool, admin):
    """close() in a forked child only forgets the parent's connections: the parent's idle and borrowed
    connections stay open on the server and keep working, and the parent's pool stays open."""
    p = make_pool("forkclose", max_size=4)
    with p.client() as held:
        held_id = held.client_id()
        idle_ids = set(borrow_many(p, 2))

        def child():
            p.close(timeout=1.0)
            p.close(timeout=1.0)
            try:
                p.getconn()
            except PoolClosed:
                refused = True
            else:
                refused = False
            return {"closed": p.closed, "refused": refused}

        assert run_in_child(child) == {"closed": True, "refused": True}
        settle(admin)
        assert server_ids(admin, p) == idle_ids | {held_id}
        assert held.client_id() == held_id and held.ping()
    assert not p.closed
    with p.client() as a, p.client() as b, p.client() as c:
        assert {a.client_id(), b.client_id(), c.client_id()} == idle_ids | {held_id}
    assert p.get_stats()[S.CONNECTIONS_LOST] == 0


# -- 11. recycling and min_size --------------------------------------------------------------------------
@pytest.mark.timing
def test_max_idle_closes_surplus_idle_connections(make_pool, admin):
    """Connections idle longer than max_idle are closed, down to min_size but not below."""
    p = make_pool("maxidle", max_size=4, min_size=1, max_idle=0.2)
    p.wait(timeout=5.0)
    borrow_many(p, 3)
    returned = time.monotonic()
    assert p.get_stats()[S.POOL_SIZE] == 3
    wait_until(lambda: p.get_stats()[S.POOL_SIZE] == 1, what="surplus idle connections to close")
    elapsed = time.monotonic() - returned
    assert 0.2 - 0.01 <= elapsed < 0.2 + 0.1 + SLACK, elapsed  # one housekeeping tick (max_idle / 4) late at most
    wait_until(lambda: len(server_clients(admin, p)) == 1, timeout=1.0, what="the server to see 1 connection")
    assert p.get_stats()[S.DISCARDED_IDLE] == 2
    gevent.sleep(0.3)  # min_size is a floor: the last idle one stays
    assert p.get_stats()[S.POOL_SIZE] == 1 and len(server_clients(admin, p)) == 1


@pytest.mark.timing
def test_max_lifetime_recycles_idle_and_returned_connections(make_pool, admin):
    """A connection older than max_lifetime (minus up to 10% jitter) is closed: while idle, by the
    housekeeper; when it comes back, on return. The next borrower gets a new one."""
    p = make_pool("lifetime", max_size=2, max_lifetime=0.3)
    r = redis.Redis(connection_pool=p)
    first = r.client_id()
    opened = time.monotonic()
    wait_until(lambda: first not in server_ids(admin, p), what="the idle connection to be recycled")
    assert 0.27 - 0.01 <= time.monotonic() - opened < 0.3 + 0.075 + SLACK
    assert p.get_stats()[S.DISCARDED_LIFETIME] == 1
    with p.client() as c:
        second = c.client_id()
        gevent.sleep(0.35)  # hold it past its lifetime
        assert c.ping()  # a borrowed connection is never closed under its holder for age
    assert second != first
    assert p.get_stats()[S.DISCARDED_LIFETIME] == 2 and p.get_stats()[S.POOL_SIZE] == 0
    wait_until(lambda: not server_clients(admin, p), timeout=1.0, what="the server to see it closed")
    assert r.client_id() not in (first, second)


def test_min_size_is_refilled_in_the_background_after_discards(make_pool, admin):
    """After discards (cancelled borrows) drop the pool below min_size, the housekeeper opens new
    connections until min_size are open again, with nobody borrowing."""
    p = make_pool("refill", max_size=5, min_size=3)
    p.wait(timeout=5.0)
    original = server_ids(admin, p)
    assert len(original) == 3
    with pytest.raises(gevent.Timeout):
        with p.client() as a, p.client() as b:
            a.ping(), b.ping()
            raise gevent.Timeout()  # both borrows end in a BaseException: both connections are discarded
    assert p.get_stats()[S.DISCARDED_CANCELLED] == 2
    wait_until(lambda: p.get_stats()[S.POOL_SIZE] == 3 and p.get_stats()[S.POOL_AVAILABLE] == 3,
               what="min_size to be refilled")
    now = wait_until(lambda: len(ids := server_ids(admin, p)) == 3 and ids, timeout=1.0, what="3 on the server")
    assert len(now & original) == 1


def test_min_size_kept_while_max_lifetime_recycles(make_pool, admin):
    """With min_size and a short max_lifetime, every original connection is replaced and min_size stays open."""
    p = make_pool("rotate", max_size=4, min_size=2, max_lifetime=0.3)
    p.wait(timeout=5.0)
    original = server_ids(admin, p)
    assert len(original) == 2
    wait_until(lambda: p.get_stats()[S.DISCARDED_LIFETIME] >= 2, what="both originals to expire")
    current = wait_until(lambda: (ids := server_ids(admin, p)) and len(ids) == 2 and not ids & original and ids,
                         what="two new connections on the server")
    assert len(current) == 2 and p.get_stats()[S.POOL_SIZE] == 2


@pytest.mark.timing
def test_wait_blocks_until_min_size_is_open(make_pool, redis_server, admin):
    """wait(timeout) returns only once min_size connections are open, and raises PoolTimeout at its
    deadline while the server cannot complete them."""
    redis_server.pause()  # TCP connects succeed, the handshake (CLIENT SETNAME) does not complete
    try:
        p = make_pool("wait", max_size=4, min_size=2)
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="min_size 2"):
            p.wait(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 0.3 + SLACK
    finally:
        redis_server.resume()
    p.wait(timeout=5.0)
    stats = p.get_stats()
    assert (stats[S.POOL_SIZE], stats[S.POOL_AVAILABLE]) == (2, 2)
    assert len(server_clients(admin, p)) == 2


@pytest.mark.timing
def test_wait_times_out_while_server_is_down(make_pool, redis_server):
    """wait() on a server refusing connections raises PoolTimeout at its deadline, naming the last error."""
    redis_server.stop()
    p = make_pool("down", min_size=1)
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match="Connection"):
        p.wait(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + SLACK


# -- 12. leaks ----------------------------------------------------------------------------------------------
def _keep_it_forever(p, holding, stop):
    with p.connection():
        holding.set()
        stop.wait()


@pytest.mark.timing
def test_leak_threshold_logs_one_warning_with_both_stacks(make_pool, caplog):
    """A connection held past leak_threshold logs exactly one warning (logger "pool") showing where it was
    borrowed (this file and the borrowing function) and where its holder is now."""
    caplog.set_level(logging.WARNING, logger="pool")
    p = make_pool("leaky", leak_threshold=0.2)
    holding, stop = Event(), Event()
    holder = gevent.spawn(_keep_it_forever, p, holding, stop)
    holding.wait(timeout=5.0)
    borrowed = time.monotonic()

    def leak_records():
        return [rec for rec in caplog.records if rec.name == "pool" and "held for" in rec.getMessage()]

    wait_until(leak_records, timeout=2.0, what="the leak warning")
    assert 0.2 <= time.monotonic() - borrowed < 0.2 + 0.05 + SLACK
    gevent.sleep(0.3)  # several more housekeeping rounds (every 0.05 s): still one warning for this borrow
    records = leak_records()
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    borrowed_at, _, now_at = message.partition("holder is now at:")
    assert "leaky" in message
    assert __file__ in borrowed_at and "_keep_it_forever" in borrowed_at and "with p.connection()" in borrowed_at
    assert __file__ in now_at and "_keep_it_forever" in now_at and "stop.wait()" in now_at
    assert p.get_stats()[S.LEAKS_REPORTED] == 1
    stop.set()
    holder.join(timeout=1.0)
    with p.connection():  # a short borrow afterwards reports nothing
        pass
    gevent.sleep(0.1)
    assert len(leak_records()) == 1


@pytest.mark.timing
def test_leak_report_names_the_test_function_that_borrowed(make_pool, caplog):
    """A borrow through redis.Redis / client() held past the threshold names the borrowing test function."""
    caplog.set_level(logging.WARNING, logger="pool")
    p = make_pool("leaky2", leak_threshold=0.1)
    with p.client() as r:
        r.ping()
        records = wait_until(lambda: [rec for rec in caplog.records if "held for" in rec.getMessage()],
                             timeout=2.0, what="the leak warning")
    assert len(records) == 1
    message = records[0].getMessage()
    assert "test_leak_report_names_the_test_function_that_borrowed" in message.partition("holder is now at:")[0]
    assert __file__ in message


# -- 13. stats ----------------------------------------------------------------------------------------------
def test_stats_keys_are_exactly_the_documented_ones(make_pool):
    """get_stats() and pop_stats() return exactly pool.stats.GAUGES + COUNTERS, all integers, nothing else;
    and the README's stats table lists the same keys."""
    p = make_pool("keys")
    documented = set(S.GAUGES) | set(S.COUNTERS)
    assert len(documented) == len(S.GAUGES) + len(S.COUNTERS)
    for values in (p.get_stats(), p.pop_stats()):
        assert set(values) == documented
        assert all(type(v) is int for v in values.values()), values
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert {key for key in documented if f"| `{key}` |" in readme} == documented


def test_stats_follow_a_scripted_scenario(make_pool, admin, redis_factory):
    """Each counter moves exactly when its event happens; pop_stats() zeroes counters but not gauges."""
    p = make_pool("scripted", max_size=2, min_size=0, timeout=0.1, max_waiting=1)
    s = p.get_stats()
    assert {k: s[k] for k in S.GAUGES} == {S.POOL_MIN: 0, S.POOL_MAX: 2, S.POOL_SIZE: 0, S.POOL_AVAILABLE: 0,
                                            S.POOL_IN_USE: 0, S.REQUESTS_WAITING: 0}
    assert all(s[k] == 0 for k in S.COUNTERS)

    c1, c2 = p.getconn(), p.getconn()
    s = p.get_stats()
    assert (s[S.REQUESTS_NUM], s[S.CONNECTIONS_NUM], s[S.POOL_SIZE], s[S.POOL_IN_USE]) == (2, 2, 2, 2)
    with pytest.raises(PoolTimeout):  # both borrowed: the third waits 0.1 s and times out
        p.getconn()
    s = p.get_stats()
    assert (s[S.REQUESTS_NUM], s[S.REQUESTS_QUEUED], s[S.REQUESTS_TIMEOUTS]) == (3, 1, 1)
    assert 100 <= s[S.REQUESTS_WAIT_MS] < 100 + SLACK * 1000

    waiter = gevent.spawn(p.getconn, timeout=5.0)
    wait_until(lambda: p.get_stats()[S.REQUESTS_WAITING] == 1, what="a queued waiter")
    with pytest.raises(TooManyRequests):  # max_waiting=1
        p.getconn()
    assert p.get_stats()[S.REQUESTS_REJECTED] == 1
    p.putconn(c1)  # handed straight to the waiter
    c3 = waiter.get(timeout=1.0)
    assert c3 is c1
    s = p.get_stats()
    assert (s[S.REQUESTS_WAITING], s[S.POOL_IN_USE], s[S.POOL_AVAILABLE], s[S.REQUESTS_QUEUED]) == (0, 2, 0, 2)

    killed = gevent.spawn(p.getconn, timeout=5.0)
    wait_until(lambda: p.get_stats()[S.REQUESTS_WAITING] == 1, what="another queued waiter")
    killed.kill()
    assert p.get_stats()[S.REQUESTS_CANCELLED] == 1 and p.get_stats()[S.REQUESTS_WAITING] == 0

    c3.send_command("MULTI")
    assert c3.read_response() == b"OK"
    p.putconn(c3)  # returned inside MULTI: reset
    c2.send_command("PING")  # owes a reply; the holder is cancelled
    with pytest.raises(gevent.Timeout):
        try:
            raise gevent.Timeout()
        except BaseException:
            p.putconn(c2)
            raise
    s = p.get_stats()
    assert (s[S.DISCARDED_RESET], s[S.DISCARDED_CANCELLED], s[S.POOL_SIZE]) == (1, 1, 0)
    with pytest.raises(redis.exceptions.ConnectionError):
        with p.connection() as c:
            raise redis.exceptions.ConnectionError("boom")
    assert p.get_stats()[S.DISCARDED_ERROR] == 1

    with p.client() as c:  # an idle connection the server closed is found broken at checkout
        victim = c.client_id()
    admin.client_kill_filter(_id=victim)
    wait_until(lambda: victim not in server_ids(admin, p), what="the kill")
    with p.client() as c:
        assert c.client_id() != victim
    s = p.get_stats()
    assert s[S.CONNECTIONS_LOST] == 1
    assert s[S.CONNECTIONS_NUM] == 5 and s[S.CONNECTIONS_ERRORS] == 0 and s[S.CONNECTIONS_MS] >= 0

    popped = p.pop_stats()
    assert popped == s
    after = p.get_stats()
    assert all(after[k] == 0 for k in S.COUNTERS)
    assert {k: after[k] for k in S.GAUGES} == {k: s[k] for k in S.GAUGES}
    assert (after[S.POOL_SIZE], after[S.POOL_AVAILABLE]) == (1, 1)

    dead = redis_factory()
    url = dead.url
    dead.stop()
    down = make_pool("scripted-down", url=url)
    with pytest.raises(redis.exceptions.ConnectionError):
        down.getconn()
    assert down.get_stats()[S.CONNECTIONS_ERRORS] == 1 and down.get_stats()[S.POOL_SIZE] == 0


def test_repr_shows_live_counts(make_pool):
    """repr(p) shows the same live counts as the gauges."""
    p = make_pool("repr", max_size=3)
    conn = p.getconn()
    borrow_many(p, 1)
    assert "size=2, idle=1, in_use=1, waiting=0, max_size=3" in repr(p)
    p.putconn(conn)
    assert "size=2, idle=2, in_use=0" in repr(p)
