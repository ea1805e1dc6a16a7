"""The service under real gunicorn processes (gevent workers) against a real redis-server on a free port:
routes over HTTP and curl, signals and restarts under load, --preload, settings errors, secrets in logs.
"""
import shutil
import signal
import subprocess
import time

import gevent
import pytest
from conftest import service_runner

from pool.testing import Dataset, Load, request, service_clients, wait_until


def seed(admin, count=40, prefix="greenpool:"):
    """``count`` hashes whose content names their key, so a crossed reply cannot go unnoticed."""
    expected = {}
    for i in range(count):
        name = f"h{i}"
        expected[name] = {"name": name, "n": str(i), "pad": "x" * (i % 7)}
        admin.hset(prefix + name, mapping=expected[name])
    return expected


@pytest.fixture
def service(gunicorn_factory, redis_url):
    return gunicorn_factory(env={"REDIS_URL": redis_url, "API_TOKEN": "t0ken"})


def test_routes_over_http(service, admin):
    """Each route answers over real HTTP through gunicorn's gevent worker."""
    auth = {"Authorization": "Bearer t0ken"}
    assert service.request("GET", "/healthz").json() == {"status": "ok"}
    assert service.request("GET", "/readyz").json() == {"status": "ready"}
    stats = service.request("GET", "/stats").json()
    assert stats["pid"] in service.worker_pids() and stats["pool"]["pool_max"] == 10
    admin.hset("key", "seed", "1")
    assert service.request("GET", "/").json() == {"seed": "1"}
    reply = service.request("PUT", "/hashes/user%3A1", {"name": "Ada"}, auth)
    assert (reply.status, reply.json()) == (201, {"name": "Ada"})
    assert service.request("PATCH", "/hashes/user:1", {"lang": "en"}, auth).json() == {"name": "Ada", "lang": "en"}
    assert service.request("GET", "/hashes/user:1").json() == {"name": "Ada", "lang": "en"}
    assert admin.hgetall("greenpool:user:1") == {"name": "Ada", "lang": "en"}
    assert service.request("DELETE", "/hashes/user:1", headers=auth).status == 204
    assert service.request("GET", "/hashes/user:1").status == 404
    head = service.request("HEAD", "/healthz")
    assert (head.status, head.body) == (200, b"")


def test_errors_over_http(service, admin):
    """The refusals arrive over HTTP as JSON with their status codes, and Redis stays unchanged."""
    auth = {"Authorization": "Bearer t0ken"}
    admin.set("greenpool:s", "string")
    before = {k: admin.dump(k) for k in admin.keys("*")}
    cases = [
        (("PUT", "/hashes/k", {"a": "1"}), 401),
        (("PUT", "/hashes/k", b"{", {**auth, "Content-Type": "application/json"}), 400),
        (("PUT", "/hashes/k", b'{"a":"1"}', {**auth, "Content-Type": "text/plain"}), 415),
        (("PUT", "/hashes/k", b"[" + b" " * 70000 + b"]", {**auth, "Content-Type": "application/json"}), 413),
        (("PUT", "/hashes/s", {"a": "1"}, auth), 409),
        (("GET", "/hashes/s"), 409),
        (("POST", "/hashes/k", {"a": "1"}, auth), 405),
        (("GET", "/nowhere"), 404),
        (("GET", "/hashes/%00"), 400),
    ]
    for args, status in cases:
        reply = service.request(*args)
        assert reply.status == status, (args[:2], reply)
        assert set(reply.json()) == {"error", "detail"}
    assert {k: admin.dump(k) for k in admin.keys("*")} == before
    assert service.request("POST", "/hashes/k").headers["Allow"] == "GET, HEAD, PUT, PATCH, DELETE"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(service):
    """A few routes with curl, as the README shows them."""
    base = f"http://127.0.0.1:{service.port}"

    def curl(*args):
        return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=10, check=True).stdout

    assert curl("-X", "PUT", "-H", "Authorization: Bearer t0ken", "-H", "Content-Type: application/json",
                "-d", '{"name": "Ada", "lang": "en"}', f"{base}/hashes/user:1") == '{"name":"Ada","lang":"en"}'
    assert curl(f"{base}/hashes/user:1") == '{"name":"Ada","lang":"en"}'
    out = curl("-i", "-X", "POST", f"{base}/hashes/user:1")
    assert out.startswith("HTTP/1.1 405") and "Allow: GET, HEAD, PUT, PATCH, DELETE" in out
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "-H", "Authorization: Bearer t0ken",
                f"{base}/hashes/user:1") == "204"


def test_sigterm_under_load_fails_nothing_and_leaves_no_connections(gunicorn_factory, redis_url, admin):
    """SIGTERM to the master under load: every accepted request is answered correctly, the master exits 0,
    and afterwards the Redis server has no connection from the service left (worker_exit closed the pools).
    """
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MAX_SIZE": 4}, workers=2)
    load = Load(service.port, Dataset.of(expected), clients=16, max_requests=20000, max_seconds=30).start()
    load.wait_ok(400)
    assert service_clients(admin), "the service holds connections under load"
    load.stopping = True
    service.send(signal.SIGTERM)
    assert service.wait_exit(20) == 0
    load.stop()
    assert load.failed == []
    assert load.ok >= 400
    wait_until(lambda: not service_clients(admin), 5, interval=0.02, what="no service connections on the server")
    log = service.log()
    assert "closed its Redis pool" in log and "Traceback" not in log


def _sample_connections(admin, service, samples, stop, seen_workers=None):
    """Every 20 ms: (service connections on the server, live workers just before, live workers just after)."""
    while not stop.is_set():
        before = service.worker_pids()
        connections = len(service_clients(admin))
        after = service.worker_pids()
        samples.append((connections, len(before), len(after)))
        if seen_workers is not None:
            seen_workers.update(before, after)
        gevent.sleep(0.02)


@pytest.mark.timing
def test_hup_under_load(gunicorn_factory, redis_url, admin):
    """HUP under load with 2 workers: zero failed and zero refused requests, all workers replaced, and the
    server's connections from the service stay within live workers x POOL_MAX_SIZE throughout.
    """
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MAX_SIZE": 3, "GRACEFUL_TIMEOUT": 10},
                               workers=2)
    old = service.wait_workers(2)
    samples, stop = [], gevent.event.Event()
    sampler = gevent.spawn(_sample_connections, admin, service, samples, stop)
    load = Load(service.port, Dataset.of(expected), clients=16, max_seconds=40).start()
    load.wait_ok(300)
    service.send(signal.SIGHUP)
    new = service.wait_workers(2, timeout=20, exclude=old)
    served = load.ok
    load.wait_ok(served + 300)
    load.stop()
    stop.set()
    sampler.get(timeout=5)
    assert load.failed == [] and load.refused == 0
    assert not new & old
    peak = max(conns for conns, _, _ in samples)
    over = [(c, w1, w2) for c, w1, w2 in samples if c > max(w1, w2) * 3]
    assert over == [], f"connections above live workers x POOL_MAX_SIZE: {over[:5]}"
    assert 0 < peak <= 4 * 3
    assert len(service_clients(admin)) <= 2 * 3
    print(f"HUP: {load.ok} ok, peak {peak} service connections, {len(samples)} samples")


def test_max_requests_restarts_under_load(gunicorn_factory, redis_url, admin):
    """max_requests restarts workers again and again under load: zero failed or refused requests, and
    connections stay within live workers x POOL_MAX_SIZE.
    """
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MAX_SIZE": 3}, workers=2,
                               args=["--max-requests", "100", "--max-requests-jitter", "20"])
    first = service.wait_workers(2)
    seen = set(first)
    samples, stop = [], gevent.event.Event()
    sampler = gevent.spawn(_sample_connections, admin, service, samples, stop, seen)
    load = Load(service.port, Dataset.of(expected), clients=12, max_requests=50000, max_seconds=40).start()
    wait_until(lambda: len(seen) >= 6 or load.failed, 30, interval=0.02, what="6 workers under max_requests")
    load.stop()
    stop.set()
    sampler.get(timeout=5)
    assert load.failed == [] and load.refused == 0
    assert len(seen) >= 6, f"only {len(seen)} workers seen: max_requests did not restart them\n{service.log()}"
    over = [(c, w1, w2) for c, w1, w2 in samples if c > max(w1, w2) * 3]
    assert over == [], f"connections above live workers x POOL_MAX_SIZE: {over[:5]}"
    print(f"max_requests: {load.ok} ok, {len(seen)} workers, peak {max(c for c, _, _ in samples)} connections")


def _request_or_error(*args):
    try:
        return request(*args, timeout=30)
    except OSError as exc:  # the quick shutdown cut it off: expected
        return exc


def _stuck(service, multiplex):
    """Requests of the (single) worker waiting on Redis: commands sent on its shared connections (counted from
    the warm-up request on), or its connections borrowed or being opened (POOL_MULTIPLEX=0)."""
    pool = service.request("GET", "/stats").json()["pool"]
    return pool["mux_commands"] - 1 if multiplex else pool["pool_size"] - pool["pool_available"]


@pytest.mark.timing
@pytest.mark.parametrize("sig, multiplex", [(signal.SIGQUIT, 2), (signal.SIGINT, 0)])
def test_quick_shutdown_does_not_hang_on_stuck_requests(gunicorn_factory, redis_server, admin, sig, multiplex):
    """SIGQUIT/SIGINT while requests hang on a frozen Redis (on a shared connection, or each on its own): the
    worker gives the pool POOL_CLOSE_TIMEOUT, then exits; the master is gone within seconds (not REQUEST_TIMEOUT,
    not GRACEFUL_TIMEOUT).
    """
    admin.hset("greenpool:k", "v", "1")
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "POOL_CLOSE_TIMEOUT": 1, "REQUEST_TIMEOUT": 60,
                                    "GRACEFUL_TIMEOUT": 30, "POOL_MAX_SIZE": 4, "POOL_MULTIPLEX": multiplex})
    assert service.request("GET", "/hashes/k").status == 200  # warm-up: a connection is open
    redis_server.pause()
    try:
        stuck = [gevent.spawn(_request_or_error, service.port, "GET", "/hashes/k") for _ in range(3)]
        wait_until(lambda: _stuck(service, multiplex) >= 3, 10, interval=0.02, what="requests stuck on Redis")
        started = time.monotonic()
        service.send(sig)
        assert service.wait_exit(15) == 0
        took = time.monotonic() - started
    finally:
        redis_server.resume()
    gevent.joinall(stuck, timeout=5)
    assert all(g.dead for g in stuck)
    assert took < 5, f"exit took {took:.1f}s"
    print(f"{signal.Signals(sig).name}: master gone {took:.2f}s after the signal")


def test_preload_four_workers_zero_crossed_replies(gunicorn_factory, redis_url, admin):
    """--preload imports the app in the master; pools are still per worker: zero crossed replies."""
    expected = seed(admin, count=64)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MAX_SIZE": 4}, workers=4, args=["--preload"])
    service.wait_workers(4)
    load = Load(service.port, Dataset.of(expected), clients=32, max_requests=4000, max_seconds=60).start()
    load.wait_ok(4000, timeout=60)
    load.stop()
    assert load.failed == []
    names = {c["name"] for c in service_clients(admin)}
    assert len(names) >= 2, f"connections from {names}: one pool shared?"
    assert all(int(n.rpartition("-")[2]) in service.worker_pids() for n in names), "a connection from the master"
    print(f"preload: {load.ok} replies, 0 crossed, pools in {len(names)} workers")


def test_invalid_setting_stops_startup(tmp_path, redis_url):
    """An invalid value stops gunicorn at start-up with a message naming the variable."""
    for env, needle in [({"POOL_MAX_SIZE": "lots"}, "POOL_MAX_SIZE must be an integer"),
                        ({"KEEPALIVE": "40", "GRACEFUL_TIMEOUT": "30"}, "KEEPALIVE must be <= 29"),
                        ({"POOL_MULTIPLEX": "4", "POOL_MAX_SIZE": "4"}, r"POOL_MULTIPLEX must be below POOL_MAX_SIZE")]:
        service = service_runner(tmp_path, {"REDIS_URL": redis_url, **env})
        with pytest.raises(RuntimeError, match=needle):
            service.start(timeout=20)
        assert service.process.returncode != 0


def test_password_never_logged(gunicorn_factory, redis_server, admin):
    """With a password in REDIS_URL the service works and the password appears in no log line."""
    admin.config_set("requirepass", "hunter2-secret")
    url = f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0"
    service = gunicorn_factory(env={"REDIS_URL": url})
    assert service.request("PUT", "/hashes/p", {"a": "1"}).status == 201
    service.stop()
    log = service.log()
    assert "Using Redis at redis://:***@127.0.0.1" in log
    assert "hunter2-secret" not in log
