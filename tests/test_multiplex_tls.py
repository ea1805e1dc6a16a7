"""The multiplexed path over TLS (``rediss://``, issue 12): a reader and a writer greenlet drive the gevent
SSL socket instead of the hub's io watchers; replies, cancellation and faults behave as on plain TCP."""
import subprocess

import gevent
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from test_multiplex_cancel import SLOW_SCRIPT

from pool import PooledRedis, RedisPool
from pool import stats as S
from pool.server import free_port
from pool.testing import FaultProxy


@pytest.fixture
def tls_server(redis_factory, tmp_path):
    """A redis-server with a TLS port (self-signed certificate) next to its plain one; returns the TLS URL."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"openssl cannot make a test certificate: {error}")
    port = free_port()
    server = redis_factory("--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key,
                           "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
    return server, f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"


def test_tls_shared_connection_serves_concurrent_callers_their_own_replies(tls_server):
    """50 greenlets on one shared TLS connection: every reply is its caller's own, large values included,
    and their commands were coalesced."""
    _, url = tls_server
    p = RedisPool.from_url(url, max_size=3, multiplex=1, name="tls")
    try:
        r = PooledRedis(connection_pool=p)
        r.set("big", b"z" * 2_000_000)

        def work(i):
            for n in range(100):
                assert r.set(f"k{i}", f"{i}:{n}") and r.get(f"k{i}") == f"{i}:{n}".encode()
            assert r.get("big") == b"z" * 2_000_000

        gevent.joinall([gevent.spawn(work, i) for i in range(50)], timeout=60, raise_error=True)
        stats = p.get_stats()
        assert stats[S.MUX_CONNECTIONS_NUM] == 1 and p._mux._alive[0]._tls
        assert stats[S.MUX_COMMANDS] / stats[S.MUX_BATCHES] > 2
    finally:
        p.close()


def test_tls_cancellation_and_a_killed_connection(tls_server):
    """Over TLS too: a caller timed out after the write keeps the connection (its reply is dropped); a
    CLIENT KILL fails the callers waiting with ConnectionError and a new shared connection takes over."""
    server, url = tls_server
    tls_port = int(url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy("127.0.0.1", tls_port) as proxy:
        p = RedisPool.from_url(url.replace(f":{tls_port}/", f":{proxy.port}/"), max_size=3, multiplex=1,
                               name="tls2")
        try:
            r = PooledRedis(connection_pool=p)
            first = r.client_id()
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.05):
                    r.eval(SLOW_SCRIPT, 0, 0.2, "late")
            assert r.echo("mine") == b"mine"
            assert p.get_stats()[S.MUX_REPLIES_DROPPED] == 1 and r.client_id() == first
            proxy.delay(0.2)  # the commands below are still on their way when the server closes the connection
            waiters = [gevent.spawn(r.echo, f"w{i}") for i in range(5)]
            gevent.sleep(0.05)
            redis.Redis(port=server.port).client_kill_filter(_id=first)
            gevent.joinall(waiters, timeout=5)
            assert all(isinstance(g.exception, RedisConnectionError) for g in waiters), [g.value for g in waiters]
            proxy.passthrough()
            assert r.echo("after") == b"after" and r.client_id() != first
        finally:
            p.close()
