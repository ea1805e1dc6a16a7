"""The WSGI application: routing, HTTP checks, JSON in and out, and the mapping of failures to status codes.

The request path is CPU-bound under gevent, so it stays plain: a dict of routes, headers and bodies prepared
once, one JSON encoding per response (a hash's made from Redis's bytes, ``hash_json``).
"""
import hmac
import logging
import os
import threading
from time import perf_counter

from redis.exceptions import RedisError

from . import refusals, store
from .deadlines import DeadlineExceeded, Deadlines
from .errors import HashTooLarge, HTTPError, WrongType
from .hash_json import dumps, hash_body
from .metrics import UNMATCHED, ServiceMetrics
from .readiness import Readiness
from .settings import load
from .validation import Limits, flatten_hash, parse_hash_body, parse_key
from .worker_pool import WorkerPool

__all__ = ["Service", "create_app", "get_app"]

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
    500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout", 507: "Insufficient Storage",
}
STATUS_LINES = {code: f"{code} {reason}" for code, reason in _REASONS.items()}
HASHES = "/hashes/"
HASH_ROUTE = "/hashes/{name}"  # the route's label in metrics: never the key itself
_JSON_TYPE = ("Content-Type", "application/json")


def json_response(status, payload, headers=()):
    """``(status, headers, body)`` with ``payload`` encoded once."""
    body = dumps(payload).encode("utf-8")
    if headers:
        return status, [_JSON_TYPE, ("Content-Length", str(len(body))), *headers], body
    return status, [_JSON_TYPE, ("Content-Length", str(len(body)))], body


def hash_response(status, raw):
    """``(status, headers, body)`` for a hash as Redis returned it (``hash_json.hash_body``)."""
    body = hash_body(raw)
    return status, [_JSON_TYPE, ("Content-Length", str(len(body)))], body


def error_response(status, error, detail, headers=()):
    return json_response(status, {"error": error, "detail": detail}, headers)


NO_CONTENT = (204, [], b"")


class Service:
    """The WSGI callable. Routes map a path to ``{method: handler}``; a handler takes ``(environ, name)``
    and returns ``(status, headers, body)``. ``add_route`` is the place for more endpoints (e.g. /metrics).
    """

    def __init__(self, settings, pool):
        self.settings = settings
        self.pool = pool  # a WorkerPool
        self.limits = Limits(settings)
        self.prefix = settings.key_prefix
        self.default_key = settings.default_key
        self.request_timeout = settings.request_timeout or None  # REQUEST_TIMEOUT=0: no deadline
        self.deadlines = Deadlines(self.request_timeout) if self.request_timeout else None
        self.max_body = settings.max_body_bytes
        self.unavailable_headers = [("Retry-After", str(settings.retry_after))]
        self.token = f"Bearer {settings.api_token}".encode() if settings.api_token else None
        self.metrics = ServiceMetrics(settings.metrics_dir, pool.peek, settings.metrics_interval)
        self.max_hash_fields = settings.max_hash_fields
        self.max_hash_bytes = settings.max_hash_bytes
        self.readiness = Readiness(settings.key_prefix, settings.readyz_check_interval)
        self.refusal_log = refusals.RefusalLog(refusals.secrets_in_url(settings.redis_url))
        self.routes = {}
        self.add_route("/", {"GET": self.get_default, "HEAD": self.get_default})
        self.add_route("/healthz", {"GET": self.healthz, "HEAD": self.healthz})
        self.add_route("/readyz", {"GET": self.readyz, "HEAD": self.readyz})
        self.add_route("/stats", {"GET": self.stats})
        self.add_route("/metrics", {"GET": self.metrics_page, "HEAD": self.metrics_page})
        self.hash_route = self._route({
            "GET": self.get_hash, "HEAD": self.get_hash, "PUT": self.put_hash,
            "PATCH": self.patch_hash, "DELETE": self.delete_hash,
        })
        self.healthz_response = json_response(200, {"status": "ok"})

    @staticmethod
    def _route(methods):
        return methods, [("Allow", ", ".join(methods))]

    def add_route(self, path, methods):
        """Serve ``path``; ``methods`` maps a method name to a handler
        ``(environ, name) -> (status, headers, body)``."""
        self.routes[path] = self._route(methods)

    # -- WSGI entry point ------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        started = perf_counter()
        status, headers, body, route = self.respond(environ, started)
        start_response(STATUS_LINES[status], headers)
        self.metrics.observe(environ["REQUEST_METHOD"], route, status, perf_counter() - started)
        return [body]

    def respond(self, environ, started=None):
        """Route the request and run its handler under the REQUEST_TIMEOUT deadline (counted from ``started``,
        a ``perf_counter()`` reading); every failure becomes JSON.

        Returns ``(status, headers, body, route label)``.
        """
        path = environ.get("PATH_INFO") or "/"
        name = None
        if path.startswith(HASHES):
            route, name, label = self.hash_route, path[len(HASHES):], HASH_ROUTE
        else:
            route = self.routes.get(path)
            if route is None:
                return (*error_response(404, "not_found", f"no route for {path[:200]!r}"), UNMATCHED)
            label = path
        methods, allow = route
        handler = methods.get(environ["REQUEST_METHOD"])
        if handler is None:
            return (*error_response(405, "method_not_allowed", f"allowed: {allow[0][1]}", allow), label)
        return (*self.run(handler, environ, name, path, started), label)

    def run(self, handler, environ, name, path, started=None):
        """``handler(environ, name)`` under the REQUEST_TIMEOUT deadline; every failure becomes JSON.

        The deadline is an entry in this worker's ``Deadlines`` (a dict insert and delete; one hub timer per
        worker interrupts overdue requests, at most ``Deadlines.tick`` late), not a ``gevent.Timeout`` per
        request (a timer start and stop, ~2-3 us). Re-arming one Timeout per greenlet with start()/cancel() is
        not correct under gevent's libev loop: a stopped timer keeps its *remaining* time, so the deadline of a
        keep-alive connection shrinks by every earlier request's duration until it fires on a fast request.
        The deadline covers the handler only: the error answers below run without it.
        """
        deadlines = self.deadlines
        entry = deadlines.enter(started) if deadlines is not None else None
        try:
            try:
                return handler(environ, name)
            finally:
                if entry is not None:
                    deadlines.leave(entry)
        except HTTPError as exc:
            return error_response(exc.status, exc.error, exc.detail, exc.headers)
        except DeadlineExceeded as exc:
            if exc.entry is not entry:
                raise
            # a cancelled request never leaves a reply for another: an exclusive connection it held was discarded;
            # on a shared connection its command keeps its place and its reply is read and dropped when it comes
            detail = f"the request took longer than REQUEST_TIMEOUT ({self.request_timeout}s)"
            return error_response(504, "timeout", detail)
        except WrongType as exc:
            return error_response(409, "wrong_type", str(exc))
        except HashTooLarge as exc:
            detail = (f"the hash is over its bounds with {exc.fields} fields and {exc.size} bytes of names and values "
                      f"(MAX_HASH_FIELDS {self.max_hash_fields}, MAX_HASH_BYTES {self.max_hash_bytes}); "
                      "nothing was changed")
            return error_response(409, "hash_too_large", detail)
        except RedisError as exc:  # refused by Redis, or Redis out of reach: never redis-py's text (it names hosts)
            return self.refused(refusals.classify(exc), f"{environ['REQUEST_METHOD']} {path[:200]}", exc)
        except Exception:
            log.exception("unhandled error on %s %s", environ["REQUEST_METHOD"], path[:200])
            return error_response(500, "internal_error", "see the server log")

    def refused(self, refusal, what, cause):
        """The answer for a ``refusals.Refusal``; the cause goes to the log (redacted, rate-limited)."""
        self.refusal_log.note(refusal, what, cause)
        headers = self.unavailable_headers if refusal.retry else ()
        return error_response(refusal.status, refusal.error, refusal.body_detail, headers)

    # -- request checks ----------------------------------------------------------------------------------------

    def key(self, name):
        return self.prefix + parse_key(name, self.limits)

    def check_token(self, environ):
        if self.token is None:
            return
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
        if not hmac.compare_digest(given, self.token):
            raise HTTPError(401, "unauthorized", "writes need the header 'Authorization: Bearer <API_TOKEN>'",
                            [("WWW-Authenticate", 'Bearer realm="greenpool"')])

    def read_json_object(self, environ):
        content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise HTTPError(415, "unsupported_media_type", "send the body with 'Content-Type: application/json'")
        body = self.read_body(environ)
        return parse_hash_body(body, self.limits)

    def read_body(self, environ):
        """The request body, refused with 413 beyond MAX_BODY_BYTES (before reading it when the length is known)."""
        limit = self.max_body
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                size = int(length)
            except ValueError:
                raise HTTPError(400, "invalid_request", "invalid Content-Length") from None
            if size > limit:
                raise HTTPError(413, "body_too_large", f"the body is larger than MAX_BODY_BYTES ({limit})")
            return self._read_input(environ, size)
        body = self._read_input(environ, limit + 1)  # chunked: read one byte more than allowed
        if len(body) > limit:
            raise HTTPError(413, "body_too_large", f"the body is larger than MAX_BODY_BYTES ({limit})")
        return body

    @staticmethod
    def _read_input(environ, size):
        try:
            return environ["wsgi.input"].read(size)
        except Exception as exc:  # noqa: BLE001 -- the server refused the body's framing (a bad chunk): the client's error
            raise HTTPError(400, "invalid_body", f"the body could not be read ({type(exc).__name__})") from None

    # -- handlers ------------------------------------------------------------------------------------------------

    def healthz(self, environ, name):
        return self.healthz_response

    def readyz(self, environ, name):
        """200 when Redis answers a PING and (``readiness``) lets the service read and write; else 503."""
        try:
            client = self.pool.shared_client()  # the routes' own path: a shared connection when multiplexed
            client.ping()
            answer = self.readiness.check(client)
        except RedisError as exc:
            answer = refusals.classify(exc), [f"{type(exc).__name__}: {exc}"]
        if answer is None:
            return json_response(200, {"status": "ready"})
        refusal, problems = answer
        self.refusal_log.note(refusal, "GET /readyz", "; ".join(problems))
        headers = self.unavailable_headers if refusal.retry else ()
        return error_response(503, refusal.error, f"not ready: {refusal.detail}", headers)

    def stats(self, environ, name):
        return json_response(200, {"pid": os.getpid(), "pool": self.pool.get().get_stats()})

    def metrics_page(self, environ, name):
        content_type, body = self.metrics.render(environ.get("HTTP_ACCEPT"))
        return 200, [("Content-Type", content_type), ("Content-Length", str(len(body)))], body

    def read_hash(self, key):
        """HGETALL ``key`` through the pool's shared client (``Backend.shared_client``: a shared connection with
        POOL_MULTIPLEX, else one borrowed for the command; for a cluster, the node serving the key); checkouts
        and waits for room on a shared connection wait up to the pool's timeout, POOL_TIMEOUT. The reply as
        Redis gave it (``store.read_hash``), or ``None``."""
        return store.read_hash(self.pool.shared_client(), key, self.max_hash_fields, self.max_hash_bytes)

    def get_default(self, environ, name):
        return hash_response(200, self.read_hash(self.default_key))

    def get_hash(self, environ, name):
        key = self.key(name)
        found = self.read_hash(key)
        if found is None:
            raise HTTPError(404, "not_found", f"no hash named {name!r}")
        return hash_response(200, found)

    def put_hash(self, environ, name):
        self.check_token(environ)
        key = self.key(name)
        mapping = self.read_json_object(environ)
        created = store.replace_hash(self.pool.shared_client(), key, flatten_hash(mapping))
        return json_response(201 if created else 200, mapping)

    def patch_hash(self, environ, name):
        self.check_token(environ)
        key = self.key(name)
        mapping = self.read_json_object(environ)
        created, merged = store.merge_hash(self.pool.shared_client(), key, flatten_hash(mapping),
                                           self.max_hash_fields, self.max_hash_bytes)
        return hash_response(201 if created else 200, merged)

    def delete_hash(self, environ, name):
        self.check_token(environ)
        key = self.key(name)
        deleted = store.delete_hash(self.pool.shared_client(), key)
        if not deleted:
            raise HTTPError(404, "not_found", f"no hash named {name!r}")
        return NO_CONTENT


def create_app(environ=None):
    """A new ``Service`` configured from ``environ`` (default: ``os.environ``); ``SettingsError`` when invalid."""
    settings = load(environ)
    return Service(settings, WorkerPool(settings))


_app = None
_app_lock = threading.Lock()  # gevent's lock once the package has patched threading


def get_app():
    """The process's ``Service`` (what ``wsgi_app.app`` is): built from ``os.environ`` on the first call, then
    the same object. A forked child keeps it (``--preload``): its pool and metrics rebuild themselves there."""
    app = _app
    if app is None:
        with _app_lock:
            app = _app or _build_app()
    return app


def _build_app():
    global _app
    _app = create_app()
    return _app
