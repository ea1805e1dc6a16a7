"""The service on its default, multiplexed path (POOL_MULTIPLEX), under real gunicorn processes against a real
redis-server: what the server sees (CLIENT LIST: how many connections a worker holds, which commands they
carry), that every route's command takes the shared path, that POOL_MULTIPLEX=0 is the exclusive pool as
before, and that a request cancelled by REQUEST_TIMEOUT (504) on a shared connection never leaves its reply
for another request while the connection stays in service.
"""
import gevent
import pytest

from pool.testing import Dataset, Load, request, service_clients, wait_until

PREFIX = "greenpool:"
AUTH = {"Authorization": "Bearer t0ken"}


def seed(admin, count=40):
    """``count`` hashes whose content names their key, so a crossed reply cannot go unnoticed."""
    expected = {}
    for i in range(count):
        name = f"m{i}"
        expected[name] = {"name": name, "n": str(i)}
        admin.hset(PREFIX + name, mapping=expected[name])
    return expected


def stats(service):
    return service.request("GET", "/stats").json()["pool"]


def per_worker(admin):
    """``{client name: [CLIENT LIST entries]}`` of the service's connections (one name per worker's pool)."""
    workers = {}
    for client in service_clients(admin):
        workers.setdefault(client["name"], []).append(client)
    return workers


def sample_connections(admin, samples, stop):
    """Every 10 ms while ``stop`` is not set: the number of service connections per worker."""
    while not stop.is_set():
        samples.append({name: len(clients) for name, clients in per_worker(admin).items()})
        gevent.sleep(0.01)


def load_and_sample(service, admin, expected, clients, requests):
    """Checked GET load while CLIENT LIST is sampled; returns (the load, the samples)."""
    samples, stop = [], gevent.event.Event()
    sampler = gevent.spawn(sample_connections, admin, samples, stop)
    load = Load(service.port, Dataset.of(expected), clients=clients, max_requests=requests, max_seconds=60).start()
    load.join(timeout=60)
    stop.set()
    sampler.get(timeout=5)
    return load, samples


def test_worker_holds_about_pool_multiplex_connections_under_load(gunicorn_factory, redis_url, admin):
    """Under load with 2 workers (POOL_MAX_SIZE=10, POOL_MULTIPLEX unset: 2), the server sees at most 2
    connections per worker, whatever the concurrency, and every reply is the asked key's own; the commands
    went on shared connections (many per write) and no request took an exclusive connection."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url}, workers=2)
    load, samples = load_and_sample(service, admin, expected, clients=64, requests=6000)
    assert load.failed == [] and load.ok == 6000
    peak = {}
    for sample in samples:
        for name, count in sample.items():
            peak[name] = max(peak.get(name, 0), count)
    assert len(peak) == 2, f"connections from {sorted(peak)}"
    assert all(1 <= count <= 2 for count in peak.values()), f"peak connections per worker: {peak}"
    assert max(peak.values()) == 2, f"under 64 clients a worker opens its second shared connection: {peak}"
    assert {c["cmd"] for c in service_clients(admin)} <= {"hgetall", "client|setname", "ping"}
    worker = stats(service)
    assert worker["mux_connections_num"] <= 2 and worker["exclusive_checkouts"] == 0
    assert worker["mux_commands"] >= 1000 and worker["mux_batches"] < worker["mux_commands"]
    print(f"multiplexed: peak connections per worker {peak}; {len(samples)} CLIENT LIST samples; one worker's "
          f"mean batch {worker['mux_commands'] / worker['mux_batches']:.1f} commands per write")


def test_every_route_takes_the_shared_path(gunicorn_factory, redis_url, admin):
    """Every route's Redis command (GET /, GET, PUT, PATCH, DELETE of /hashes/<name>, /readyz), the EVAL after a
    NOSCRIPT included, goes on a shared connection: one worker, one connection on the server, zero exclusive
    checkouts, and every command counted as multiplexed."""
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "API_TOKEN": "t0ken"})
    admin.hset("key", "seed", "1")
    calls = [
        ("GET", "/", None, 200), ("GET", "/readyz", None, 200),
        ("PUT", "/hashes/a", {"x": "1"}, 201), ("PATCH", "/hashes/a", {"y": "2"}, 200),
        ("GET", "/hashes/a", None, 200), ("DELETE", "/hashes/a", None, 204), ("GET", "/hashes/a", None, 404),
    ]
    for method, path, body, status in calls:
        assert service.request(method, path, body, AUTH).status == status, (method, path)
    admin.script_flush()  # the next write gets NOSCRIPT on EVALSHA, then runs EVAL: both shared
    assert service.request("PUT", "/hashes/b", {"z": "3"}, AUTH).status == 201
    assert admin.hgetall(PREFIX + "b") == {"z": "3"}
    worker = stats(service)
    assert worker["exclusive_checkouts"] == 0, worker
    # GET /, GET, GET: 1 each; /readyz: PING, then its probe script's EVALSHA (NOSCRIPT) and EVAL; the first PUT,
    # PATCH and DELETE of a script: EVALSHA (NOSCRIPT), EVAL; and the PUT after SCRIPT FLUSH: EVALSHA + EVAL again
    assert worker["mux_commands"] == 3 + 3 + 3 * 2 + 2, worker
    assert worker["pool_size"] == worker["mux_connections_num"] == 1
    assert len(service_clients(admin)) == 1


def test_pool_multiplex_0_is_the_exclusive_pool_as_before(gunicorn_factory, redis_url, admin):
    """POOL_MULTIPLEX=0: each command borrows a connection of its own, as before multiplexing: under load a worker
    opens more connections than 2 (up to POOL_MAX_SIZE, never more), nothing is multiplexed, every checkout is an
    exclusive one, and every reply is the asked key's own."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MULTIPLEX": 0, "POOL_MAX_SIZE": 6})
    load, samples = load_and_sample(service, admin, expected, clients=48, requests=4000)
    assert load.failed == [] and load.ok == 4000
    peak = max((count for sample in samples for count in sample.values()), default=0)
    assert 2 < peak <= 6, f"peak connections of the worker: {peak}"
    worker = stats(service)
    assert worker["mux_commands"] == worker["mux_connections_num"] == 0
    assert worker["exclusive_checkouts"] == worker["requests_num"] >= 4000
    print(f"POOL_MULTIPLEX=0: peak {peak} connections (POOL_MAX_SIZE 6)")


def _get(port, name, timeout=10.0):
    try:
        return name, request(port, "GET", f"/hashes/{name}", timeout=timeout)
    except OSError as exc:
        return name, exc


@pytest.mark.timing
def test_504_on_a_shared_connection_never_leaves_its_reply_for_another_request(gunicorn_factory, redis_url, admin):
    """Requests cancelled by REQUEST_TIMEOUT while their commands wait on a shared connection (Redis paused) get
    504; requests sent after them, queued behind their commands on the same connection, get their own hashes
    when Redis resumes: the cancelled commands' replies are read and dropped, never handed on. The shared
    connection stays in service (same connection on the server, nothing discarded)."""
    expected = seed(admin)
    names = sorted(expected)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "REQUEST_TIMEOUT": 0.8, "POOL_MULTIPLEX": 1})
    assert service.request("GET", f"/hashes/{names[0]}").status == 200
    (before,) = service_clients(admin)
    admin.client_pause(1200)  # every command the service sends in the next 1.2 s waits until then
    cancelled = [gevent.spawn(_get, service.port, name) for name in names[:10]]
    gevent.joinall(cancelled, timeout=5)
    assert [job.value[1].status for job in cancelled] == [504] * 10  # after 0.8 s, Redis still paused
    # sent about 0.8 s in, queued behind the cancelled commands on the one shared connection, answered when
    # Redis resumes at 1.2 s, within their own REQUEST_TIMEOUT
    behind = [gevent.spawn(_get, service.port, name) for name in names[10:20]]
    gevent.joinall(behind, timeout=5)
    for job in behind:
        name, reply = job.value
        assert reply.status == 200 and reply.json() == expected[name], (name, reply)
    wait_until(lambda: stats(service)["mux_replies_dropped"] == 10, 5, interval=0.05, what="10 replies dropped")
    worker = stats(service)
    assert worker["pool_size"] == 1 and worker["mux_connections_num"] == 1
    assert sum(worker[key] for key in worker if key.startswith("discarded_")) == 0, worker
    (after,) = service_clients(admin)
    assert after["id"] == before["id"], "the shared connection was replaced"
    for name in names[20:]:
        reply = service.request("GET", f"/hashes/{name}")
        assert reply.status == 200 and reply.json() == expected[name]
