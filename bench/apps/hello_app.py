"""The ceiling: a hello-world WSGI app. Served under the same gunicorn worker class as the service, it costs only
the HTTP layer (accept, parse, respond), so the service can never beat it on one worker.

``gunicorn -c bench/apps/gunicorn_baseline.conf.py -k gevent bench.apps.hello_app:app``
"""
from gevent import monkey

monkey.patch_all()

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
