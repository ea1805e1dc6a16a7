"""The baseline the pool must beat: the service's read routes on redis-py's stock pool.

``GET /`` is HGETALL of ``DEFAULT_KEY`` (default ``key``) and ``GET /hashes/<name>`` is HGETALL of
``KEY_PREFIX + name`` (default prefix ``greenpool:``, 404 when missing), answered with the same JSON as the
service. The client is one ``redis.Redis`` per worker on its own ``ConnectionPool`` whose ``max_connections`` is
raised (``STOCK_MAX_CONNECTIONS``, default 2000) so that it never errors at 1000 clients: redis-py 8.1's default
cap of 100 makes it fail most requests at 200 clients. Nothing else: no request timeout, no metrics.

``REDIS_URL=redis://127.0.0.1:PORT/0 gunicorn -c bench/apps/gunicorn_baseline.conf.py -k gevent \\
    bench.apps.stock_pool_app:app``
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402

import redis  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIX = os.environ.get("KEY_PREFIX", "greenpool:")
DEFAULT_KEY = os.environ.get("DEFAULT_KEY", "key")
MAX_CONNECTIONS = int(os.environ.get("STOCK_MAX_CONNECTIONS", "2000"))

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
HASHES = "/hashes/"
_client = None
_pid = None


def client():
    """This worker's client, made after the fork (a pool's sockets are never shared between processes)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        pool = redis.ConnectionPool.from_url(REDIS_URL, max_connections=MAX_CONNECTIONS)
        _client, _pid = redis.Redis(connection_pool=pool), os.getpid()
    return _client


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _respond(start_response, status, payload):
    body = _dumps(payload).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
        return _respond(start_response, "405 Method Not Allowed", {"error": "method_not_allowed"})
    if path == "/":
        key = DEFAULT_KEY
    elif path.startswith(HASHES) and len(path) > len(HASHES):
        key = KEY_PREFIX + path[len(HASHES):]
    else:
        return _respond(start_response, "404 Not Found", {"error": "not_found"})
    try:
        raw = client().hgetall(key)
    except redis.RedisError as exc:
        return _respond(start_response, "503 Service Unavailable", {"error": "unavailable", "detail": str(exc)})
    if not raw and path != "/":
        return _respond(start_response, "404 Not Found", {"error": "not_found"})
    return _respond(start_response, "200 OK", {_text(f): _text(v) for f, v in raw.items()})
