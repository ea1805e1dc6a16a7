"""Cross-talk torture on the multiplexed path (issue 12): 200 greenlets share 2 connections, ~10% of requests
are cancelled at random points, and every reply must be the one its caller asked for.

Every key's value is its own name (large keys: their name then padding, over 1 MB), so a reply meant for
another command shows at once. The mix: GETs through ``PooledRedis`` (the direct shared path),
``redis.Redis`` (the per-call handle) and ``p.execute()`` (raw); error replies (LPUSH on a string:
WRONGTYPE, which must reach its own caller only); large replies; scripts (EVALSHA of a script the server
has not seen: NOSCRIPT, SCRIPT LOAD, EVALSHA again; and EVAL); non-transactional pipelines (one batch on a
shared connection) and MULTI/EXEC pipelines (exclusive). Cancellation: ``gevent.Timeout`` of 0 to 1 ms
around a request, and ``kill()`` from a killer greenlet aimed mostly at greenlets waiting for a shared reply.

CI runs ``TORTURE_COMMANDS`` (default 100,000) commands; ``--run-slow`` adds ``TORTURE_COMMANDS_SLOW``
(at least 1,000,000).
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
from redis.exceptions import ResponseError

from pool import PooledRedis, RedisPool
from pool import stats as S

GREENLETS = 200
SHARED = 2
KEYS = [f"key:{i}" for i in range(1000)]
BIG_KEYS = [f"big:{i}" for i in range(4)]
BIG_SIZE = 1_100_000
CANCEL_SHARE = 0.10
CI_COMMANDS = int(os.environ.get("TORTURE_COMMANDS", "100000"))
SLOW_COMMANDS = max(1_000_000, int(os.environ.get("TORTURE_COMMANDS_SLOW", "1000000")))
ECHO_SCRIPT = "return redis.call('GET', KEYS[1])"


def big_value(key):
    return key.encode() + b"." * (BIG_SIZE - len(key))


class Tally:
    """Shared counts (greenlets never switch while updating them). A request is one round trip."""

    def __init__(self, target):
        self.target = target
        self.attempted = self.ok = self.wrong = self.errors = 0
        self.requests = self.completed = 0
        self.timeouts_armed = self.timeouts_fired = self.kills = 0
        self.error_replies = self.big = self.scripts = self.pipelines = 0
        self.samples = []

    @property
    def done(self):
        return self.attempted >= self.target

    @property
    def cancelled_requests(self):
        return self.requests - self.completed

    def start(self, commands=1):
        self.requests += 1
        self.attempted += commands

    def check(self, want, got):
        if got == want:
            self.ok += 1
        else:
            self.wrong += 1
            if len(self.samples) < 10:
                self.samples.append(f"wanted {want!r:.80}, got {got!r:.80}")

    def error(self, exc):
        self.errors += 1
        self.completed += 1
        if len(self.samples) < 10:
            self.samples.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class Torture:
    """GREENLETS workers on one multiplexed pool, a killer, and the set of greenlets waiting on a reply."""

    def __init__(self, p, tally):
        self.p = p
        self.fast = PooledRedis(connection_pool=p)
        self.plain = redis.Redis(connection_pool=p)
        self.script = self.fast.register_script(ECHO_SCRIPT)
        self.tally = tally
        self.busy = set()  # greenlets inside a request right now: the killer's main targets
        self.workers = [None] * GREENLETS
        self.stop = Event()

    def run(self, timeout):
        slots = [gevent.spawn(self._slot, i) for i in range(GREENLETS)]
        killer = gevent.spawn(self._killer)
        try:
            finished = gevent.joinall(slots, timeout=timeout)
            assert len(finished) == GREENLETS, f"still running after {timeout}s ({self.tally.attempted} commands)"
        finally:
            self.stop.set()
            gevent.killall(slots + [w for w in self.workers if w is not None])
            killer.join(timeout=1.0)

    def _slot(self, i):
        while not self.tally.done:
            self.workers[i] = gevent.spawn(self._worker)
            self.workers[i].join()

    def _worker(self):
        rng = random.Random()
        tally = self.tally
        me = gevent.getcurrent()
        while not tally.done:
            self.busy.add(me)
            try:
                self._one_request(rng)
            except gevent.Timeout:
                tally.timeouts_fired += 1
            except Exception as exc:  # noqa: BLE001 - any other failure is a finding
                tally.error(exc)
            finally:
                self.busy.discard(me)

    def _killer(self):
        rng = random.Random()
        tally = self.tally
        while not self.stop.is_set() and not tally.done:
            for _ in range(min(5, int(tally.requests * CANCEL_SHARE / 2) - tally.kills)):
                busy = list(self.busy) if rng.random() < 0.9 else None
                victim = rng.choice(busy) if busy else self.workers[rng.randrange(GREENLETS)]
                if victim is not None and not victim.dead:
                    victim.kill(block=False)
                    tally.kills += 1
            gevent.sleep(0.001)

    def _maybe_cancelled(self, rng, call, *args):
        tally = self.tally
        behind = tally.timeouts_fired < tally.requests * CANCEL_SHARE / 2
        if rng.random() >= (0.2 if behind else 0.01):
            return call(*args)
        tally.timeouts_armed += 1
        with gevent.Timeout(rng.uniform(0.0, 0.001)):
            return call(*args)

    def _one_request(self, rng):
        tally = self.tally
        kind = rng.random()
        if kind < 0.60:  # one GET by one of the three shared paths
            key = rng.choice(KEYS)
            path = rng.random()
            if path < 0.4:
                call = self.fast.get
            elif path < 0.7:
                call = self.plain.get
            else:
                def call(k):
                    return self.p.execute("GET", k)
            tally.start()
            tally.check(key.encode(), self._maybe_cancelled(rng, call, key))
        elif kind < 0.70:  # an error reply that is its caller's own
            tally.start()
            try:
                self._maybe_cancelled(rng, self.fast.lpush, rng.choice(KEYS), "x")
            except ResponseError as error:
                tally.error_replies += 1
                tally.check(True, str(error).startswith("WRONGTYPE"))
            else:
                tally.check("WRONGTYPE", "a reply")
        elif kind < 0.802:  # a script: EVALSHA (NOSCRIPT for a script new to the server, then loaded), EVAL
            key = rng.choice(KEYS)
            tally.start(2)
            script = self.script
            if rng.random() < 0.1:
                script = self.fast.register_script(f"{ECHO_SCRIPT} -- {rng.random()}")
            tally.scripts += 1
            tally.check(key.encode(), self._maybe_cancelled(rng, script, [key]))
            tally.check(key.encode(), self._maybe_cancelled(rng, self.fast.eval, ECHO_SCRIPT, 1, key))
        elif kind < 0.803:  # a large reply, over 1 MB
            key = rng.choice(BIG_KEYS)
            tally.start()
            tally.big += 1
            tally.check(big_value(key), self._maybe_cancelled(rng, self.fast.get, key))
        else:  # a pipeline: plain (one shared batch) or MULTI/EXEC (exclusive)
            keys = [rng.choice(KEYS) for _ in range(rng.randint(2, 6))]
            pipe = self.plain.pipeline(transaction=rng.random() < 0.2)
            for key in keys:
                pipe.get(key)
            tally.start(len(keys))
            tally.pipelines += 1
            values = self._maybe_cancelled(rng, pipe.execute)
            if len(values) != len(keys):
                tally.wrong += len(keys)
                tally.samples.append(f"asked {keys!r}, got {values!r}")
            else:
                for key, value in zip(keys, values, strict=False):
                    tally.check(key.encode(), value)
        tally.completed += 1


@pytest.fixture
def keyed_server(redis_server, admin):
    admin.mset({key: key for key in KEYS})
    for key in BIG_KEYS:
        redis.Redis.from_url(redis_server.url).set(key, big_value(key))
    return redis_server


def torture(redis_url, admin, capsys, commands, label):
    pool_logger = logging.getLogger("pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.ERROR)  # exclusive connections cancelled mid-transaction are discarded
    p = RedisPool.from_url(redis_url, name="mux-torture", max_size=SHARED + 4, multiplex=SHARED, timeout=30.0)
    tally = Tally(commands)
    t = Torture(p, tally)
    try:
        started = time.monotonic()
        t.run(timeout=max(600.0, commands / 500))
        elapsed = time.monotonic() - started
        stats = p.get_stats()
        batches = max(1, stats[S.MUX_BATCHES])
        line = (f"{label}: {tally.attempted} commands ({tally.requests} requests) in {elapsed:.1f}s "
                f"({tally.attempted / elapsed:,.0f} commands/s) by {GREENLETS} greenlets on {SHARED} shared "
                f"connections: cancelled={tally.cancelled_requests} requests "
                f"({tally.cancelled_requests / tally.requests:.1%}; kills={tally.kills}, timeouts fired="
                f"{tally.timeouts_fired} of {tally.timeouts_armed}), wrong={tally.wrong}, errors={tally.errors}; "
                f"error replies={tally.error_replies}, large replies={tally.big}, scripts={tally.scripts}, "
                f"pipelines={tally.pipelines}; mux: commands={stats[S.MUX_COMMANDS]}, "
                f"mean batch={stats[S.MUX_COMMANDS] / batches:.1f}, dropped={stats[S.MUX_REPLIES_DROPPED]}, "
                f"cancelled unsent={stats[S.MUX_CANCELLED_UNSENT]}, shared opened="
                f"{stats[S.MUX_CONNECTIONS_NUM]}, exclusive checkouts={stats[S.EXCLUSIVE_CHECKOUTS]}")
        with capsys.disabled():
            print("\n" + line)
        assert tally.wrong == 0, tally.samples
        assert tally.errors == 0, tally.samples[0] if tally.samples else None
        assert tally.attempted >= commands
        assert 0.05 <= tally.cancelled_requests / tally.requests <= 0.2, line
        assert stats[S.MUX_REPLIES_DROPPED] >= tally.requests * 0.005, line  # cancelled mid-flight, often
        assert tally.error_replies and tally.big and tally.scripts and tally.pipelines, line
        # Cancellations never cost a shared connection: the same two served the whole run.
        assert stats[S.MUX_CONNECTIONS_NUM] == SHARED, line
        assert stats[S.DISCARDED_ERROR] == 0 and stats[S.CONNECTIONS_LOST] == 0, line
        assert stats[S.REQUESTS_WAITING] == 0 and p._mux.in_flight() == 0, stats
        named = [c for c in admin.client_list() if c["name"] == "greenpool:mux-torture"]
        assert len(named) == stats[S.POOL_SIZE] <= p.max_size
        assert [t.fast.get(key) for key in KEYS[:50]] == [key.encode() for key in KEYS[:50]]
    finally:
        p.close(timeout=1.0)
        pool_logger.setLevel(level)


def test_no_crosstalk_on_shared_connections_under_random_cancellation(keyed_server, redis_url, admin, capsys):
    """>= 100,000 commands by 200 greenlets on 2 shared connections, ~10% of requests cancelled at random
    points, mixed with error replies, > 1 MB replies, NOSCRIPT/EVAL and pipelines: zero wrong replies, and
    the two shared connections survive every cancellation."""
    torture(redis_url, admin, capsys, CI_COMMANDS, "mux-crosstalk")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_no_crosstalk_on_shared_connections_million_commands(keyed_server, redis_url, admin, capsys):
    """The same invariant over 1,000,000+ commands (``--run-slow``; TORTURE_COMMANDS_SLOW for more)."""
    torture(redis_url, admin, capsys, SLOW_COMMANDS, "mux-crosstalk-slow")
