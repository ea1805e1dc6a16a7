"""The service under real gunicorn with ``REDIS_URL=redis+sentinel://...``: 1 master, 1 replica, 3 sentinels on
loopback ports. The master is SIGKILLed while requests flow: the service answers every request in bounded
time (503 while there is no master), recovers within the failover time + 2 s, and never crosses replies.
"""
import http.client
import json
import time

import gevent
import pytest
import redis
from conftest import SENTINEL_DOWN_AFTER_MS as DOWN_AFTER_MS
from conftest import SENTINEL_FAILOVER_TIMEOUT_MS as FAILOVER_TIMEOUT_MS
from conftest import service_runner

from pool.testing import service_clients, wait_until

REQUEST_TIMEOUT = 2.0
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def seed(topology, count=30):
    """Hashes whose content names their key, written to the master and acknowledged by the replica."""
    host, port = topology.master_address()
    expected = {}
    with redis.Redis(host=host, port=port, decode_responses=True) as master:
        for i in range(count):
            name = f"h{i}"
            expected[name] = {"name": name, "n": str(i)}
            master.hset("greenpool:" + name, mapping=expected[name])
        assert master.wait(1, 5000) == 1  # on the replica too: the failover must not lose the seed
    return expected


class HttpLoad:
    """Keep-alive HTTP clients (greenlets here): GETs of the seeded hashes and PATCHes of their own hash.

    Every request is recorded as ``(started, finished, status, problem)``. A 200 whose body is not the
    request's own hash (GET) or does not carry the client's own name and sequence number (PATCH, whose
    reply is the merged hash read back from Redis) is a crossed reply.
    """

    def __init__(self, port, expected, clients=10):
        self.port = port
        self.expected = expected
        self.names = sorted(expected)
        self.records = []
        self.crossed = []
        self._stop = False
        self._greenlets = [gevent.spawn(self._client, i) for i in range(clients)]

    def _client(self, index):
        conn = None
        for seq in range(1_000_000):  # bounded; stop() ends it long before
            if self._stop:
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT + 5)
            if seq % 3 == 2:
                name = f"w{index}"
                method, body = "PATCH", json.dumps({"name": name, "seq": str(seq)}).encode()
                want = {"name": name, "seq": str(seq)}
                headers = {**AUTH, "Content-Type": "application/json"}
            else:
                name = self.names[(index * 7 + seq) % len(self.names)]
                method, body, want, headers = "GET", None, self.expected[name], {}
            started = time.monotonic()
            status, problem = None, None
            try:
                conn.request(method, f"/hashes/{name}", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
                if status in (200, 201):  # a PATCH creates its hash (again, if the failover lost it): 201
                    status = 200
                    got = json.loads(payload)
                    if (got if method == "GET" else {k: got.get(k) for k in want}) != want:
                        self.crossed.append((method, name, want, payload[:200]))
                elif status not in (503, 504):
                    problem = f"{status} {payload[:200]!r}"
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 -- a broken HTTP exchange is a finding
                problem = repr(exc)
                conn.close()
                conn = None
            self.records.append((started, time.monotonic(), status, problem))
            if status != 200:
                gevent.sleep(0.02)  # do not spin on 503s
        if conn is not None:
            conn.close()

    def stop(self):
        self._stop = True
        gevent.joinall(self._greenlets, timeout=REQUEST_TIMEOUT + 10, raise_error=True)

    def ok_after(self, since):
        return sum(1 for started, _, status, _ in self.records if started > since and status == 200)

    def recovered_at(self, since):
        """Start of the first 200 after the last non-200 that began after ``since`` (None: never recovered)."""
        last_bad = max((started for started, _, status, _ in self.records if started >= since and status != 200),
                       default=since)
        return min((started for started, _, status, _ in self.records if started > last_bad and status == 200),
                   default=None)


def test_redis_url_checked_at_startup_without_showing_passwords(tmp_path, gunicorn_factory):
    """A malformed sentinel or cluster URL stops gunicorn with a message naming REDIS_URL; a valid one is
    logged with its passwords (data servers' and sentinels') replaced by ***."""
    # these URLs are refused at start-up: nothing ever connects to them
    for url, needle in [("redis+sentinel://:hunter2-secret@127.0.0.1:26379", "REDIS_URL is invalid: a sentinel URL"),  # noqa
                        ("redis+cluster://:hunter2-secret@127.0.0.1:7000?max_sise=3",
                         "REDIS_URL is invalid: unknown option"),
                        ("redis+cluster://:hunter2/secret@127.0.0.1:7000",
                         "REDIS_URL is invalid: an '@' in .* percent-encode")]:
        service = service_runner(tmp_path, {"REDIS_URL": url})
        with pytest.raises(RuntimeError, match=needle) as failed:
            service.start(timeout=20)
        assert "hunter2" not in str(failed.value) and "secret" not in service.log()
    url = "redis+sentinel://:hunter2-secret@127.0.0.1:1,127.0.0.1:2/mymaster/0?sentinel_password=s3ntinel-secret"
    service = gunicorn_factory(env={"REDIS_URL": url})
    assert service.request("GET", "/readyz").status == 503  # no sentinel there: not ready, but serving
    service.stop()
    redacted = "redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2/mymaster/0?sentinel_password=***"
    assert f"Using Redis at {redacted}" in service.log()
    assert "secret" not in service.log()


def test_routes_through_sentinel(gunicorn_factory, topology):
    """Every route works with a sentinel URL; /stats shows a single pool and /readyz pings the master."""
    service = gunicorn_factory(env={"REDIS_URL": topology.url, "API_TOKEN": TOKEN})
    assert service.request("GET", "/readyz").json() == {"status": "ready"}
    reply = service.request("PUT", "/hashes/s1", {"a": "1"}, AUTH)
    assert (reply.status, reply.json()) == (201, {"a": "1"})
    assert service.request("PATCH", "/hashes/s1", {"b": "2"}, AUTH).json() == {"a": "1", "b": "2"}
    assert service.request("GET", "/hashes/s1").json() == {"a": "1", "b": "2"}
    host, port = topology.master_address()
    with redis.Redis(host=host, port=port, decode_responses=True) as master:
        assert master.hgetall("greenpool:s1") == {"a": "1", "b": "2"}
    assert service.request("DELETE", "/hashes/s1", headers=AUTH).status == 204
    stats = service.request("GET", "/stats").json()["pool"]
    assert stats["pool_max"] == 10 and stats["connections_num"] >= 1
    assert stats["mux_commands"] >= 4 and stats["exclusive_checkouts"] == 0  # every route shared (POOL_MULTIPLEX)
    with redis.Redis(host=host, port=port, decode_responses=True) as master:
        assert service_clients(master)
        service.stop()  # worker_exit closes the pool and its connections to the sentinels
        assert "closed its Redis pool" in service.log() and service_clients(master) == []
    for _, sentinel_port in topology.sentinel_addresses:
        with redis.Redis(port=sentinel_port, decode_responses=True) as sentinel:
            assert service_clients(sentinel) == []


@pytest.mark.timing
def test_killed_master_under_load(gunicorn_factory, topology):
    """SIGKILL the master while 10 keep-alive clients read and write through 2 workers: every request is
    answered within REQUEST_TIMEOUT + 0.5 s (503 while no master is known), none gets another's reply, and
    the service serves 200s again within 2 s of the sentinels reporting the new master."""
    killed_master_under_load(gunicorn_factory, topology, workers=2, clients=10)


@pytest.mark.slow
@pytest.mark.timing
def test_killed_master_under_heavier_load(gunicorn_factory, topology):
    """The same with 4 workers and 48 clients."""
    killed_master_under_load(gunicorn_factory, topology, workers=4, clients=48)


def killed_master_under_load(gunicorn_factory, topology, workers, clients):
    expected = seed(topology)
    url = topology.url + "?socket_timeout=1&socket_connect_timeout=0.5&master_check_interval=1"
    service = gunicorn_factory(env={"REDIS_URL": url, "API_TOKEN": TOKEN, "REQUEST_TIMEOUT": REQUEST_TIMEOUT,
                                    "POOL_TIMEOUT": "0.5"}, workers=workers)
    load = HttpLoad(service.port, expected, clients)
    try:
        wait_until(lambda: load.ok_after(0) > 50, 15, what="load running")
        old = topology.master_address()
        killed_at = time.monotonic()
        topology.kill_master()
        new = wait_until(lambda: topology.master_address() != old and topology.master_address(),
                         DOWN_AFTER_MS / 1000 + FAILOVER_TIMEOUT_MS / 1000 + 10, what="sentinels report a new master")
        reported_at = time.monotonic()
        wait_until(lambda: load.recovered_at(killed_at) and load.ok_after(load.recovered_at(killed_at)) > 50, 15,
                   what="recovery")
        gevent.sleep(0.5)
    finally:
        load.stop()
    recovered_at = load.recovered_at(killed_at)
    during = [r for r in load.records if r[0] >= killed_at]
    refused = sum(1 for r in during if r[2] in (503, 504))
    longest = max(finished - started for started, finished, _, _ in load.records)
    print(f"sentinel failover through the service: new master {new} reported {reported_at - killed_at:.2f}s after "
          f"the kill, service recovered {recovered_at - killed_at:.2f}s after it "
          f"({recovered_at - reported_at:+.2f}s after the report); {len(load.records)} requests, {refused} answered "
          f"503/504, longest {longest:.2f}s")
    assert load.crossed == []
    assert [r for r in load.records if r[3] is not None] == []  # only 200, 503, 504; no broken exchange
    assert longest <= REQUEST_TIMEOUT + 0.5
    assert recovered_at - reported_at <= 2.0
    after = [r for r in load.records if r[0] > recovered_at]
    assert after and all(r[2] == 200 for r in after)
    host, port = new
    with redis.Redis(host=host, port=port) as master:  # the writes after recovery went to the new master
        assert master.hget(b"greenpool:w0", b"name") == b"w0"


@pytest.mark.timing
def test_manual_failover_demoted_master(gunicorn_factory, topology):
    """SENTINEL FAILOVER under load (the old master stays alive, demoted to a replica that answers READONLY):
    no crossed reply, no broken exchange, a handful of 503s, and 200s from the new master within 2 s."""
    expected = seed(topology)
    url = topology.url + "?socket_timeout=1&master_check_interval=1"
    env = {"REDIS_URL": url, "API_TOKEN": TOKEN, "REQUEST_TIMEOUT": REQUEST_TIMEOUT}
    service = gunicorn_factory(env=env, workers=2)
    load = HttpLoad(service.port, expected)
    try:
        wait_until(lambda: load.ok_after(0) > 50, 15, what="load running")
        old = topology.master_address()
        started = time.monotonic()
        with redis.Redis(port=topology.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", topology.service_name)
        new = wait_until(lambda: topology.master_address() != old and topology.master_address(), 15,
                         what="sentinels report a new master")
        reported_at = time.monotonic()
        wait_until(lambda: load.ok_after(reported_at + 2.0) > 50, 15, what="load after the switch")
    finally:
        load.stop()
    bad = [r for r in load.records if r[2] != 200]
    recovered_at = load.recovered_at(started) if bad else started
    print(f"manual failover through the service: reported {reported_at - started:.2f}s after SENTINEL FAILOVER, "
          f"{len(bad)} of {len(load.records)} requests answered 503/504"
          + (f", service recovered {recovered_at - reported_at:+.2f}s after the report" if bad else ""))
    assert load.crossed == []
    assert [r for r in load.records if r[3] is not None] == []
    assert max(finished - begun for begun, finished, _, _ in load.records) <= REQUEST_TIMEOUT + 0.5
    assert recovered_at - reported_at <= 2.0
    host, port = new
    with redis.Redis(host=host, port=port) as master:
        assert master.hget(b"greenpool:w0", b"name") == b"w0"
