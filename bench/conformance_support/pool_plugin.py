"""pytest plugin for redis-py's own test suite: route the clients its fixtures build through greenpool.

Loaded with ``-p pool_plugin`` by ``bench/conformance_support/run_pytest.py``. The arm comes from
``CONFORMANCE_ARM``:

- ``stock``: nothing changes (redis-py's ``ConnectionPool``); the plugin only records results.
- ``redispool``: every client made by redis-py's ``tests.conftest._get_client`` (the ``r``, ``decoded_r``,
  ``r2``, ``r_timeout``, ... fixtures, and tests that call it themselves) gets a ``pool.RedisPool`` built
  from the same keyword arguments redis-py would give its ``ConnectionPool``.
- ``pooledredis``: the same, and the client class ``redis.Redis`` becomes ``pool.PooledRedis``.
- ``multiplexed``: as ``redispool`` with ``RedisPool(multiplex=2)``.

How: ``_get_client`` builds its pool with ``redis.ConnectionPool(**url_options)`` through the ``redis`` name
of conftest's globals; that name is pointed at a stand-in module whose ``ConnectionPool`` builds a
``RedisPool`` (everything else is the real ``redis``). Test modules imported ``_get_client`` by name, so after
collection every module-level ``_get_client`` is replaced by a wrapper that swaps the client class and
notes that the running test went through the pool. Tests that build ``redis.ConnectionPool`` themselves are
untouched (and their own selection is the caller's business).

Each finished test is appended to ``CONFORMANCE_RESULTS`` as one JSON line: nodeid, outcome (passed, failed,
error, skipped, xfailed, xpassed), ``clients`` (clients built through ``_get_client``), the one-line message and
the tail of the traceback. ``CONFORMANCE_STATUS`` receives one JSON object once the session starts, or the
reason the arm cannot run (``RedisPool`` without ``multiplex``).
"""
import json
import os
import sys
import types

import pytest
import redis

ARM = os.environ.get("CONFORMANCE_ARM", "stock")
ARMS = ("stock", "redispool", "pooledredis", "multiplexed")
_TRACEBACK_LINES = 40

_current = {"nodeid": None}
_clients = {}  # nodeid -> clients built through _get_client
_phases = {}  # nodeid -> {phase: report}


def _pool_options():
    return {"multiplex": 2} if ARM == "multiplexed" else {}


def _write_status(status):
    path = os.environ.get("CONFORMANCE_STATUS")
    if path:
        with open(path, "w") as f:
            json.dump(status, f)


def _make_pool_factory():
    from pool import RedisPool

    def connection_pool(connection_class=redis.Connection, **kwargs):
        """What ``tests.conftest._get_client`` gets for ``redis.ConnectionPool(**url_options)``."""
        return RedisPool(connection_class, **kwargs, **_pool_options())

    return connection_pool


class _RedisWithOurPool(types.ModuleType):
    """The ``redis`` module, except that ``ConnectionPool(...)`` builds a ``RedisPool``."""

    def __init__(self, factory):
        super().__init__("redis")
        self.ConnectionPool = factory

    def __getattr__(self, name):
        return getattr(redis, name)


def multiplex_unavailable_reason():
    """None when this pool version has ``RedisPool(multiplex=...)``, else why the arm cannot run."""
    from pool import RedisPool
    try:
        pool = RedisPool(host="127.0.0.1", port=1, multiplex=2)
    except TypeError as error:
        return f"not available in this pool version ({error})"
    try:  # a RedisPool without the option hands it to redis-py's Connection, which refuses it at connect
        if "multiplex" in getattr(pool, "connection_kwargs", {}):
            return "not available in this pool version (RedisPool has no multiplex option)"
        return None
    finally:
        pool.close(timeout=0)


def _check_arm():
    if ARM not in ARMS:
        raise pytest.UsageError(f"CONFORMANCE_ARM must be one of {', '.join(ARMS)}, got {ARM!r}")
    reason = multiplex_unavailable_reason() if ARM == "multiplexed" else None
    if reason is not None:
        _write_status({"available": False, "reason": reason})
        pytest.exit(f"multiplexed: {reason}", returncode=3)
    _write_status({"available": True, "arm": ARM, "redis_py": redis.__version__})


def pytest_configure(config):
    _check_arm()


def pytest_collection_modifyitems(session, config, items):
    conftest = sys.modules.get("tests.conftest")
    if conftest is None:
        raise pytest.UsageError("tests.conftest is not loaded: run from the root of redis-py's sdist")
    original = conftest._get_client
    if ARM != "stock":
        conftest.redis = _RedisWithOurPool(_make_pool_factory())
    client_class = None
    if ARM == "pooledredis":
        from pool import PooledRedis
        client_class = PooledRedis

    def _get_client(cls, request, *args, **kwargs):
        nodeid = _current["nodeid"]
        if nodeid is not None:
            _clients[nodeid] = _clients.get(nodeid, 0) + 1
        if client_class is not None and cls is redis.Redis:
            cls = client_class
        return original(cls, request, *args, **kwargs)

    _get_client.__wrapped__ = original
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("tests") and getattr(module, "_get_client", None) is original:
            module._get_client = _get_client


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["nodeid"] = item.nodeid
    try:
        yield
    finally:
        _current["nodeid"] = None


def pytest_runtest_logreport(report):
    _phases.setdefault(report.nodeid, {})[report.when] = report


def pytest_runtest_logfinish(nodeid, location):
    phases = _phases.pop(nodeid, {})
    outcome, report = _outcome(phases)
    record = {"nodeid": nodeid, "outcome": outcome, "clients": _clients.pop(nodeid, 0),
              "seconds": round(sum(r.duration for r in phases.values()), 3)}
    if report is not None:
        record["message"] = _message(report)
        if outcome in ("failed", "error"):
            record["traceback"] = "\n".join(report.longreprtext.splitlines()[-_TRACEBACK_LINES:])
            record["where"] = _frames(report)
    path = os.environ.get("CONFORMANCE_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _outcome(phases):
    """One outcome per test from its setup, call and teardown reports, and the report that explains it."""
    setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
    if setup is not None and setup.failed:
        return "error", setup
    if setup is not None and setup.skipped:
        return "skipped", setup
    if call is not None:
        if hasattr(call, "wasxfail"):
            return ("xfailed" if call.skipped else "xpassed"), call
        if call.failed:
            return "failed", call
        if call.skipped:
            return "skipped", call
    if teardown is not None and teardown.failed:
        return "error", teardown
    return "passed", None


def _frames(report):
    """``path:line: function``-style locations of the frames the final exception went through, outermost first."""
    longrepr = report.longrepr
    chain = getattr(longrepr, "chain", None)
    traceback = chain[-1][0] if chain else getattr(longrepr, "reprtraceback", None)
    frames = []
    for entry in getattr(traceback, "reprentries", []):
        location = getattr(entry, "reprfileloc", None)
        if location is not None:
            frames.append(f"{location.path}:{location.lineno}: {location.message}")
    return frames


def _message(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    lines = str(longrepr).strip().splitlines()
    return lines[-1] if lines else ""
