"""The baseline the pool must beat: the service's hash routes on redis-py's stock pool.

``GET /`` is HGETALL of ``DEFAULT_KEY`` (default ``key``) and ``GET /hashes/<name>`` is HGETALL of
``KEY_PREFIX + name`` (default prefix ``greenpool:``, 404 when missing), answered with the same JSON as the
service. The writes do the service's work with the service's code: ``PUT`` (replace, 201 when created, else
200), ``PATCH`` (merge, 201/200, the merged hash back) and ``DELETE`` (204, 404 when missing) check the body
with ``wsgi_app.validation`` under the service's limits (``wsgi_app.settings``, from the same environment) and
run ``wsgi_app.store``'s all-or-nothing scripts, and it speaks the service's protocol (RESP2 unless the URL
names one); only the client differs: one ``redis.Redis`` per worker on its own ``ConnectionPool`` whose
``max_connections`` is raised (``STOCK_MAX_CONNECTIONS``, default 2000) so that it never errors at 1000 clients
(redis-py 8.1's default cap of 100 makes it fail most requests at 200 clients). Nothing else: no API token, no
request timeout, no metrics.

``REDIS_URL=redis://127.0.0.1:PORT/0 gunicorn -c bench/apps/gunicorn_baseline.conf.py -k gevent \\
    bench.apps.stock_pool_app:app``
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import redis  # noqa: E402

from wsgi_app import settings as service_settings  # noqa: E402
from wsgi_app import store  # noqa: E402
from wsgi_app.errors import HashTooLarge, HTTPError, WrongType  # noqa: E402
from wsgi_app.hash_json import dumps, hash_body  # noqa: E402
from wsgi_app.validation import Limits, flatten_hash, parse_hash_body, parse_key  # noqa: E402
from wsgi_app.worker_pool import SERVICE_PROTOCOL  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MAX_CONNECTIONS = int(os.environ.get("STOCK_MAX_CONNECTIONS", "2000"))
SETTINGS = service_settings.load()  # the service's limits, key prefix and default key, from the same environment
LIMITS = Limits(SETTINGS)

HASHES = "/hashes/"
_client = None
_pid = None


def client():
    """This worker's client, made after the fork (a pool's sockets are never shared between processes)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        # the service's protocol (RESP2 unless the URL names one; the URL's wins), so that x stock compares pools
        pool = redis.ConnectionPool.from_url(REDIS_URL, max_connections=MAX_CONNECTIONS, protocol=SERVICE_PROTOCOL)
        _client, _pid = redis.Redis(connection_pool=pool), os.getpid()
    return _client


def _respond(start_response, status, payload):
    """``payload``: an object to encode, JSON bytes already encoded (a hash: ``hash_body``), or None (no body)."""
    if payload is None:
        body = b""
    else:
        body = payload if isinstance(payload, bytes) else dumps(payload).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] if body else []
    start_response(status, headers)
    return [body]


def _read_object(environ):
    """The request's JSON object, checked as the service checks it (content type, MAX_BODY_BYTES, validation)."""
    content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HTTPError(415, "unsupported_media_type", "send the body with 'Content-Type: application/json'")
    size = int(environ.get("CONTENT_LENGTH") or 0)
    if size > SETTINGS.max_body_bytes:
        raise HTTPError(413, "body_too_large", "the body is larger than MAX_BODY_BYTES")
    return parse_hash_body(environ["wsgi.input"].read(size), LIMITS)


def _get(key, name):
    raw = client().hgetall(key)
    if not raw and name is not None:
        return "404 Not Found", {"error": "not_found"}
    return "200 OK", hash_body(raw)


def _put(key, environ):
    mapping = _read_object(environ)
    created = store.replace_hash(client(), key, flatten_hash(mapping))
    return ("201 Created" if created else "200 OK"), mapping


def _patch(key, environ):
    mapping = _read_object(environ)
    created, merged = store.merge_hash(client(), key, flatten_hash(mapping), SETTINGS.max_hash_fields,
                                       SETTINGS.max_hash_bytes)
    return ("201 Created" if created else "200 OK"), hash_body(merged)


def _delete(key):
    if store.delete_hash(client(), key):
        return "204 No Content", None
    return "404 Not Found", {"error": "not_found"}


def _handle(environ, method, name):
    if name is None:
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "method_not_allowed", "allowed: GET, HEAD")
        return _get(SETTINGS.default_key, None)
    key = SETTINGS.key_prefix + parse_key(name, LIMITS)
    if method in ("GET", "HEAD"):
        return _get(key, name)
    if method == "PUT":
        return _put(key, environ)
    if method == "PATCH":
        return _patch(key, environ)
    if method == "DELETE":
        return _delete(key)
    raise HTTPError(405, "method_not_allowed", "allowed: GET, HEAD, PUT, PATCH, DELETE")


_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            415: "Unsupported Media Type", 503: "Service Unavailable"}


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if path == "/":
        name = None
    elif path.startswith(HASHES) and len(path) > len(HASHES):
        name = path[len(HASHES):]
    else:
        return _respond(start_response, "404 Not Found", {"error": "not_found"})
    try:
        status, payload = _handle(environ, environ["REQUEST_METHOD"], name)
    except HTTPError as exc:
        status, payload = f"{exc.status} {_REASONS.get(exc.status, 'Error')}", {"error": exc.error}
    except (WrongType, HashTooLarge):
        status, payload = "409 Conflict", {"error": "conflict"}
    except redis.RedisError:
        status, payload = "503 Service Unavailable", {"error": "unavailable"}
    return _respond(start_response, status, payload)
