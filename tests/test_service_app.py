"""The WSGI app in-process against a real redis-server: every route, every refusal, and Redis unchanged after
each refused write. (tests/test_service_gunicorn.py runs the same app under real gunicorn processes.)
"""
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from pool.testing import dump_all, wsgi_call
from pool.testing.wsgi import JSON
from wsgi_app.errors import HTTPError
from wsgi_app.settings import SettingsError, load, redact_url
from wsgi_app.validation import Limits, parse_key

call = wsgi_call  # (status code, headers, decoded JSON or None)
snapshot = dump_all  # everything in Redis, exactly (DUMP of every key)


@pytest.fixture
def app(make_app):
    return make_app()


def test_crud_roundtrip(app, admin):
    """PUT creates (201) then replaces (200), PATCH merges, GET reads, DELETE removes (204, then 404)."""
    assert call(app, "PUT", "/hashes/u1", {"a": "1", "b": "2"})[::2] == (201, {"a": "1", "b": "2"})
    assert admin.hgetall("greenpool:u1") == {"a": "1", "b": "2"}
    assert call(app, "PUT", "/hashes/u1", {"c": "3"})[::2] == (200, {"c": "3"})
    assert admin.hgetall("greenpool:u1") == {"c": "3"}
    assert call(app, "PATCH", "/hashes/u1", {"d": "4", "c": "é"})[::2] == (200, {"c": "é", "d": "4"})
    assert call(app, "GET", "/hashes/u1")[::2] == (200, {"c": "é", "d": "4"})
    assert call(app, "PATCH", "/hashes/new", {"x": "1"})[::2] == (201, {"x": "1"})
    assert call(app, "DELETE", "/hashes/u1")[:1] == (204,)
    assert call(app, "DELETE", "/hashes/u1")[0] == 404
    assert call(app, "GET", "/hashes/u1")[0] == 404
    assert not admin.exists("greenpool:u1")


@pytest.mark.parametrize("query, resp", [("", 2), ("protocol=3", 3), ("protocol=2", 2)])
def test_the_service_speaks_resp2_unless_the_url_names_a_protocol(make_app, redis_url, admin, query, resp):
    """The service's connections use RESP2 (wsgi_app.worker_pool.SERVICE_PROTOCOL) unless REDIS_URL's
    ``protocol`` says otherwise; every route answers the same either way (here a read, a merge, a replace)."""
    url = redis_url + ("&" if "?" in redis_url else "?") + query if query else redis_url
    app = make_app(REDIS_URL=url, POOL_MULTIPLEX=1)
    admin.hset("key", mapping={"f": "v", "é": "ü"})
    assert call(app, "GET", "/")[::2] == (200, {"f": "v", "é": "ü"})
    assert call(app, "PATCH", "/hashes/p", {"a": "1"})[::2] == (201, {"a": "1"})
    assert call(app, "PUT", "/hashes/p", {"b": "2"})[::2] == (200, {"b": "2"})
    clients = [c for c in admin.client_list() if c.get("name", "").startswith("greenpool:")]
    assert clients and {int(c["resp"]) for c in clients} == {resp}, clients


def test_root_health_ready_stats(app, admin):
    """GET / is HGETALL of DEFAULT_KEY (unprefixed, {} when missing); healthz, readyz and stats answer 200."""
    assert call(app, "GET", "/")[::2] == (200, {})
    admin.hset("key", mapping={"hello": "world"})
    assert call(app, "GET", "/")[::2] == (200, {"hello": "world"})
    assert call(app, "GET", "/healthz")[::2] == (200, {"status": "ok"})
    assert call(app, "GET", "/readyz")[::2] == (200, {"status": "ready"})
    status, _, stats = call(app, "GET", "/stats")
    assert status == 200 and isinstance(stats["pid"], int) and "pool_size" in stats["pool"]


def test_key_prefix_and_unicode_keys(make_app, admin):
    """Keys from URLs live under KEY_PREFIX; a UTF-8 percent-decoded name (latin-1 in PATH_INFO) round-trips."""
    app = make_app(KEY_PREFIX="app:")
    path = "/hashes/" + "café/1".encode().decode("latin-1")
    assert call(app, "PUT", path, {"a": "1"})[0] == 201
    assert admin.hgetall("app:café/1") == {"a": "1"}


BAD_WRITES = [
    # (method, path, body, content type, extra headers, status, error)
    ("PUT", "/hashes/k", b"{not json", JSON, {}, 400, "invalid_json"),
    ("PUT", "/hashes/k", b"\xff\xfe", JSON, {}, 400, "invalid_json"),
    ("PUT", "/hashes/k", [1, 2], JSON, {}, 400, "invalid_body"),
    ("PUT", "/hashes/k", "text", JSON, {}, 400, "invalid_body"),
    ("PUT", "/hashes/k", {}, JSON, {}, 400, "invalid_body"),
    ("PUT", "/hashes/k", {"a": 1}, JSON, {}, 400, "invalid_body"),
    ("PATCH", "/hashes/k", {"a": None}, JSON, {}, 400, "invalid_body"),
    ("PATCH", "/hashes/k", {"a": {"b": "c"}}, JSON, {}, 400, "invalid_body"),
    ("PUT", "/hashes/k", b'{"a":"\\ud800"}', JSON, {}, 400, "invalid_body"),  # a lone surrogate: not Unicode
    ("PATCH", "/hashes/k", b'{"\\udfff":"v"}', JSON, {}, 400, "invalid_body"),
    ("PUT", "/hashes/k", {f"f{i}": "v" for i in range(11)}, JSON, {}, 400, "too_many_fields"),
    ("PUT", "/hashes/", {"a": "1"}, JSON, {}, 400, "invalid_key"),
    ("PUT", "/hashes/" + "k" * 65, {"a": "1"}, JSON, {}, 400, "invalid_key"),
    ("PUT", "/hashes/a\x00b", {"a": "1"}, JSON, {}, 400, "invalid_key"),
    ("PUT", "/hashes/a\nb", {"a": "1"}, JSON, {}, 400, "invalid_key"),
    ("PUT", "/hashes/\xff", {"a": "1"}, JSON, {}, 400, "invalid_key"),  # byte 0xff: not UTF-8
    ("PUT", "/hashes/k", {"a": "x" * 300}, JSON, {}, 413, "body_too_large"),
    ("PUT", "/hashes/k", {"a": "1"}, "text/plain", {}, 415, "unsupported_media_type"),
    ("PATCH", "/hashes/k", {"a": "1"}, None, {}, 415, "unsupported_media_type"),
    ("POST", "/hashes/k", {"a": "1"}, JSON, {}, 405, "method_not_allowed"),
    ("PUT", "/nope", {"a": "1"}, JSON, {}, 404, "not_found"),
    ("PUT", "/hashes/k", {"a": "1"}, JSON, {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
    ("PUT", "/hashes/k", {"a": "1"}, JSON, {"Authorization": "secret"}, 401, "unauthorized"),
    ("PATCH", "/hashes/k", {"a": "1"}, JSON, {}, 401, "unauthorized"),
    ("DELETE", "/hashes/k", None, None, {}, 401, "unauthorized"),
    ("PUT", "/hashes/str", {"a": "1"}, JSON, {"Authorization": "Bearer secret"}, 409, "wrong_type"),
    ("PATCH", "/hashes/str", {"a": "1"}, JSON, {"Authorization": "Bearer secret"}, 409, "wrong_type"),
    ("DELETE", "/hashes/str", None, None, {"Authorization": "Bearer secret"}, 409, "wrong_type"),
    ("DELETE", "/hashes/list", None, None, {"Authorization": "Bearer secret"}, 409, "wrong_type"),
]


@pytest.mark.parametrize("method, path, body, content_type, headers, status, error", BAD_WRITES)
def test_refused_writes_change_nothing(make_app, admin, method, path, body, content_type, headers, status, error):
    """Every refused write answers its 4xx with a JSON error body, and Redis is byte-for-byte unchanged."""
    app = make_app(MAX_BODY_BYTES=200, MAX_KEY_BYTES=64, MAX_FIELDS=10, API_TOKEN="secret")
    admin.hset("greenpool:k", mapping={"keep": "me"})
    admin.set("greenpool:str", "a string")
    admin.rpush("greenpool:list", "x")
    before = snapshot(admin)
    if "Authorization" not in headers and error not in ("unauthorized",):
        headers = {**headers, "Authorization": "Bearer secret"}
    got_status, got_headers, got = call(app, method, path, body, content_type, headers)
    assert (got_status, got["error"]) == (status, error), got
    assert isinstance(got["detail"], str) and got["detail"]
    assert snapshot(admin) == before
    if status == 405:
        assert got_headers["Allow"] == "GET, HEAD, PUT, PATCH, DELETE"
    if status == 401:
        assert got_headers["WWW-Authenticate"].startswith("Bearer")


def test_oversized_body_refused_before_reading(app, admin):
    """A Content-Length over MAX_BODY_BYTES is refused with 413 without reading the body."""
    status, _, got = call(app, "PUT", "/hashes/k", b"", JSON, content_length=10**9)
    assert (status, got["error"]) == (413, "body_too_large")


def test_reads_of_wrong_type_and_405_on_fixed_routes(app, admin):
    """GET of a non-hash key is 409; wrong methods on fixed routes are 405 with their Allow header."""
    admin.set("greenpool:s", "x")
    assert call(app, "GET", "/hashes/s")[0] == 409
    status, headers, got = call(app, "DELETE", "/healthz")
    assert (status, headers["Allow"], got["error"]) == (405, "GET, HEAD", "method_not_allowed")
    assert call(app, "GET", "/hashes")[0] == 404


def test_token_allows_writes_and_reads_need_none(make_app):
    """With API_TOKEN set, a write with the right bearer token passes; reads never need it."""
    app = make_app(API_TOKEN="s3cret")
    assert call(app, "PUT", "/hashes/t", {"a": "1"}, headers={"Authorization": "Bearer s3cret"})[0] == 201
    assert call(app, "GET", "/hashes/t")[0] == 200


def test_redis_down_is_503_fast(make_app, redis_server):
    """Redis unreachable: 503 with Retry-After, quickly; readyz says 503 too."""
    app = make_app(RETRY_AFTER=3)
    redis_server.stop()
    with gevent.Timeout(2):
        status, headers, got = call(app, "GET", "/hashes/k")
        assert (status, headers["Retry-After"], got["error"]) == (503, "3", "unavailable")
        assert call(app, "GET", "/readyz")[0] == 503


@pytest.mark.timing
def test_pool_exhausted_503_and_request_timeout_504(make_app, redis_server, admin):
    """A hung Redis: the request holding the only connection gets 504 at REQUEST_TIMEOUT, a queued one gets
    503 at POOL_TIMEOUT; afterwards replies are right (the cancelled connection was discarded, not reused).
    """
    app = make_app(POOL_MAX_SIZE=1, POOL_TIMEOUT=0.2, REQUEST_TIMEOUT=0.6)
    admin.hset("greenpool:a", mapping={"v": "a"})
    admin.hset("greenpool:b", mapping={"v": "b"})
    assert call(app, "GET", "/hashes/a")[0] == 200  # open the one connection
    redis_server.pause()
    try:
        slow = gevent.spawn(call, app, "GET", "/hashes/a")
        gevent.sleep(0.05)
        started = gevent.get_hub().loop.now()
        status, headers, got = call(app, "GET", "/hashes/b")
        waited = gevent.get_hub().loop.now() - started
        assert (status, got["error"], headers["Retry-After"]) == (503, "unavailable", "1")
        assert 0.15 <= waited < 0.6
        status, _, got = slow.get(timeout=2)
        assert (status, got["error"]) == (504, "timeout")
    finally:
        redis_server.resume()
    for name in "ab" * 5:
        assert call(app, "GET", f"/hashes/{name}")[::2] == (200, {"v": name})
    assert app.pool.get().get_stats()["discarded_cancelled"] >= 1


def test_settings_errors_name_the_variable():
    """An invalid setting raises SettingsError naming the variable."""
    cases = {"POOL_MAX_SIZE": "ten", "POOL_MIN_SIZE": "-1", "POOL_TIMEOUT": "nan", "REQUEST_TIMEOUT": "-1",
             "MAX_BODY_BYTES": "1k", "REDIS_URL": "http://example.org", "MAX_FIELDS": "0"}
    for name, value in cases.items():
        with pytest.raises(SettingsError, match=name):
            load({name: value})
    with pytest.raises(SettingsError, match="POOL_MIN_SIZE"):
        load({"POOL_MAX_SIZE": "2", "POOL_MIN_SIZE": "3"})


def test_pool_multiplex_setting():
    """POOL_MULTIPLEX: unset it is 2, or what POOL_MAX_SIZE leaves room for (one connection at least stays for
    exclusive commands); set, it must be an integer >= 0 below POOL_MAX_SIZE, else SettingsError naming it;
    0 turns multiplexing off."""
    assert load({}).pool_multiplex == 2
    assert [load({"POOL_MAX_SIZE": str(size)}).pool_multiplex for size in (1, 2, 3)] == [0, 1, 2]
    assert load({"POOL_MULTIPLEX": "0"}).pool_multiplex == 0
    assert load({"POOL_MULTIPLEX": "9", "POOL_MAX_SIZE": "10"}).pool_multiplex == 9
    for env in ({"POOL_MULTIPLEX": "-1"}, {"POOL_MULTIPLEX": "two"}, {"POOL_MULTIPLEX": "10"},
                {"POOL_MULTIPLEX": "2", "POOL_MAX_SIZE": "2"}):
        with pytest.raises(SettingsError, match="POOL_MULTIPLEX"):
            load(env)


def test_pool_multiplex_reaches_the_pool(make_app, admin):
    """The worker's pool gets POOL_MULTIPLEX: its commands go on shared connections (0: exclusive ones)."""
    admin.hset("key", mapping={"a": "1"})
    try:
        for multiplex in (2, 0):
            app = make_app(POOL_MULTIPLEX=multiplex)
            assert call(app, "GET", "/")[::2] == (200, {"a": "1"})
            pool = app.pool.get()
            stats = pool.get_stats()
            assert pool.multiplex == multiplex
            assert (stats["mux_commands"], stats["exclusive_checkouts"]) == ((1, 0) if multiplex else (0, 1))
    finally:
        admin.delete("key")


def test_zero_means_off_for_the_service_settings_too(make_app, admin):
    """REQUEST_TIMEOUT=0 is no deadline (a literal 0 s would answer 504 at the first wait on Redis) and
    POOL_MAX_WAITING=0 no limit, as 0 means off for the pool's options; POOL_TIMEOUT=0 is "do not wait"."""
    admin.hset("key", mapping={"zero": "off"})
    try:
        app = make_app(REQUEST_TIMEOUT=0, POOL_MAX_WAITING=0, POOL_TIMEOUT=0)
        assert call(app, "GET", "/")[::2] == (200, {"zero": "off"})
        assert app.request_timeout is None and app.pool.get().max_waiting == 0 and app.pool.get().timeout == 0
    finally:
        admin.delete("key")


def test_every_redis_url_form_is_checked_by_the_pool_parser():
    """REDIS_URL is parsed in full by pool.urls at start-up, single-server URLs included: a bad port, db or option
    value is one SettingsError line naming REDIS_URL, without the password."""
    for url in ("redis://:hunter2@h:notaport/0", "redis://:hunter2@h/x", "unix:///tmp/r.sock?max_size=0",
                "redis://:hunter2@h/0?timeout=soon", "rediss://:hunter2@h/0?bogus=1"):
        with pytest.raises(SettingsError, match="^REDIS_URL is invalid: ") as refused:
            load({"REDIS_URL": url})
        assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)


def test_settings_defaults_and_embedded_url(tmp_path):
    """Without REDIS_URL the URL is the embedded server's socket in REDIS_DATA_DIR."""
    s = load({"REDIS_DATA_DIR": str(tmp_path)})
    assert s.embedded and s.redis_url == f"unix://{tmp_path}/redis.sock"
    assert (s.key_prefix, s.default_key, s.pool_max_size) == ("greenpool:", "key", 10)
    s = load({"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert not s.embedded and s.redis_url == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
    ("rediss://user:hunter2@h:1/0", "rediss://user:***@h:1/0"),
    ("redis://h:1/0?password=hunter2&db=1", "redis://h:1/0?password=***&db=1"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_parse_key_limits():
    limits = Limits(load({"MAX_KEY_BYTES": "4", "REDIS_URL": "redis://h/0"}))
    assert parse_key("abcd", limits) == "abcd"
    assert parse_key("é".encode().decode("latin-1"), limits) == "é"
    for bad in ("", "abcde", "a\x7fb", "\x85"):
        with pytest.raises(HTTPError):
            parse_key(bad, limits)


def test_import_patches_first_and_opens_nothing():
    """In a fresh interpreter, importing wsgi_app monkey-patches (socket, ssl, threading) and opens no Redis
    connection and creates no pool: the pool is made in the worker, on first use.
    """
    code = (
        "import wsgi_app, gevent.monkey as m;"
        "assert all(m.is_module_patched(n) for n in ('socket', 'ssl', 'threading', 'select')), 'not patched';"
        "assert wsgi_app.app.pool.peek() is None, 'pool created at import';"
        "print('ok')"
    )
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
