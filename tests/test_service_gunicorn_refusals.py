"""Redis refusing the service, through real gunicorn: a server at ``maxclients`` under load, 503 bodies over HTTP
(curl) that name no address or password, and /readyz of a read-only replica.
"""
import subprocess

import redis

from pool.testing import Dataset, Load, service_clients, wait_until


def curl(*args):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=10, check=True).stdout


def test_redis_at_maxclients_no_request_fails(gunicorn_factory, redis_factory):
    """Redis lets the worker open 4 connections of its POOL_MAX_SIZE 20 and refuses the rest ("max number of
    clients reached"); under 40 concurrent clients no request fails: those that could not open a connection wait
    for one of the open ones (it used to be 57% failures at once). Exclusive connections (POOL_MULTIPLEX=0):
    multiplexed, a worker opens only its few shared ones and never meets the limit."""
    server = redis_factory("--maxclients", "5")
    admin = redis.Redis(port=server.port, decode_responses=True)  # one of the 5
    expected = {f"h{i}": {"name": f"h{i}", "n": str(i)} for i in range(40)}
    for name, fields in expected.items():
        admin.hset("greenpool:" + name, mapping=fields)
    service = gunicorn_factory(env={"REDIS_URL": server.url, "POOL_MAX_SIZE": 20, "POOL_TIMEOUT": 5,
                                         "POOL_MULTIPLEX": 0})
    load = Load(service.port, Dataset.of(expected), clients=40, max_requests=6000, max_seconds=30).start()
    load.join(60)
    load.stop()
    assert load.failed == [] and load.ok == 6000
    stats = service.request("GET", "/stats").json()["pool"]
    assert stats["connections_errors"] >= 1, stats  # Redis did refuse connections
    assert stats["pool_size"] <= 4 and len(service_clients(admin)) <= 4
    assert "max number of clients reached" in service.log()


def test_503_bodies_over_http_name_no_address_nor_password(gunicorn_factory, redis_server, admin):
    """Redis down: curl sees 503 with Retry-After and our words only (no host, port or password); the error
    log has redis-py's details, the password replaced by ***."""
    admin.config_set("requirepass", "hunter2-s3cret")
    port = redis_server.port
    service = gunicorn_factory(env={"REDIS_URL": f"redis://:hunter2-s3cret@127.0.0.1:{port}/0", "API_TOKEN": "t"})
    base = f"http://127.0.0.1:{service.port}"
    assert service.request("GET", "/readyz").status == 200
    redis_server.stop()
    for args in (["-i", f"{base}/hashes/h"], ["-i", f"{base}/readyz"],
                 ["-i", "-X", "PUT", "-H", "Authorization: Bearer t", "-H", "Content-Type: application/json",
                  "-d", '{"a": "1"}', f"{base}/hashes/h"]):
        out = curl(*args)
        assert out.startswith("HTTP/1.1 503") and "Retry-After: 1" in out, out
        body = out.rpartition("\r\n\r\n")[2]
        assert '"error":"unavailable"' in body and "Redis cannot be reached" in body, body
        assert not [word for word in (str(port), "127.0.0.1", "hunter2", "Error", "connect") if word in body], body
    wait_until(lambda: "503 unavailable on GET /hashes/h" in service.log(), 5, "the refusal in the log")
    service.stop()
    log = service.log()
    assert f"127.0.0.1:{port}" in log and "hunter2" not in log


def test_readyz_of_a_replica_is_503_over_http(gunicorn_factory, redis_factory):
    """The service pointed at a read-only replica: /readyz answers 503 redis_read_only (a load balancer takes
    the instance out), writes 503 with nothing changed, reads 200."""
    master = redis_factory()
    replica = redis_factory("--replicaof", "127.0.0.1", str(master.port))
    master_admin = redis.Redis(port=master.port, decode_responses=True)
    master_admin.hset("greenpool:h", mapping={"a": "1"})
    replica_admin = redis.Redis(port=replica.port, decode_responses=True)
    wait_until(lambda: replica_admin.hgetall("greenpool:h") == {"a": "1"}, 10, "the replica in sync")
    service = gunicorn_factory(env={"REDIS_URL": replica.url})
    reply = service.request("GET", "/readyz")
    assert (reply.status, reply.json()["error"], reply.headers.get("Retry-After")) == (503, "redis_read_only", "1")
    reply = service.request("PATCH", "/hashes/h", {"b": "2"})
    assert (reply.status, reply.json()["error"]) == (503, "redis_read_only")
    assert service.request("GET", "/hashes/h").json() == {"a": "1"} == replica_admin.hgetall("greenpool:h")
    assert master_admin.hgetall("greenpool:h") == {"a": "1"}
