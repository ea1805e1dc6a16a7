"""gunicorn settings for the benchmark's breakdown targets: the service itself (its gunicorn.conf.py, hooks and
all), with the Redis command of a hash read replaced, so that the cost of each layer is a difference of two
measured targets (``bench.http_breakdown``).

``BREAKDOWN=noredis``: ``Service.read_hash`` answers with the reply it got the first time for that key (the same
object every time: the service only reads it), with no I/O: what is left is the service's own work per request
(routing, the deadline, JSON, metrics).
``BREAKDOWN=wait``: the same, after waiting once across an event-loop iteration (a 10 us gevent timer), as a
request waiting for any reply does: the floor of a request that waits once, whatever the client.
``bench.http_bench`` serves these under the same worker class, with the same environment as the service.
"""
import os
import sys

MODES = {"noredis": None, "wait": 0.00001}  # seconds of gevent.sleep before the answer
_mode = os.environ.get("BREAKDOWN", "")
if _mode not in MODES:  # before the service's conf loads its settings and patches the master
    print(f"BREAKDOWN must be one of {', '.join(MODES)}, got {_mode!r}", file=sys.stderr, flush=True)
    sys.exit(1)
_pause = MODES[_mode]

_SERVICE_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "gunicorn.conf.py")
exec(compile(open(_SERVICE_CONF).read(), _SERVICE_CONF, "exec"))  # noqa: S102 - the service's own settings

import gevent  # noqa: E402 (the service's conf imports wsgi_app first, which patches the master)

from wsgi_app.service import Service  # noqa: E402

_MISSING = object()
_replies = {}
_read_from_redis = Service.read_hash


def _read_hash_once(self, key):
    """The reply Redis gave for ``key`` the first time (``None`` too, for a key that does not exist)."""
    reply = _replies.get(key, _MISSING)
    if reply is _MISSING:
        reply = _replies[key] = _read_from_redis(self, key)
    if _pause is not None:
        gevent.sleep(_pause)
    return reply


Service.read_hash = _read_hash_once
