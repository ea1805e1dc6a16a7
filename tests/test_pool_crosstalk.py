"""Cross-talk torture (issue 2, behaviour 14): many greenlets, a pool of 8, commands cancelled at random points.

Every key's value is its own name, so a reply meant for another command is caught at once. About 10% of
the commands are cancelled: by a ``gevent.Timeout`` with a tiny random timeout (while queued for a
connection, while connecting, after sending and before the reply) or by ``kill()`` from a killer greenlet.
A connection given back in the middle of a command must never be lent again; a wrong value means it was.

CI runs ``TORTURE_COMMANDS`` (default 100,000) commands; ``--run-slow`` adds a run of 1,000,000 or more.
"""
import logging
import os
import random
import time
import traceback

import gevent
import pytest
import redis
from gevent.event import Event

from pool import RedisPool
from pool import stats as S

GREENLETS = 200
MAX_SIZE = 8
KEYS = [f"key:{i}" for i in range(1000)]
CANCEL_SHARE = 0.10  # of requests; half by gevent.Timeout, half by kill()
CI_COMMANDS = int(os.environ.get("TORTURE_COMMANDS", "100000"))
SLOW_COMMANDS = max(1_000_000, int(os.environ.get("TORTURE_COMMANDS_SLOW", "1000000")))


class Tally:
    """Shared counts; greenlets never switch while updating them.

    A request is one round trip: one command, or one pipeline of several commands (GETs).
    """

    def __init__(self, target):
        self.target = target
        self.attempted = self.ok = self.wrong = self.errors = 0  # commands
        self.requests = self.completed = 0  # round trips started, and finished (with or without an error)
        self.timeouts_armed = self.timeouts_fired = self.kills = 0
        self.samples = []  # first few wrong values / unexpected errors, for the failure message
        self.max_size_seen = 0

    @property
    def done(self):
        return self.attempted >= self.target

    @property
    def cancelled(self):
        """Commands started and never finished."""
        return self.attempted - self.ok - self.wrong - self.errors

    @property
    def cancelled_requests(self):
        return self.requests - self.completed

    def start(self, commands=1):
        self.requests += 1
        self.attempted += commands

    def check(self, key, value):
        if value == key:
            self.ok += 1
        else:
            self.wrong += 1
            if len(self.samples) < 10:
                self.samples.append(f"asked {key!r}, got {value!r}")

    def error(self, exc):
        self.errors += 1
        self.completed += 1
        if len(self.samples) < 10:
            self.samples.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class TargetablePool(RedisPool):
    """A RedisPool that tells the killer which greenlets hold a connection right now, so that kills can aim
    at the middle of commands (sent, reply not yet read) and not only at greenlets queued for a connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holders = {}  # connection -> greenlet holding it

    def getconn(self, timeout=None):
        conn = super().getconn(timeout)
        self.holders[conn] = gevent.getcurrent()
        return conn

    def putconn(self, resource):
        self.holders.pop(resource, None)
        super().putconn(resource)

    def discard(self, resource, reason="error"):
        self.holders.pop(resource, None)
        super().discard(resource, reason)


class Torture:
    """GREENLETS workers hammering one pool, a killer greenlet, and a monitor of the pool's size."""

    def __init__(self, p, tally, work):
        self.p = p
        self.r = redis.Redis(connection_pool=p)
        self.tally = tally
        self.work = work  # work(torture, rng): one unit of commands
        self.workers = [None] * GREENLETS
        self.stop = Event()

    def run(self, timeout):
        runners = [gevent.spawn(self._slot, i) for i in range(GREENLETS)]
        killer = gevent.spawn(self._killer)
        monitor = gevent.spawn(self._monitor)
        try:
            finished = gevent.joinall(runners, timeout=timeout)
            assert len(finished) == GREENLETS, f"still running after {timeout}s ({self.tally.attempted} commands)"
        finally:
            self.stop.set()
            gevent.killall(runners + [w for w in self.workers if w is not None])
            killer.join(timeout=1.0)
            monitor.join(timeout=1.0)

    def _slot(self, i):
        """Keep one worker alive in slot ``i``: a killed worker is replaced by a fresh greenlet."""
        while not self.tally.done:
            self.workers[i] = gevent.spawn(self._worker)
            self.workers[i].join()

    def _worker(self):
        rng = random.Random()
        tally = self.tally
        while not tally.done:
            try:
                self.work(self, rng)
            except gevent.Timeout:  # ours: counted as cancelled (attempted, not completed)
                tally.timeouts_fired += 1
            except Exception as exc:  # noqa: BLE001 - any other failure is a finding
                tally.error(exc)

    def _killer(self):
        """Kill workers until about CANCEL_SHARE / 2 of the commands were hit by a kill; most kills aim at
        greenlets holding a connection (mid-command), the rest at any worker (most are queued)."""
        rng = random.Random()
        tally = self.tally
        while not self.stop.is_set() and not tally.done:
            for _ in range(min(5, int(tally.requests * CANCEL_SHARE / 2) - tally.kills)):
                holders = list(self.p.holders.values()) if rng.random() < 0.9 else None
                worker = rng.choice(holders) if holders else self.workers[rng.randrange(GREENLETS)]
                if worker is not None and not worker.dead:
                    worker.kill(block=False)
                    tally.kills += 1
            gevent.sleep(0.001)

    def _monitor(self):
        while not self.stop.wait(0.002):
            self.tally.max_size_seen = max(self.tally.max_size_seen, self.p.get_stats()[S.POOL_SIZE])


def maybe_cancelled(rng, tally, longest, call, *args):
    """``call(*args)``, for a random share of the requests under a gevent.Timeout of 0 to ``longest`` seconds,
    so that about CANCEL_SHARE / 2 of all requests are cancelled this way (not every armed timeout fires)."""
    behind = tally.timeouts_fired < tally.requests * CANCEL_SHARE / 2
    if rng.random() >= (0.2 if behind else 0.01):
        return call(*args)
    tally.timeouts_armed += 1
    with gevent.Timeout(rng.uniform(0.0, longest)):
        return call(*args)


def get_one(rng, tally, client, longest):
    key = rng.choice(KEYS)
    tally.start()
    tally.check(key, maybe_cancelled(rng, tally, longest, client.get, key))
    tally.completed += 1


class RawClient:
    """GET on a raw pooled connection, with a greenlet switch between sending and reading, as application
    code may have. A cancellation there bypasses redis-py's own cleanup (its read_response disconnects on
    any BaseException): only the pool's reply accounting stands between the next borrower and this reply."""

    def __init__(self, conn):
        self.conn = conn

    def get(self, key):
        self.conn.send_command("GET", key)
        gevent.sleep(0)
        return self.conn.read_response()


def single_commands(torture, rng):
    """One GET through redis.Redis(connection_pool=p), or one to four GETs on a pinned p.client() or on a
    raw p.connection()."""
    tally = torture.tally
    path = rng.random()
    if path < 0.4:
        get_one(rng, tally, torture.r, 0.003)  # the timeout mostly fires while queued for a connection
    elif path < 0.8:
        with torture.p.client() as c:
            for _ in range(rng.randint(1, 4)):
                get_one(rng, tally, c, 0.0003)  # armed after the checkout: before, during or after the round trip
    else:
        with torture.p.connection() as conn:
            raw = RawClient(conn)
            for _ in range(rng.randint(1, 4)):
                get_one(rng, tally, raw, 0.0003)


def pipelines(torture, rng):
    """One pipeline of 2-6 GETs (plain or MULTI/EXEC) through redis.Redis(connection_pool=p), or one to three
    on a pinned p.client()."""
    tally = torture.tally

    def run(client, longest):
        keys = [rng.choice(KEYS) for _ in range(rng.randint(2, 6))]
        pipe = client.pipeline(transaction=rng.random() < 0.5)
        for key in keys:
            pipe.get(key)
        tally.start(len(keys))
        values = maybe_cancelled(rng, tally, longest, pipe.execute)
        if len(values) != len(keys):
            tally.wrong += len(keys)
            tally.samples.append(f"asked {keys!r}, got {values!r}")
        else:
            for key, value in zip(keys, values, strict=False):
                tally.check(key, value)
        tally.completed += 1

    if rng.random() < 0.5:
        run(torture.r, 0.003)
    else:
        with torture.p.client() as c:
            for _ in range(rng.randint(1, 3)):
                run(c, 0.0005)


@pytest.fixture
def keyed_server(redis_server, admin):
    """The test server with every key holding its own name."""
    admin.mset({key: key for key in KEYS})
    return redis_server


def torture(redis_url, admin, capsys, work, commands, label):
    """Run ``work`` units until ``commands`` were attempted; print the summary line; check the invariants."""
    pool_logger = logging.getLogger("pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.ERROR)  # thousands of "discarding a connection (cancelled)" warnings
    p = TargetablePool.from_url(redis_url, name="torture", max_size=MAX_SIZE, timeout=30.0, decode_responses=True)
    tally = Tally(commands)
    t = Torture(p, tally, work)
    try:
        started = time.monotonic()
        t.run(timeout=max(600.0, commands / 500))
        elapsed = time.monotonic() - started
        stats = p.get_stats()
        line = (f"{label}: {tally.attempted} commands ({tally.requests} requests) in {elapsed:.1f}s "
                f"({tally.attempted / elapsed:,.0f} commands/s) by {GREENLETS} greenlets on {MAX_SIZE} connections: "
                f"cancelled={tally.cancelled} commands, {tally.cancelled_requests} requests "
                f"({tally.cancelled_requests / tally.requests:.1%}; kills={tally.kills}, "
                f"timeouts fired={tally.timeouts_fired} of {tally.timeouts_armed}), "
                f"wrong={tally.wrong}, errors={tally.errors}; "
                f"pool: discarded_cancelled={stats[S.DISCARDED_CANCELLED]}, "
                f"requests_cancelled={stats[S.REQUESTS_CANCELLED]}, connections_num={stats[S.CONNECTIONS_NUM]}, "
                f"max size seen={tally.max_size_seen}")
        with capsys.disabled():
            print("\n" + line)

        assert tally.wrong == 0, tally.samples
        assert tally.errors == 0, tally.samples[0] if tally.samples else None
        assert tally.attempted >= commands
        # Cancellations really happened, and many of them in the middle of a command, connection in hand.
        assert 0.05 <= tally.cancelled_requests / tally.requests <= 0.2, line
        assert stats[S.DISCARDED_CANCELLED] >= tally.requests * 0.005, line
        # Bounded, and nothing lost: every slot is back, idle, and the server agrees.
        assert tally.max_size_seen <= MAX_SIZE
        assert (stats[S.POOL_IN_USE], stats[S.REQUESTS_WAITING]) == (0, 0), stats
        assert stats[S.POOL_SIZE] == stats[S.POOL_AVAILABLE] <= MAX_SIZE
        named = [c for c in admin.client_list() if c["name"] == "greenpool:torture"]
        assert len(named) == stats[S.POOL_SIZE]
        # And the pool still serves correctly afterwards.
        assert [t.r.get(key) for key in KEYS[:50]] == KEYS[:50]
    finally:
        p.close(timeout=1.0)
        pool_logger.setLevel(level)


def test_no_crosstalk_under_random_cancellation(keyed_server, redis_url, admin, capsys):
    """>= 100,000 GETs by 200 greenlets through 8 connections (redis.Redis, pinned clients, raw connections),
    ~10% cancelled by tiny gevent.Timeouts or kill(): every completed GET returns its own key's value, and
    no slot is lost."""
    torture(redis_url, admin, capsys, single_commands, CI_COMMANDS, "crosstalk")


def test_no_crosstalk_in_pipelines_under_random_cancellation(keyed_server, redis_url, admin, capsys):
    """Pipelines of several GETs (plain and MULTI/EXEC), cancelled mid-flight: each completed pipeline returns
    exactly its own keys' values, in order."""
    torture(redis_url, admin, capsys, pipelines, CI_COMMANDS, "crosstalk-pipelines")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_no_crosstalk_million_commands(keyed_server, redis_url, admin, capsys):
    """The same invariant over 1,000,000+ commands (``--run-slow``; TORTURE_COMMANDS_SLOW for more)."""
    torture(redis_url, admin, capsys, single_commands, SLOW_COMMANDS, "crosstalk-slow")
