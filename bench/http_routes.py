"""The routes section of ``bench.http_bench``: every ``/hashes/<name>`` method, driven by ``bench/lua/routes.lua``.

Each route is one method on keys the benchmark creates before the runs, so that every request does the same
work on the service and on the stock-pool app (which runs the service's own write scripts, on redis-py's pool):

==========  =========================================================  ================================
route       each request                                                success statuses
==========  =========================================================  ================================
``get``     ``GET /hashes/check:<random>``: an existing 3-field hash    200
``put``     ``PUT /hashes/put:<random>``: the same 3 fields, replaced   200 (201 if it was missing)
``patch``   ``PATCH /hashes/patch:<random>``: one existing field set    200 (201 if it was missing)
``delete``  ``DELETE /hashes/del:<i>``: every key once, all existing    204
==========  =========================================================  ================================

Every other status is an error of the run (404 on ``delete`` means the run outran its keys: ``delete_keys``).
The key space is bounded and no hash grows (PUT keeps 3 fields, PATCH sets a field that exists), so the hashes
stay far below MAX_HASH_FIELDS; the ``del:`` keys are created again before every ``delete`` run.
"""
import os

import redis

BENCH = os.path.dirname(os.path.abspath(__file__))
LUA_ROUTES = os.path.join(BENCH, "lua", "routes.lua")
KEY_PREFIX = "greenpool:"  # the service's KEY_PREFIX default
ROUTES = {"get": (200,), "put": (200, 201), "patch": (200, 201), "delete": (204,)}
DELETE_KEYS_PER_SECOND = 15000  # more deletes than one worker answers in a second, with room to spare


def small_hash(name, i):
    """The 3-field hash of every route key (and of the checked route's ``check:<i>``): its field key names it."""
    return {"key": name, "n": str(i), "pad": "x" * 12}


def fill(port, stem, count):
    """Create ``KEY_PREFIX + stem + <i>`` for i below ``count``, as ``small_hash``."""
    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(count):
            name = f"{stem}{i}"
            pipe.hset(KEY_PREFIX + name, mapping=small_hash(name, i))
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
    finally:
        r.close()


def delete_keys(duration):
    """How many ``del:`` keys a ``delete`` run of ``duration`` seconds gets."""
    return DELETE_KEYS_PER_SECOND * duration + 10000


def keys_for(route, args):
    """The key count passed to routes.lua for ``route``."""
    if route == "get":
        return args.hashes
    if route == "delete":
        return delete_keys(args.duration)
    return args.route_keys


def prepare(route, port, args):
    """Before each run of ``route``: a ``delete`` run gets all its keys back."""
    if route == "delete":
        fill(port, "del:", delete_keys(args.duration))


def populate(port, args):
    """Once, before the runs: the keys of ``put`` and ``patch`` (``get`` reads the checked route's hashes)."""
    fill(port, "put:", args.route_keys)
    fill(port, "patch:", args.route_keys)


def wrk_script_args(route, args):
    """The arguments after ``--`` of a wrk run of ``route`` with routes.lua."""
    return [route, str(keys_for(route, args)), str(args.threads), ",".join(map(str, ROUTES[route]))]
