"""SentinelRedisPool against real processes: 1 master, 1 replica, 3 sentinels on loopback ports."""
import time

import gevent
import pytest
import redis
from conftest import SENTINEL_DOWN_AFTER_MS as DOWN_AFTER_MS
from conftest import SENTINEL_FAILOVER_TIMEOUT_MS as FAILOVER_TIMEOUT_MS
from redis.sentinel import Sentinel

from pool.sentinel import SentinelRedisPool
from pool.testing import wait_until
from pool.urls import parse_redis_url


class Load:
    """Greenlets doing SET, GET, ECHO of their own unique tokens through one pinned client each.

    A reply that is not this request's own token is a crossed reply; a request that takes longer than
    ``hung_after`` seconds is killed and counted as hung.
    """

    def __init__(self, pool, greenlets=8, hung_after=3.0):
        self.pool = pool
        self.hung_after = hung_after
        self.successes = []  # (time, "host:port")
        self.failures = []  # (time, error)
        self.crossed = []
        self.hung = 0
        self.longest = 0.0
        self._stop = False
        self._greenlets = [gevent.spawn(self._work, i) for i in range(greenlets)]

    def _work(self, index):
        for seq in range(1_000_000):  # bounded; stop() ends it long before
            if self._stop:
                return
            token, started = f"g{index}:{seq}", time.monotonic()
            try:
                with gevent.Timeout(self.hung_after):
                    with self.pool.client() as r:
                        wrote = r.set(f"load:{index}", token)
                        got, echoed = r.get(f"load:{index}"), r.echo(token)
                        where = f"{r.connection.host}:{r.connection.port}"
                if (wrote, got, echoed) != (True, token.encode(), token.encode()):
                    self.crossed.append((token, wrote, got, echoed))
                else:
                    self.successes.append((time.monotonic(), where))
            except gevent.Timeout:
                self.hung += 1
            except redis.RedisError as error:
                self.failures.append((time.monotonic(), error))
                gevent.sleep(0.02)
            self.longest = max(self.longest, time.monotonic() - started)
            gevent.sleep(0.005)

    def stop(self):
        self._stop = True
        gevent.joinall(self._greenlets, timeout=10)

    def recovered_at(self, since):
        """Time of the first success after the last failure that followed ``since`` (None: never recovered)."""
        failures = [t for t, _ in self.failures if t >= since]
        last = max(failures, default=since)
        return next((t for t, _ in self.successes if t > last), None)


def wait_for_new_master(topology, old, timeout):
    return wait_until(lambda: topology.master_address() != old and topology.master_address(), timeout,
                      what="sentinels report a new master")


def test_commands_go_to_the_master_the_sentinels_report(topology):
    """Connections reach the reported master; the URL form builds the same pool; repr names the master."""
    target = parse_redis_url(topology.url + "?max_size=3&name=s")
    pool = target.make_pool()
    try:
        r = redis.Redis(connection_pool=pool)
        assert r.set("k", "v") and r.get("k") == b"v"
        assert pool.master_address == topology.master_address()
        assert repr(pool).endswith("service='mymaster' master={}:{}/0>".format(*topology.master_address()))
        with pool.client() as pinned:
            assert pinned.execute_command("ROLE")[0] == b"master"
    finally:
        pool.close()


def test_manual_failover_moves_every_connection_to_the_new_master(topology):
    """After SENTINEL FAILOVER (old master alive, demoted) requests keep flowing, with no crossed reply,
    and within 2 s of the switch every request is served by the new master."""
    pool = SentinelRedisPool(topology.sentinel_addresses, topology.service_name, max_size=4, socket_timeout=1.0,
                             master_check_interval=0.5, name="manual")
    load = Load(pool)
    try:
        wait_until(lambda: len(load.successes) > 20, 10, what="load running")
        old = topology.master_address()
        with redis.Redis(port=topology.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", topology.service_name)
        new = wait_for_new_master(topology, old, 10)
        switched = time.monotonic()
        wait_until(lambda: any(t > switched + 2.0 for t, _ in load.successes), 10, what="load after the switch")
    finally:
        load.stop()
        pool.close()
    late = {where for t, where in load.successes if t > switched + 2.0}
    assert late == {"{}:{}".format(*new)}, late
    assert load.crossed == [] and load.hung == 0
    assert len(load.failures) <= pool.max_size, load.failures  # at most the connections caught mid-switch


@pytest.mark.timing
def test_killed_master_recovery_within_failover_time_plus_2s(topology):
    """Kill -9 the master under load: requests fail fast while there is no master, recover within 2 s of
    the sentinels reporting the new one, and no reply ever reaches the wrong request; nothing hangs."""
    pool = SentinelRedisPool(topology.sentinel_addresses, topology.service_name, max_size=6, timeout=1.0,
                             socket_timeout=1.0, socket_connect_timeout=0.5, name="killed")
    load = Load(pool, greenlets=12)
    try:
        wait_until(lambda: len(load.successes) > 20, 10, what="load running")
        old = topology.master_address()
        killed_at = time.monotonic()
        topology.kill_master()
        new = wait_for_new_master(topology, old, DOWN_AFTER_MS / 1000 + FAILOVER_TIMEOUT_MS / 1000 + 10)
        reported_at = time.monotonic()
        wait_until(lambda: load.recovered_at(killed_at), 10, what="recovery")
        gevent.sleep(0.5)
    finally:
        load.stop()
        pool.close()
    recovered_at = load.recovered_at(killed_at)
    print(f"failover: new master reported after {reported_at - killed_at:.2f}s, "
          f"pool recovered after {recovered_at - killed_at:.2f}s, {len(load.failures)} failed requests, "
          f"longest request {load.longest:.2f}s")
    assert recovered_at - reported_at <= 2.0
    assert load.crossed == [] and load.hung == 0
    assert load.longest < 3.0
    assert {where for t, where in load.successes if t > recovered_at} == {"{}:{}".format(*new)}


class StaleSentinel(Sentinel):
    """A Sentinel whose answer the test sets: lets a pool be pointed at a replica, as a stale view would."""

    answer = None
    asked = 0

    def discover_master(self, service_name):
        self.asked += 1
        return self.answer


def test_readonly_from_a_demoted_master_leads_to_rediscovery(redis_factory):
    """Connections to a server that answers READONLY: the first write fails with a ConnectionError, the
    sentinels are asked again at once, and every later request goes to the real master (no stream of failures)."""
    master = redis_factory("--shutdown-timeout", "0")  # stopped first: no waiting for its replica
    replica = redis_factory("--replicaof", "127.0.0.1", str(master.port))
    sentinel = StaleSentinel([])
    sentinel.answer = ("127.0.0.1", replica.port)
    pool = SentinelRedisPool(sentinel, "mymaster", max_size=4, master_check_interval=None, name="ro")
    try:
        held = [pool.getconn() for _ in range(4)]  # four idle connections to the replica
        for conn in held:
            pool.putconn(conn)
        sentinel.answer = ("127.0.0.1", master.port)
        r = redis.Redis(connection_pool=pool)
        with pytest.raises(redis.ConnectionError, match="no longer the master"):
            r.set("k", "v")
        assert pool.master_address == ("127.0.0.1", master.port)
        for i in range(20):
            assert r.set("k", i) and r.get("k") == str(i).encode()
        # the other replica connections were idle: closed when the master moved, not left for a checkout
        with redis.Redis.from_url(replica.url) as replica_admin:
            assert [c for c in replica_admin.client_list() if c["name"] == "greenpool:ro"] == []
        assert pool.get_stats()["pool_size"] == 1
    finally:
        pool.close()


def test_no_master_fails_fast(redis_factory):
    """While no sentinel reports a master, a checkout that must connect raises a ConnectionError at once."""
    sentinel = StaleSentinel([])
    sentinel.discover_master = lambda name: (_ for _ in ()).throw(redis.sentinel.MasterNotFoundError(name))
    pool = SentinelRedisPool(sentinel, "mymaster", name="none")
    try:
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(connection_pool=pool).ping()
        assert time.monotonic() - started < 0.5
    finally:
        pool.close()
