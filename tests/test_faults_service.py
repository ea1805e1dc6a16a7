"""Issue 4, service-level fault scenarios 6-9, 15, 18 and 22-25, and an HTTP fuzz run: the real service under
``gunicorn -c gunicorn.conf.py`` (gevent worker), spoken to over HTTP, with Redis faults from ``pool.testing``.

Every hash the tests read holds its own name (``{"name": name, ...}``), so a reply that reached the wrong request
shows as a wrong body: each scenario counts such crossed replies and asserts zero. Each scenario also records one
row of figures (requests, succeeded, expected errors, unexpected errors, crossed, recovery time), printed as a
table at the end of the module (``-s`` shows it). Lifecycle scenarios 16, 17, 19, 20 and 21 are in
``test_service_gunicorn.py``; the pool-level scenarios in ``test_faults_pool.py``.
"""
import json
import os
import signal
import socket
import time
from urllib.parse import quote

import gevent
import pytest
import redis
from conftest import service_runner

from pool.server import RedisProcess, free_port
from pool.testing import (
    FaultProxy,
    FuzzGenerator,
    acceptable,
    http_request,
    process_alive,
    raw_exchange,
    request,
    response_statuses,
    restart_server,
    service_clients,
    wait_until,
)
from pool.testing.fuzz import write_fixtures

PREFIX = "greenpool:"
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
SLACK = 0.5  # tolerance on a timing bound: scheduling on a busy CI machine
FIGURES = []  # one row per scenario, printed by the module fixture below


# -- figures and traffic -------------------------------------------------------------------------------------
class Figures:
    """The replies of one scenario, classified. ``ok``: 200 with the asked key's own hash; ``crossed``: 200
    with another key's hash (or anything but that hash); ``expected``: a status or error the scenario allows;
    ``unexpected``: anything else."""

    def __init__(self, scenario, allowed=(), allowed_errors=()):
        self.scenario = scenario
        self.allowed = set(allowed)
        self.allowed_errors = tuple(allowed_errors)
        self.ok = self.expected = 0
        self.unexpected = []
        self.crossed = []
        self.recovery = None
        FIGURES.append(self)

    @property
    def requests(self):
        return self.ok + self.expected + len(self.unexpected) + len(self.crossed)

    def record(self, name, outcome):
        """Classify the reply (or exception) to ``GET /hashes/<name>``; returns its kind."""
        if isinstance(outcome, BaseException):
            if isinstance(outcome, self.allowed_errors):
                self.expected += 1
                return "expected"
            self.unexpected.append(f"{name}: {outcome!r}")
            return "unexpected"
        if outcome.status == 200:
            if _own_hash(outcome, name):
                self.ok += 1
                return "ok"
            self.crossed.append(f"{name}: {outcome.body[:200]!r}")
            return "crossed"
        if outcome.status in self.allowed and _json_error(outcome):
            self.expected += 1
            return "expected"
        self.unexpected.append(f"{name}: {outcome!r}")
        return "unexpected"

    def check(self):
        assert self.crossed == [], f"{self.scenario}: crossed replies {self.crossed[:5]}"
        assert self.unexpected == [], f"{self.scenario}: unexpected replies {self.unexpected[:5]}"

    def row(self):
        recovery = "-" if self.recovery is None else f"{self.recovery:.3f}s"
        return (f"{self.scenario:<34} {self.requests:>8} {self.ok:>9} {self.expected:>8} "
                f"{len(self.unexpected):>10} {len(self.crossed):>7} {recovery:>9}")


def _own_hash(reply, name):
    try:
        return reply.json().get("name") == name
    except (ValueError, AttributeError):
        return False


def _json_error(reply):
    try:
        body = reply.json()
    except ValueError:
        return False
    if reply.status == 503 and "Retry-After" not in reply.headers:
        return False
    return set(body) == {"error", "detail"}


@pytest.fixture(scope="module", autouse=True)
def figures_table():
    yield
    if FIGURES:
        print("\n" + f"{'scenario':<34} {'requests':>8} {'succeeded':>9} {'expected':>8} {'unexpected':>10} "
                     f"{'crossed':>7} {'recovery':>9}")
        for figures in FIGURES:
            print(figures.row())
        FIGURES.clear()


def seed(admin, count=20):
    """``count`` hashes ``h0``... whose content names their key, so a crossed reply cannot go unnoticed."""
    expected = {}
    for i in range(count):
        name = f"h{i}"
        expected[name] = {"name": name, "n": str(i)}
        admin.hset(PREFIX + name, mapping=expected[name])
    return expected


def snapshot(admin):
    """Every key of the server with its DUMP: equal snapshots mean equal keys, types and values."""
    return {key: admin.dump(key) for key in admin.scan_iter(count=1000)}


class Traffic:
    """``clients`` greenlets GET the seeded hashes, each on a fresh connection, until ``stop()``; every reply
    goes to ``figures`` and to ``log`` as ``(started, ended, kind)`` (monotonic seconds)."""

    def __init__(self, port, names, figures, clients=8, timeout=10.0, pause=0.0, max_requests=20000):
        self.port, self.names, self.figures = port, sorted(names), figures
        self.clients, self.timeout, self.pause, self.max_requests = clients, timeout, pause, max_requests
        self.log = []
        self._done = False
        self._greenlets = []

    def start(self):
        self._greenlets = [gevent.spawn(self._client, i) for i in range(self.clients)]
        return self

    def _client(self, index):
        n = index
        while not self._done and len(self.log) < self.max_requests:
            name = self.names[n % len(self.names)]
            n += 3
            started = time.monotonic()
            try:
                outcome = request(self.port, "GET", f"/hashes/{name}", timeout=self.timeout)
            except OSError as exc:
                outcome = exc
            self.log.append((started, time.monotonic(), self.figures.record(name, outcome)))
            if self.pause:
                gevent.sleep(self.pause)

    def count(self, kind="ok", after=0.0):
        return sum(1 for started, _, k in self.log if k == kind and started >= after)

    def stop(self, timeout=30.0):
        self._done = True
        gevent.joinall(self._greenlets, timeout=timeout, raise_error=True)
        assert all(g.dead for g in self._greenlets), "traffic clients did not finish"
        return self

    def recovery_after(self, moment):
        """Seconds from ``moment`` until the start of the first request after which every request succeeded."""
        failed = [started for started, _, kind in self.log if kind != "ok" and started >= moment]
        later_ok = [started for started, _, kind in self.log if kind == "ok" and started > max(failed, default=moment)]
        return (min(later_ok) - moment) if later_ok else None


def stats(service):
    return service.request("GET", "/stats").json()["pool"]


def burst(port, names, count, path="/hashes/{}", timeout=10.0):
    """``count`` concurrent GETs; returns ``[(name, reply or exception, seconds)]``."""
    def one(i):
        name = names[i % len(names)]
        started = time.monotonic()
        try:
            outcome = request(port, "GET", path.format(name), timeout=timeout)
        except OSError as exc:
            outcome = exc
        return name, outcome, time.monotonic() - started

    jobs = [gevent.spawn(one, i) for i in range(count)]
    gevent.joinall(jobs, timeout=timeout + 5, raise_error=True)
    return [job.value for job in jobs]


# -- 6: pool exhausted -----------------------------------------------------------------------------------------
@pytest.mark.timing
def test_pool_exhausted_fast_503_with_retry_after(gunicorn_factory, redis_server, admin):
    """POOL_MAX_SIZE=1 behind a slow Redis: a burst gets 200s with the asked key's hash and 503s with Retry-After;
    requests beyond POOL_MAX_WAITING are refused at once (well before the slow round trip) and the queue of the
    pool never grows past POOL_MAX_WAITING."""
    expected = seed(admin)
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        service = gunicorn_factory(env={"REDIS_URL": proxy.url, "POOL_MAX_SIZE": 1, "POOL_MAX_WAITING": 2,
                                        "POOL_TIMEOUT": 0.5, "REQUEST_TIMEOUT": 5})
        assert service.request("GET", "/hashes/h0").status == 200  # the pool's one connection is open
        proxy.delay(0.2)  # a round trip now takes 0.4 s
        samples = []
        sampler = gevent.spawn(_sample_waiting, service, samples)
        figures = Figures("6 pool exhausted", allowed={503})
        started = time.monotonic()
        results = burst(service.port, sorted(expected), 24)
        took = time.monotonic() - started
        sampler.kill()
        proxy.passthrough()
        kinds = [figures.record(name, outcome) for name, outcome, _ in results]
        fast_503 = [s for (_, o, s), k in zip(results, kinds, strict=False) if k == "expected" and s < 0.3]
        pool = stats(service)
        for i in range(10):  # and it serves as before
            figures.record(f"h{i}", service.request("GET", f"/hashes/h{i}"))
    figures.check()
    assert kinds.count("ok") >= 1 and kinds.count("expected") >= 24 - 3, kinds
    assert all(o.headers.get("Retry-After") == "1" for _, o, _ in results if o.status == 503)
    assert len(fast_503) >= 24 - 3 - 1, f"only {len(fast_503)} refusals under 0.3 s"
    assert samples and max(samples) <= 2, f"requests waiting: {sorted(set(samples))}"
    assert pool["requests_rejected"] >= 24 - 3
    assert took < 0.5 + 0.8 + SLACK  # the slowest waits POOL_TIMEOUT behind one slow round trip
    print(f"6: {kinds.count('ok')} ok, {len(fast_503)} fast 503s, max waiting {max(samples)}, burst {took:.2f}s")


def _sample_waiting(service, samples):
    while True:
        samples.append(stats(service)["requests_waiting"])
        gevent.sleep(0.01)


# -- 7: leaked checkout ----------------------------------------------------------------------------------------
def test_leaked_checkout_is_reported_in_the_error_log(gunicorn_factory, redis_server, admin):
    """A request holding its connection longer than the pool's leak_threshold (``?leak_threshold=`` in REDIS_URL)
    is still answered correctly, and the pool
    logs one warning with the borrower's stack in gunicorn's error log; a quick request logs none. (Leaks are
    borrows of exclusive connections, hence POOL_MULTIPLEX=0: shared connections are held by the multiplexer
    for good, and a slow reply on one is bounded by socket_timeout instead.)"""
    expected = seed(admin, 4)
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        service = gunicorn_factory(env={"REDIS_URL": proxy.url + "?leak_threshold=0.3", "REQUEST_TIMEOUT": 5,
                                        "POOL_MULTIPLEX": 0})
        figures = Figures("7 leaked checkout")
        figures.record("h0", service.request("GET", "/hashes/h0"))
        proxy.delay(0.4)  # one HGETALL holds the connection 0.8 s: a leak by the threshold
        figures.record("h1", service.request("GET", "/hashes/h1"))
        proxy.passthrough()
        for name in sorted(expected):
            figures.record(name, service.request("GET", f"/hashes/{name}"))
        (pid,) = service.worker_pids()
        wait_until(lambda: "connection held for" in service.log(), 5, what="the leak warning")
        assert stats(service)["leaks_reported"] == 1
    figures.check()
    log = service.log()
    assert log.count("connection held for") == 1, log
    assert f"pool 'web-{pid}': connection held for" in log and "(leak_threshold 0.3s)" in log
    assert "get_hash" in log.partition("connection held for")[2], "the warning shows where it was borrowed"


# -- 8: Redis frozen --------------------------------------------------------------------------------------------
@pytest.mark.timing
def test_redis_frozen_every_request_answered_within_request_timeout(gunicorn_factory, redis_server, admin):
    """Redis SIGSTOPped under load: every request is answered (503 or 504) within REQUEST_TIMEOUT + 0.5 s, none
    hangs; after SIGCONT the service recovers by itself and no reply is crossed. The cancelled requests' replies
    are read and dropped when they come (the shared connections stay in service)."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "REQUEST_TIMEOUT": 1, "POOL_TIMEOUT": 0.5,
                                    "POOL_MAX_SIZE": 4})
    figures = Figures("8 Redis frozen (SIGSTOP)", allowed={503, 504})
    traffic = Traffic(service.port, expected, figures, clients=12).start()
    wait_until(lambda: traffic.count() >= 50, 10, what="traffic before the freeze")
    redis_server.pause()
    try:
        frozen_at = time.monotonic()
        wait_until(lambda: traffic.count("expected", frozen_at) >= 24, 10, what="refusals while frozen")
        gevent.sleep(1.5)  # bounded: let every client live through a full REQUEST_TIMEOUT while frozen
    finally:
        redis_server.resume()
    resumed_at = time.monotonic()
    wait_until(lambda: traffic.count("ok", resumed_at + 1.0) >= 50, 15, what="traffic after SIGCONT")
    traffic.stop()
    figures.recovery = traffic.recovery_after(resumed_at)
    figures.check()
    slowest = max(ended - started for started, ended, _ in traffic.log)
    assert slowest <= 1 + SLACK, f"a request took {slowest:.2f}s"
    assert traffic.count("ok", resumed_at + 1.0) == len([1 for s, _, _ in traffic.log if s >= resumed_at + 1.0])
    assert figures.recovery is not None and figures.recovery < 1.5
    pool = stats(service)
    assert pool["mux_replies_dropped"] >= 1 and pool["pool_size"] <= 4
    print(f"8: slowest {slowest:.2f}s, recovered {figures.recovery:.3f}s after SIGCONT")


# -- 9: Redis restarted, CLIENT KILL --------------------------------------------------------------------------------
def _kill_service_clients(admin):
    ids = [c["id"] for c in service_clients(admin)]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


@pytest.mark.timing
@pytest.mark.parametrize("fault", ["restart", "client_kill"])
def test_redis_back_first_request_succeeds(gunicorn_factory, redis_factory, fault):
    """After a Redis restart (same port, data kept) or a CLIENT KILL of all the service's connections: when idle,
    the very first request succeeds (dead pooled connections are noticed at checkout); under load, every request
    started 1 s after Redis is back succeeds. No reply is crossed."""
    server = redis_factory("--save", "3600 1")  # SIGTERM saves, start loads: the hashes survive a restart
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    expected = seed(admin)
    names = sorted(expected)
    service = gunicorn_factory(env={"REDIS_URL": server.url, "POOL_MAX_SIZE": 4, "POOL_TIMEOUT": 0.5}, workers=2)
    figures = Figures(f"9 Redis {fault.replace('_', ' ')}", allowed={503})

    def fault_now():
        if fault == "restart":
            restart_server(server)
        else:
            assert _kill_service_clients(admin) >= 1

    # idle: the pooled connections are dead when the first request comes
    for _ in range(3):
        for name, outcome, _ in burst(service.port, names, 16):
            figures.record(name, outcome)
    assert figures.ok == 48
    fault_now()
    back_at = time.monotonic()
    first = service.request("GET", "/hashes/h1")
    assert figures.record("h1", first) == "ok", first
    for name, outcome, _ in burst(service.port, names, 16):
        assert figures.record(name, outcome) == "ok", outcome
    idle_recovery = time.monotonic() - back_at
    # under load
    traffic = Traffic(service.port, names, figures, clients=8, pause=0.005).start()
    wait_until(lambda: traffic.count() >= 50, 10, what="traffic before the fault")
    fault_now()
    back_at = time.monotonic()
    wait_until(lambda: traffic.count("ok", back_at + 1.0) >= 100, 15, what="traffic after the fault")
    traffic.stop()
    admin.close()
    figures.recovery = traffic.recovery_after(back_at)
    figures.check()
    late = [kind for started, _, kind in traffic.log if started >= back_at + 1.0]
    assert late and set(late) == {"ok"}
    assert figures.recovery is not None and figures.recovery <= 1.0
    print(f"9 {fault}: idle: first request ok, 16 more within {idle_recovery:.3f}s; "
          f"under load: recovered in {figures.recovery:.3f}s, {figures.expected} 503s")


# -- 15: bad keys ----------------------------------------------------------------------------------------------------
BAD_KEYS = {  # the path after /hashes/, as sent (percent-encoded): the reason it is refused
    "%00": "NUL", "a%0D%0Ab": "CRLF", "a%0Ab": "LF", "%7F": "DEL", "%C2%85": "C1 control (NEL)",
    "%FF%FE": "not UTF-8", "%C0%AF": "overlong UTF-8", "%ED%A0%80": "UTF-16 surrogate", "a%80b": "lone continuation",
    "k" * 257: "longer than MAX_KEY_BYTES", "%E2%9C%93" * 86: "258 bytes of UTF-8", "": "empty",
}
GOOD_KEYS = ["ключ", "✓ check", "emoji-🙂", "日本語", "a/b", "100%", "x?y#z", "a b", "k" * 256, "é" * 128,
             "tab\u00a0nbsp", "quote\"'", "<script>"]


def test_bad_keys_clean_4xx_and_valid_unicode_round_trips(gunicorn_factory, redis_server, admin):
    """Keys with control characters (CRLF, NUL), invalid UTF-8 or too many bytes get a JSON 400 for every method
    and leave Redis unchanged; raw bytes and huge request lines get gunicorn's 4xx; valid Unicode keys (and
    reserved characters, percent-encoded) round-trip exactly, and their Redis key is the UTF-8 name."""
    seed(admin, 4)
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "API_TOKEN": TOKEN})
    figures = Figures("15 bad keys", allowed={400})
    before = snapshot(admin)
    body = json.dumps({"name": "x"}).encode()
    for key in BAD_KEYS:
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            reply = service.request(method, f"/hashes/{key}", body if method in ("PUT", "PATCH") else None,
                                    {**AUTH, **JSON})
            assert figures.record(key, reply) == "expected", (BAD_KEYS[key], method, reply)
            assert reply.json()["error"] == "invalid_key"
    raw_cases = [
        http_request("GET", b"/hashes/a\r\nb"),  # CRLF in the request line itself
        http_request("GET", b"/hashes/\x00"),
        http_request("GET", b"/hashes/a b"),
        http_request("PUT", b"/hashes/\xff\xfe", body, [("Authorization", AUTH["Authorization"]),
                                                         ("Content-Type", "application/json"),
                                                         ("Content-Length", str(len(body)))]),
        http_request("GET", "/hashes/" + "%41" * 40000),  # a huge key: over gunicorn's limit_request_line
        http_request("GET", "/hashes/" + "k" * 5000),
    ]
    for data in raw_cases:
        statuses = response_statuses(raw_exchange(service.port, data))
        assert statuses and all(400 <= s < 500 for s in statuses), (data[:60], statuses)
        figures.expected += 1
    assert snapshot(admin) == before, "a refused key changed Redis"
    for name in GOOD_KEYS:
        path = "/hashes/" + quote(name, safe="")
        mapping = {"name": name, "ключ": name}
        reply = service.request("PUT", path, mapping, AUTH)
        assert (reply.status, reply.json()) == (201, mapping), (name, reply)
        figures.record(name, service.request("GET", path))
        assert admin.hgetall(PREFIX + name) == mapping
        assert admin.exists((PREFIX + name).encode()), "the Redis key is the UTF-8 name"
        assert service.request("DELETE", path, headers=AUTH).status == 204
    assert snapshot(admin) == before
    figures.check()


# -- 18: a request longer than graceful_timeout during SIGTERM ---------------------------------------------------------
@pytest.mark.timing
def test_sigterm_request_longer_than_graceful_timeout(gunicorn_factory, redis_server, admin):
    """SIGTERM while a request waits on Redis longer than GRACEFUL_TIMEOUT: no hang (the master exits 0 within
    GRACEFUL_TIMEOUT + 3 s, the client gets its answer or a closed connection, never waits on), and nothing is
    left open: no worker process, no listening socket, no connection on the Redis server."""
    seed(admin, 2)
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        service = gunicorn_factory(env={"REDIS_URL": proxy.url, "GRACEFUL_TIMEOUT": 2, "KEEPALIVE": 1,
                                        "POOL_CLOSE_TIMEOUT": 0.5, "REQUEST_TIMEOUT": 30})
        figures = Figures("18 SIGTERM > graceful_timeout", allowed_errors=(OSError,))
        figures.record("h0", service.request("GET", "/hashes/h0"))
        workers = service.worker_pids()
        proxy.delay(2.5)  # the next HGETALL takes 5 s
        sent = proxy.received_up
        slow = gevent.spawn(_outcome, service.port, "/hashes/h1")
        wait_until(lambda: proxy.received_up > sent, 5, what="the slow request at Redis")
        started = time.monotonic()
        service.send(signal.SIGTERM)
        assert service.wait_exit(2 + 3) == 0
        took = time.monotonic() - started
        outcome = slow.get(timeout=5)
        figures.record("h1", outcome)
        assert not any(process_alive(pid) for pid in workers)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
        wait_until(lambda: proxy.open_connections == 0, 5, what="no connection through the proxy")
    wait_until(lambda: not service_clients(admin), 5, what="no service connection on the Redis server")
    figures.check()
    figures.recovery = took
    print(f"18: master gone {took:.2f}s after SIGTERM; the slow request got {outcome!r}")


def _outcome(port, path, timeout=30.0):
    try:
        return request(port, "GET", path, timeout=timeout)
    except OSError as exc:
        return exc


# -- 22: hub blocked, WORKER TIMEOUT ----------------------------------------------------------------------------------
@pytest.mark.timing
def test_blocked_hub_worker_timeout_discards_the_connection(gunicorn_factory, redis_server, admin):
    """A request blocks the worker's hub (unpatched time.sleep) while holding a Redis connection: the master logs
    WORKER TIMEOUT and aborts the worker (SystemExit inside that request's greenlet); the pool discards the
    held connection (it disappears from the server, never reused), and a new worker serves correctly."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "GUNICORN_TIMEOUT": 2, "GRACEFUL_TIMEOUT": 5},
                               args=["tests.apps.blocking:app"])
    figures = Figures("22 hub blocked (WORKER TIMEOUT)", allowed_errors=(OSError,))
    for name, outcome, _ in burst(service.port, sorted(expected), 8):
        figures.record(name, outcome)
    (old,) = service.worker_pids()
    blocked = gevent.spawn(_outcome, service.port, "/_block/h0")
    held = wait_until(lambda: [c["id"] for c in service_clients(admin) if c["cmd"] == "echo"], 5,
                      what="the blocking request's connection")
    started = time.monotonic()
    waiting = [gevent.spawn(_outcome, service.port, f"/hashes/h{i}") for i in range(1, 6)]  # queued behind it
    (new,) = service.wait_workers(1, timeout=15, exclude={old})
    recovered = time.monotonic() - started
    wait_until(lambda: not {c["id"] for c in admin.client_list()} & set(held), 5, what="the held connection gone")
    figures.record("h0", blocked.get(timeout=10))
    for i, job in enumerate(waiting, 1):
        figures.record(f"h{i}", job.get(timeout=15))
    for name, outcome, _ in burst(service.port, sorted(expected), 20):
        assert figures.record(name, outcome) == "ok", outcome
    log = service.log()
    assert f"WORKER TIMEOUT (pid:{old})" in log
    assert f"[{old}] [WARNING] pool 'web-{old}': discarding a connection (cancelled)" in log, log
    assert all(int(c["name"].rpartition("-")[2]) == new for c in service_clients(admin))
    figures.check()
    figures.recovery = recovered
    print(f"22: worker {old} aborted, {new} serving {recovered:.2f}s after the block began")


# -- 23: slow clients -----------------------------------------------------------------------------------------------
def _slowloris(port, results, interval=0.1):
    """Open a connection and send a request's headers one byte every ``interval`` s until the server closes it;
    appends the seconds the server kept it open."""
    started = time.monotonic()
    head = b"GET /hashes/h0 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(400))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for i in range(len(head)):
                sock.send(head[i:i + 1])
                gevent.sleep(interval)
    except OSError:  # the server closed it (reset or broken pipe on the next byte)
        pass
    results.append(time.monotonic() - started)


@pytest.mark.timing
def test_slowloris_is_bounded_and_other_clients_are_served(gunicorn_factory, redis_server, admin):
    """Slow clients that dribble headers byte by byte, more of them than WORKER_CONNECTIONS: the server closes
    each within 2 x KEEPALIVE (a queued one waits for a free slot, then gets KEEPALIVE), and other clients are
    still served correctly, each within KEEPALIVE + 1 s."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "WORKER_CONNECTIONS": 30, "KEEPALIVE": 2})
    figures = Figures("23 slowloris")
    held = []
    attackers = [gevent.spawn(_slowloris, service.port, held) for _ in range(45)]
    gevent.sleep(0.3)  # bounded: let them occupy the worker's connections
    traffic = Traffic(service.port, expected, figures, clients=4, pause=0.05, timeout=10).start()
    gevent.joinall(attackers, timeout=20, raise_error=True)
    after = time.monotonic()
    wait_until(lambda: traffic.count("ok", after) >= 20, 10, what="traffic after the attack")
    traffic.stop()
    figures.check()
    slowest = max(ended - started for started, ended, _ in traffic.log)
    assert len(held) == 45 and max(held) <= 2 * 2 + 2 * SLACK, f"slow clients held {sorted(held)[-5:]}"
    assert traffic.count() >= 20 and slowest <= 2 + 1 + SLACK, f"a client waited {slowest:.2f}s"
    figures.recovery = slowest
    print(f"23: 45 slow clients held at most {max(held):.2f}s; {traffic.count()} served, slowest {slowest:.2f}s")


# -- 24: invalid HTTP and bad chunked bodies --------------------------------------------------------------------------
def _chunked_put(chunks, key="h0"):
    return http_request("PUT", f"/hashes/{key}", chunks, [("Authorization", AUTH["Authorization"]),
                                                         ("Content-Type", "application/json"),
                                                         ("Transfer-Encoding", "chunked")])


INVALID_HTTP = {
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello
    "no version": b"GET /hashes/h0\r\n\r\n",
    "bad version": http_request("GET", "/hashes/h0", version=b"HTTP/9.9"),
    "bad method": http_request("G(T", "/hashes/h0"),
    "LF only": b"GET /hashes/h0 HTTP/1.1\nHost: x\n\n",
    "NUL in header": http_request("GET", "/hashes/h0", headers=[("X-A", "a\x00b")]),
    "bad header name": http_request("GET", "/hashes/h0", headers=[("X A", "1")]),
    "obs-fold": b"GET /hashes/h0 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "header too long": http_request("GET", "/hashes/h0", headers=[("X-A", "a" * 9000)]),
    "too many headers": http_request("GET", "/hashes/h0", headers=[(f"X-{i}", "1") for i in range(150)]),
    "two lengths": http_request("PUT", "/hashes/h0", b"{}", [("Content-Length", "2"), ("Content-Length", "3")]),
    "negative length": http_request("PUT", "/hashes/h0", b"{}", [("Content-Length", "-2")]),
    "length and chunked": http_request("PUT", "/hashes/h0", b"0\r\n\r\n", [("Content-Length", "5"),
                                                                           ("Transfer-Encoding", "chunked")]),
    "unknown coding": http_request("PUT", "/hashes/h0", b"{}", [("Transfer-Encoding", "gzip, chunked, br")]),
    "bad chunk size": _chunked_put(b"zz\r\n{}\r\n0\r\n\r\n"),
    "chunk size overflow": _chunked_put(b"FFFFFFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n"),
    "negative chunk size": _chunked_put(b"-2\r\n{}\r\n0\r\n\r\n"),
    "chunk without CRLF": _chunked_put(b"2\r\n{}XX0\r\n\r\n"),
    "bad chunk extension": _chunked_put(b"2;\x00=\x01\r\n{}\r\n0\r\n\r\n"),
    "chunk size with space": _chunked_put(b"2 3\r\n{}\r\n0\r\n\r\n"),
    "truncated chunked body": _chunked_put(b"10\r\n{\"name\""),
    "deeply nested JSON": _chunked_put(b"1388\r\n" + b"[" * 5000 + b"\r\n0\r\n\r\n"),
    "bad trailer": _chunked_put(b"2\r\n{}\r\n0\r\nX A: 1\r\n\r\n"),
}


@pytest.mark.parametrize("case", sorted(INVALID_HTTP))
def test_invalid_http_gets_4xx_and_leaves_the_app_unharmed(http_service, case):
    """Each malformed request or chunked body gets a 4xx (or the connection closed, for a body cut short), never a
    5xx or a hang; Redis is unchanged; the same worker then serves correct replies."""
    service, admin, before, figures, workers = http_service
    data = INVALID_HTTP[case]
    statuses = response_statuses(raw_exchange(service.port, data))
    assert all(acceptable(s, data) for s in statuses), (case, statuses)
    if case != "truncated chunked body":
        assert statuses, f"{case}: no answer"
    figures.expected += 1
    figures.record("h3", service.request("GET", "/hashes/h3"))
    assert snapshot(admin) == before
    assert service.worker_pids() == workers, "a worker died"
    figures.check()


@pytest.fixture(scope="module")
def http_service(tmp_path_factory):
    """One service for the invalid-HTTP cases (module scope: the cases are cheap, the start is not)."""
    tmp = tmp_path_factory.mktemp("invalid-http")
    server = RedisProcess(tmp / "redis", port=free_port()).start()
    admin = redis.Redis.from_url(server.url)
    seed(admin, 4)
    service = service_runner(tmp, {"REDIS_URL": server.url, "API_TOKEN": TOKEN}).start()
    figures = Figures("24 invalid HTTP, bad chunked", allowed={400})
    try:
        yield service, admin, snapshot(admin), figures, service.worker_pids()
        assert "Traceback" not in service.log(), service.log()
    finally:
        service.stop()
        admin.close()
        server.stop()


# -- 25: Redis out of memory ------------------------------------------------------------------------------------------
def _fill(admin):
    """Write to Redis directly until it refuses with OOM; returns the number of fillers written."""
    for i in range(1000):
        try:
            admin.set(f"filler:{i}", "x" * 20000)
        except redis.exceptions.OutOfMemoryError:
            return i
    raise AssertionError("Redis never reported OOM")


def test_redis_out_of_memory_writes_507_reads_served(gunicorn_factory, redis_factory):
    """Redis at its memory limit (noeviction): a write that adds data gets a clear 507 with a JSON error (never a
    500), and changes nothing; reads, /readyz and DELETE (which frees memory) are still served; writes succeed
    again once memory is available."""
    server = redis_factory("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": server.url})
    _fill(admin)
    figures = Figures("25 Redis OOM (maxmemory)", allowed={507})
    before = snapshot(admin)
    for i in range(10):
        reply = service.request("PATCH", f"/hashes/new{i}", {"name": f"new{i}", "v": "y" * 1000})
        assert reply.status == 507 and reply.json()["error"] == "insufficient_storage", reply
        figures.record(f"new{i}", reply)
        reply = service.request("PATCH", f"/hashes/h{i}", {"more": "z" * 1000})
        assert reply.status == 507, reply
        figures.record(f"h{i}", reply)
    assert snapshot(admin) == before, "a refused write changed Redis"
    for name in sorted(expected):
        figures.record(name, service.request("GET", f"/hashes/{name}"))
    assert service.request("GET", "/readyz").status == 200
    assert service.request("DELETE", "/hashes/h19").status == 204  # DEL is allowed at the limit
    admin.config_set("maxmemory", "0")
    reply = service.request("PATCH", "/hashes/h19", {"name": "h19"})
    assert reply.status == 201, reply
    figures.record("h19", service.request("GET", "/hashes/h19"))
    admin.close()
    figures.check()


def test_redis_out_of_memory_put_is_refused(gunicorn_factory, redis_factory):
    """PUT (replace) at the memory limit is refused like PATCH, and does not grow Redis past maxmemory."""
    server = redis_factory("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    admin = redis.Redis.from_url(server.url)
    service = gunicorn_factory(env={"REDIS_URL": server.url})
    _fill(admin)
    try:
        reply = service.request("PUT", "/hashes/new", {"name": "new", "v": "y" * 16000})
        assert reply.status == 507, reply
    finally:
        admin.close()


# -- HTTP fuzz ---------------------------------------------------------------------------------------------------------
def fuzz(port, names, count, seed, concurrency=32):
    """Send ``count`` hostile requests from ``FuzzGenerator(seed, TOKEN, names)``; returns (status counts over all
    responses, requests answered only acceptably, [(status, request)] of server errors, requests left unanswered)."""
    generator = FuzzGenerator(seed, TOKEN, names)
    cases = [generator.next() for _ in range(count)]
    counts, server_errors, hangs = {}, [], []
    clean = 0

    def worker(mine):
        nonlocal clean
        for _, data, method in mine:
            try:
                statuses = response_statuses(raw_exchange(port, data, timeout=10), method)
            except TimeoutError:
                hangs.append(data[:120])
                continue
            bad = [status for status in statuses if status >= 500 and not acceptable(status, data)]
            server_errors.extend((status, data[:200]) for status in bad)
            clean += not bad
            for status in statuses or [None]:
                counts[status] = counts.get(status, 0) + 1

    jobs = [gevent.spawn(worker, cases[i::concurrency]) for i in range(concurrency)]
    gevent.joinall(jobs, timeout=300, raise_error=True)
    assert all(job.dead for job in jobs)
    return counts, clean, server_errors, hangs


def _run_fuzz(gunicorn_factory, redis_server, admin, count, scenario):
    expected = seed(admin, 4)
    write_fixtures(admin, PREFIX)  # the string and the list its type-confusion requests aim at
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url, "API_TOKEN": TOKEN, "KEEPALIVE": 1}, workers=2)
    workers = service.wait_workers(2)
    before = snapshot(admin)
    seed_value = int(os.environ.get("FUZZ_SEED", "4"))
    started = time.monotonic()
    counts, clean, server_errors, hangs = fuzz(service.port, sorted(expected), count, seed_value)
    took = time.monotonic() - started
    figures = Figures(scenario, allowed=set(range(400, 500)))
    figures.expected = clean
    figures.unexpected = [f"{status} for {data!r}" for status, data in server_errors] + \
                         [f"no answer within 10 s to {data!r}" for data in hangs]
    for name in sorted(expected):
        figures.record(name, service.request("GET", f"/hashes/{name}"))
    print(f"{scenario}: {count} requests (seed {seed_value}) in {took:.1f}s; statuses "
          f"{dict(sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))}")
    assert snapshot(admin) == before, "Redis changed under the fuzz run"
    assert service.worker_pids() == workers, "a worker died"
    figures.check()
    assert "Traceback" not in service.log(), service.log()


def test_http_fuzz(gunicorn_factory, redis_server, admin):
    """A seeded run of malformed and hostile requests (2,000 in CI; FUZZ_REQUESTS raises it, FUZZ_SEED changes it):
    zero 5xx (but gunicorn's 501 to an unknown transfer coding, which RFC 9112 prescribes), no hang, Redis
    unchanged (every key's DUMP before and after), no traceback, the workers alive and answering correctly."""
    _run_fuzz(gunicorn_factory, redis_server, admin, int(os.environ.get("FUZZ_REQUESTS", "2000")), "fuzz (CI)")


@pytest.mark.slow
def test_http_fuzz_long(gunicorn_factory, redis_server, admin):
    """The long fuzz run: at least 10,000 requests (FUZZ_REQUESTS if larger)."""
    count = max(10000, int(os.environ.get("FUZZ_REQUESTS", "10000")))
    _run_fuzz(gunicorn_factory, redis_server, admin, count, "fuzz (long)")
