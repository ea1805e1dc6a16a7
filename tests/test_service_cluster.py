"""The service under real gunicorn with ``REDIS_URL=redis+cluster://...``: a 3-master cluster on loopback ports.

Keys spread over every master and each read returns what was written; a slot moved under load loses nothing.
"""
import http.client
import json
import time
from urllib.parse import quote

import gevent
import pytest
from redis.exceptions import ResponseError

from pool.testing import service_clients

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "greenpool:"


@pytest.fixture
def service(gunicorn_factory, cluster):
    return gunicorn_factory(env={"REDIS_URL": cluster.url + "?socket_timeout=2", "API_TOKEN": TOKEN,
                                 "POOL_MAX_SIZE": "4", "REQUEST_TIMEOUT": "5", "MAX_FIELDS": "3000"}, workers=2)


def asking_calls(cluster, port):
    return cluster.admin(port).info("commandstats").get("cmdstat_asking", {}).get("calls", 0)


def test_routes_and_keys_spread_over_all_masters(service, cluster):
    """300 hashes PUT through the service land on all three masters (each key on the master serving its
    CLUSTER KEYSLOT); every GET returns what was written; PATCH, DELETE, /readyz and /stats work."""
    admin = cluster.admin(cluster.nodes[0].port)
    written = {f"u{i}": {"name": f"u{i}", "n": str(i)} for i in range(300)}

    def put(names):
        for name in names:
            reply = service.request("PUT", f"/hashes/{name}", written[name], AUTH)
            assert (reply.status, reply.json()) == (201, written[name])

    names = sorted(written)
    gevent.joinall([gevent.spawn(put, names[i::10]) for i in range(10)], timeout=30, raise_error=True)

    owners = {}
    for name in names:
        slot = admin.execute_command("CLUSTER", "KEYSLOT", PREFIX + name)
        owners.setdefault(cluster.slot_owner(slot), []).append(name)
    assert len(owners) == 3, {port: len(v) for port, v in owners.items()}
    for port, owned in owners.items():  # each key is on the master that owns its slot, and nowhere else
        node = cluster.admin(port)
        assert node.dbsize() >= len(owned)
        assert all(node.hgetall(PREFIX + name) == written[name] for name in owned[:20])

    def get(names):
        return [(name, service.request("GET", f"/hashes/{name}")) for name in names]

    jobs = [gevent.spawn(get, names[i::10]) for i in range(10)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    for job in jobs:
        for name, reply in job.value:
            assert (reply.status, reply.json()) == (200, written[name])

    assert service.request("PATCH", "/hashes/u1", {"lang": "en"}, AUTH).json() == {**written["u1"], "lang": "en"}
    big = {f"f{i}": str(i) for i in range(2500)}  # a PUT replaces every field (more than one HDEL chunk)
    assert service.request("PUT", "/hashes/u3", big, AUTH).status == 200
    assert service.request("PUT", "/hashes/u3", {"f7": "x", "new": "y"}, AUTH).json() == {"f7": "x", "new": "y"}
    assert service.request("GET", "/hashes/u3").json() == {"f7": "x", "new": "y"}
    assert service.request("DELETE", "/hashes/u2", headers=AUTH).status == 204
    assert service.request("GET", "/hashes/u2").status == 404
    owner = cluster.slot_owner(admin.execute_command("CLUSTER", "KEYSLOT", PREFIX + "str"))
    cluster.admin(owner).set(PREFIX + "str", "x")
    assert service.request("PUT", "/hashes/str", {"a": "1"}, AUTH).status == 409  # WRONGTYPE from the Lua script
    assert service.request("GET", "/readyz").json() == {"status": "ready"}
    stats = service.request("GET", "/stats").json()["pool"]  # one worker's node pools, added up
    assert stats["pool_max"] == 3 * 4 and stats["connections_num"] >= 1 and stats["requests_timeouts"] == 0
    # multiplexed node pools (POOL_MULTIPLEX unset: 2 with POOL_MAX_SIZE 4): the routes' commands and scripts
    # share, so a worker holds at most 2 connections per master, plus the one exclusive connection on which
    # redis-py's cluster client read the COMMAND table when it was made (a bare COMMAND does not share)
    assert stats["mux_commands"] >= 50 and stats["exclusive_checkouts"] <= 1  # one of 2 workers
    per_worker = {}
    for _, port in cluster.addresses:
        for client in service_clients(cluster.admin(port)):
            per_worker.setdefault(client["name"], []).append(port)
    for name, ports in per_worker.items():
        counts = sorted(ports.count(port) for port in set(ports))
        assert len(ports) <= 3 * 2 + 1 and counts[-1] <= 3 and counts[:-1] == [c for c in counts[:-1] if c <= 2], \
            (name, counts)
    service.stop()  # worker_exit closes every node pool of every worker
    assert service.log().count("closed its Redis pool") == 2
    assert [service_clients(cluster.admin(port)) for _, port in cluster.addresses] == [[], [], []]


def test_slot_migration_under_load_loses_nothing(service, cluster):
    """Move one slot (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE) while clients PUT, PATCH and GET
    hashes in it through the service: no request fails, every reply is the client's own, and afterwards every
    hash holds its last written value, on the new owner."""
    migrate_under_load(service, cluster, ["{hot}"], moves=1, clients=8)


@pytest.mark.slow
def test_many_slot_migrations_under_heavier_load(service, cluster):
    """Four slots, each moved round all three masters in turn, under 24 clients."""
    migrate_under_load(service, cluster, ["{a}", "{b}", "{c}", "{d}"], moves=3, clients=24)


def migrate_under_load(service, cluster, tags, moves, clients, pre=150):
    admin = cluster.admin(cluster.nodes[0].port)
    slots = {tag: admin.execute_command("CLUSTER", "KEYSLOT", PREFIX + tag) for tag in tags}
    for tag in tags:
        for i in range(pre):  # present before the move, so MIGRATE has work to do
            assert service.request("PUT", "/hashes/" + quote(f"{tag}pre{i}"), {"i": str(i)}, AUTH).status in (200, 201)
    last, errors, stop = {}, [], []

    def client(index):
        tag = tags[index % len(tags)]
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        try:
            for seq in range(1_000_000):  # bounded; stopped long before
                if stop:
                    return
                name = f"{tag}c{index}k{seq % 10}"
                value = {"name": name, "seq": str(seq)}
                method = "PUT" if seq % 2 else "PATCH"
                for step, (verb, body) in enumerate(((method, value), ("GET", None))):
                    payload = json.dumps(body).encode() if body else None
                    headers = {**AUTH, "Content-Type": "application/json"} if body else {}
                    try:
                        conn.request(verb, "/hashes/" + quote(name), body=payload, headers=headers)
                        response = conn.getresponse()
                        got = response.read()
                    except Exception as exc:  # noqa: BLE001 -- any failure is the finding
                        errors.append(f"{verb} {name}: {exc!r}")
                        conn.close()
                        return
                    if response.status not in (200, 201) or json.loads(got) != value:
                        errors.append(f"{verb} {name}: {response.status} {got[:200]!r}")
                    elif step == 0:
                        last[name] = value
                gevent.sleep(0.001)
        finally:
            conn.close()

    greenlets = [gevent.spawn(client, i) for i in range(clients)]
    gevent.sleep(0.3)
    asked = 0
    for _ in range(moves):
        for _tag, slot in slots.items():
            source = cluster.slot_owner(slot)
            ports = [port for _, port in cluster.addresses]
            target = ports[(ports.index(source) + 1) % len(ports)]  # round the masters
            before = asking_calls(cluster, target)
            started = time.monotonic()
            moved = cluster.migrate_slot(slot, target, batch=10, pause=0.01)
            print(f"slot {slot} moved {source} -> {target}: {moved} keys in {time.monotonic() - started:.2f}s")
            asked += asking_calls(cluster, target) - before
            assert moved >= pre and cluster.slot_owner(slot) == target
            assert cluster.admin(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            gevent.sleep(0.2)
    gevent.sleep(0.1)
    stop.append(True)
    gevent.joinall(greenlets, timeout=15, raise_error=True)
    print(f"{len(last)} hashes written under load, {asked} ASK redirections")
    assert errors == []
    assert asked > 0  # the load did run into the migrations
    for name, value in last.items():
        assert service.request("GET", "/hashes/" + quote(name)).json() == value, name
        owner = cluster.slot_owner(slots[name[:name.index("}") + 1]])
        assert cluster.admin(owner).hgetall(PREFIX + name) == value
    for tag in tags:
        for i in range(pre):
            assert service.request("GET", "/hashes/" + quote(f"{tag}pre{i}")).json() == {"i": str(i)}


def test_writes_in_a_slot_halfway_through_a_migration_take_effect_whole(service, cluster):
    """A slot halfway through a migration (MIGRATING on its owner, IMPORTING on the target, half its keys moved):
    PUT that drops a field, PATCH and DELETE, on keys on either side and on new keys, each take effect whole on
    exactly one node (ASK to the target for a key moved or new). The scripts never delete their key and write it
    again: such a script is refused halfway in a migrating slot ("non local key"), its DEL done, as the control
    at the end shows."""
    admin = cluster.admin(cluster.nodes[0].port)
    slot = admin.execute_command("CLUSTER", "KEYSLOT", PREFIX + "{mig}")
    source = cluster.slot_owner(slot)
    ports = [port for _, port in cluster.addresses]
    target = ports[(ports.index(source) + 1) % len(ports)]
    names = [f"{{mig}}k{i}" for i in range(10)]
    for name in names:
        assert service.request("PUT", "/hashes/" + quote(name), {"old": "1", "keep": "2"}, AUTH).status == 201
    source_admin, target_admin = cluster.admin(source), cluster.admin(target)
    control = PREFIX + "{mig}control"
    source_admin.hset(control, "a", "1")  # before MIGRATING: then a new key there is redirected to the target
    try:
        target_admin.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        source_admin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
        source_admin.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS",
                                     *[PREFIX + name for name in names[:5]])
        expected = {}
        for name in names:
            assert service.request("PUT", "/hashes/" + quote(name), {"keep": "3", "new": "4"}, AUTH).status == 200
            reply = service.request("PATCH", "/hashes/" + quote(name), {"more": "5"}, AUTH)
            expected[name] = {"keep": "3", "new": "4", "more": "5"}
            assert (reply.status, reply.json()) == (200, expected[name])
        for i in range(3):
            fresh = f"{{mig}}fresh{i}"
            assert service.request("PATCH", "/hashes/" + quote(fresh), {"a": str(i)}, AUTH).status == 201
            expected[fresh] = {"a": str(i)}
        for name in (names[0], names[9]):  # one moved, one not
            assert service.request("DELETE", "/hashes/" + quote(name), headers=AUTH).status == 204
            expected[name] = None
        def keys_on(node):  # a plain read of a key in the slot would be redirected (ASK, MOVED)
            return set(node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000))

        on_source, on_target = keys_on(source_admin), keys_on(target_admin)
        assert not on_source & on_target
        for name, fields in expected.items():
            key = PREFIX + name
            if fields is None:
                assert key not in on_source | on_target, name
            elif key in on_source:
                assert source_admin.hgetall(key) == fields, name
            else:
                asking = target_admin.pipeline(transaction=False)  # ASKING and the read on one connection
                asking.execute_command("ASKING").hgetall(key)
                assert key in on_target and asking.execute()[1] == fields, name
        assert len(on_target) >= 6 and len(on_source) >= 3  # both sides took writes

        with pytest.raises(ResponseError, match="non local key"):
            source_admin.eval("redis.call('DEL', KEYS[1]); return redis.call('HSET', KEYS[1], 'b', '2')", 1, control)
        assert control not in keys_on(source_admin) | keys_on(target_admin)  # the DEL stayed done
    finally:
        cluster.migrate_slot(slot, target)  # finish the move: the module's other tests need a settled cluster
    for name, fields in expected.items():
        assert service.request("GET", "/hashes/" + quote(name)).status == (404 if fields is None else 200)
