"""The service plus one route that blocks the gevent hub, for the WORKER TIMEOUT test (issue 4, scenario 22).

``gunicorn -c gunicorn.conf.py tests.apps.blocking:app``. ``GET /_block/<name>`` borrows a pooled connection,
reads the hash ``<name>`` on it and echoes ``MARKER`` (so the test can find the connection in CLIENT LIST), then
sleeps with the *unpatched* ``time.sleep``: no other greenlet runs, the worker stops notifying gunicorn's
master, and the master aborts it (SIGABRT, whose handler raises SystemExit inside this request's greenlet).
A test tool only: the service has no such route.
"""
from gevent import monkey

monkey.patch_all()

from wsgi_app import app as service  # noqa: E402
from wsgi_app import store  # noqa: E402

__all__ = ["MARKER", "app"]

MARKER = "hub-blocker"
BLOCK_SECONDS = 60.0  # far beyond GUNICORN_TIMEOUT: the master ends it first
_blocking_sleep = monkey.get_original("time", "sleep")


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if not path.startswith("/_block/"):
        return service(environ, start_response)
    with service.pool.get().client() as client:
        store.get_hash(client, service.key(path[len("/_block/"):]), service.max_hash_fields, service.max_hash_bytes)
        client.echo(MARKER)
        _blocking_sleep(BLOCK_SECONDS)  # the whole worker stands still here
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"unblock"]
