"""Sizes stay bounded: a hash holds at most MAX_HASH_FIELDS fields and MAX_HASH_BYTES bytes of names and values,
checked inside PATCH's script (409 hash_too_large, nothing changed), so no reply (GET's, PATCH's: the whole hash)
grows past the bound however many PATCHes arrive. In-process against a real redis-server, and the issue's
scenario (hundreds of PATCHes growing one hash) through real gunicorn.
"""
import json
import re

import pytest

from pool.testing import dump_all, wsgi_call
from wsgi_app.settings import SettingsError, load


def fields(start, count, value="v"):
    return {f"f{i:05d}": value for i in range(start, start + count)}


def test_patch_cannot_grow_a_hash_past_max_hash_fields(make_app, admin):
    """PATCHes add fields up to MAX_HASH_FIELDS exactly; the one that would pass it is 409 hash_too_large and
    changes nothing; updating existing fields of a full hash still works, and so does a PUT that shrinks it."""
    app = make_app(MAX_FIELDS=10, MAX_HASH_FIELDS=25)
    assert wsgi_call(app, "PATCH", "/hashes/h", fields(0, 10))[0] == 201
    assert wsgi_call(app, "PATCH", "/hashes/h", fields(10, 10))[0] == 200
    before = dump_all(admin)
    status, _, got = wsgi_call(app, "PATCH", "/hashes/h", fields(20, 10))
    assert (status, got["error"]) == (409, "hash_too_large"), got
    assert "30 fields" in got["detail"] and "MAX_HASH_FIELDS 25" in got["detail"]
    assert dump_all(admin) == before
    status, _, got = wsgi_call(app, "PATCH", "/hashes/h", fields(20, 5))  # exactly 25
    assert status == 200 and len(got) == 25
    assert wsgi_call(app, "PATCH", "/hashes/h", fields(25, 1))[0] == 409
    status, _, got = wsgi_call(app, "PATCH", "/hashes/h", fields(0, 10, "updated"))  # no new field: allowed
    assert status == 200 and len(got) == 25 and got["f00000"] == "updated"
    assert wsgi_call(app, "PUT", "/hashes/h", fields(0, 10))[::2] == (200, fields(0, 10))
    assert admin.hlen("greenpool:h") == 10


def test_patch_cannot_grow_a_hash_past_max_hash_bytes(make_app, admin):
    """MAX_HASH_BYTES counts field names and values: a PATCH that would pass it is refused whole, one that
    replaces a value with a shorter one passes."""
    app = make_app(MAX_BODY_BYTES=200, MAX_HASH_BYTES=300)
    assert wsgi_call(app, "PATCH", "/hashes/h", {"a": "x" * 140})[0] == 201  # 141 bytes
    assert wsgi_call(app, "PATCH", "/hashes/h", {"b": "x" * 140})[0] == 200  # 282 bytes
    before = dump_all(admin)
    status, _, got = wsgi_call(app, "PATCH", "/hashes/h", {"c": "x" * 20})  # 303 bytes
    assert (status, got["error"]) == (409, "hash_too_large") and "303 bytes" in got["detail"], got
    assert wsgi_call(app, "PATCH", "/hashes/h", {"a": "x" * 160})[0] == 409  # a longer value: 302 bytes
    assert dump_all(admin) == before
    assert wsgi_call(app, "PATCH", "/hashes/h", {"a": "short", "c": "x" * 20})[0] == 200  # 6 + 141 + 21 bytes


def test_a_hash_over_the_bounds_written_elsewhere_is_not_served(make_app, admin):
    """A hash made past the bounds by another Redis client: GET (and GET /) answer 409 hash_too_large instead of
    a reply of unbounded size; DELETE still removes it."""
    app = make_app(MAX_FIELDS=10, MAX_HASH_FIELDS=50, MAX_BODY_BYTES=1000, MAX_HASH_BYTES=5000)
    admin.hset("greenpool:wide", mapping=fields(0, 51))
    admin.hset("greenpool:heavy", mapping={"a": "x" * 5000})
    admin.hset("key", mapping=fields(0, 60))
    for path in ("/hashes/wide", "/hashes/heavy", "/"):
        status, _, got = wsgi_call(app, "GET", path)
        assert (status, got["error"]) == (409, "hash_too_large"), (path, got)
    admin.delete("key")
    assert wsgi_call(app, "GET", "/")[::2] == (200, {})
    admin.hset("greenpool:full", mapping=fields(0, 50))
    assert len(wsgi_call(app, "GET", "/hashes/full")[2]) == 50
    assert wsgi_call(app, "DELETE", "/hashes/wide")[0] == 204


def test_the_bounds_are_at_least_one_write_and_default_sanely():
    """MAX_HASH_FIELDS defaults to MAX_FIELDS and MAX_HASH_BYTES to 1 MiB: the largest reply is about 1 MiB of
    names and values. Either set below what one PUT may write (MAX_FIELDS, MAX_BODY_BYTES) stops start-up."""
    settings = load({"REDIS_URL": "redis://h/0"})
    assert (settings.max_hash_fields, settings.max_hash_bytes) == (1000, 1024 * 1024)
    assert load({"REDIS_URL": "redis://h/0", "MAX_FIELDS": "3000"}).max_hash_fields == 3000
    assert load({"REDIS_URL": "redis://h/0", "MAX_BODY_BYTES": str(4 << 20)}).max_hash_bytes == 4 << 20
    for env, message in (({"MAX_HASH_FIELDS": "999"}, "MAX_HASH_FIELDS must be >= MAX_FIELDS (1000), got 999"),
                         ({"MAX_HASH_BYTES": "1000"}, "MAX_HASH_BYTES must be >= MAX_BODY_BYTES (65536), got 1000"),
                         ({"MAX_HASH_FIELDS": "many"}, "MAX_HASH_FIELDS must be an integer")):
        with pytest.raises(SettingsError, match=re.escape(message)):
            load({"REDIS_URL": "redis://h/0", **env})


def test_hundreds_of_patches_leave_every_reply_bounded(gunicorn_factory, redis_server, admin):
    """The issue's scenario under real gunicorn with the default limits: 200 PATCHes of 1000 new fields each
    would make a 200,000-field hash (a 7.7 MB reply to every later PATCH); the hash stops at MAX_HASH_FIELDS,
    every later one is 409 with nothing changed, and no reply is larger than the bound allows."""
    service = gunicorn_factory(env={"REDIS_URL": redis_server.url})
    bound = 1024 * 1024 * 6 + 1000 * 8  # MAX_HASH_BYTES, each byte escaped at most 6x, plus JSON punctuation
    statuses, largest = {}, 0
    for batch in range(200):
        body = {f"b{batch:03d}f{i:04d}": "v" * 20 for i in range(1000)}
        reply = service.request("PATCH", "/hashes/wide", body)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        largest = max(largest, len(reply.body))
        if reply.status == 409:
            assert reply.json()["error"] == "hash_too_large"
    assert statuses == {201: 1, 409: 199}, statuses
    assert admin.hlen("greenpool:wide") == 1000
    reply = service.request("GET", "/hashes/wide")
    assert reply.status == 200 and len(json.loads(reply.body)) == 1000
    assert max(largest, len(reply.body)) < bound
    print(f"200 PATCHes: {statuses}, largest reply {max(largest, len(reply.body))} bytes")
