"""gunicorn settings for the greenpool service: ``gunicorn -c gunicorn.conf.py``.

Values come from the environment (parsed by ``wsgi_app.settings``, so a bad value stops start-up with a
message naming the variable); command-line options still override them. The hooks below manage the two
things with a lifecycle: each worker's Redis pool and, when ``REDIS_URL`` is unset, the embedded redis-server.

Importing ``wsgi_app`` here monkey-patches the master too, exactly as ``--preload`` does: one code path,
tested both ways. The pool itself is only ever created in a worker.
"""
import os

from wsgi_app import embedded
from wsgi_app import settings as app_settings

SETTINGS = app_settings.load()  # validates every service setting now, in the master
_env_int = app_settings.env_int

wsgi_app = "wsgi_app:app"
worker_class = "gevent"
if "PORT" not in os.environ:  # gunicorn's own default binds 0.0.0.0:$PORT when PORT is set
    bind = [os.environ.get("BIND", "127.0.0.1:8000")]
workers = _env_int("WEB_CONCURRENCY", os.cpu_count() or 1, minimum=1)
worker_connections = _env_int("WORKER_CONNECTIONS", 1000, minimum=1)
timeout = _env_int("GUNICORN_TIMEOUT", 30, minimum=0)
graceful_timeout = _env_int("GRACEFUL_TIMEOUT", 30, minimum=1)
# The gevent worker waits for idle keep-alive connections while it drains: keepalive must end well before
# graceful_timeout, or the master SIGKILLs the worker and worker_exit (pool drain) never runs.
keepalive = _env_int("KEEPALIVE", 2, minimum=0, maximum=graceful_timeout - 1)
max_requests = _env_int("MAX_REQUESTS", 0, minimum=0)
max_requests_jitter = _env_int("MAX_REQUESTS_JITTER", 0, minimum=0)
# gunicornc's control socket lives at one fixed path per user (two instances would fight over it) and runs
# an asyncio thread, which would be a greenlet in this monkey-patched master.
control_socket_disable = True

if SETTINGS.pool_close_timeout + keepalive >= graceful_timeout:
    raise app_settings.SettingsError(
        f"POOL_CLOSE_TIMEOUT ({SETTINGS.pool_close_timeout}) + KEEPALIVE ({keepalive}) must be below "
        f"GRACEFUL_TIMEOUT ({graceful_timeout}), or workers are killed before their pool is drained"
    )


def on_starting(server):
    """Master, once: start the embedded redis-server when REDIS_URL is unset."""
    if not SETTINGS.embedded:
        server.log.info("Using Redis at %s", app_settings.redact_url(SETTINGS.redis_url))
        return
    redis = embedded.start(SETTINGS.data_dir)
    server.log.warning(
        "REDIS_URL is not set: started a private redis-server (pid %s) at %s with its data in %s. "
        "This is a development default; set REDIS_URL in production.",
        redis.pid, redis.url, SETTINGS.data_dir,
    )


def on_exit(server):
    """Master, last: stop the embedded redis-server (the workers are gone by now)."""
    if embedded.stop():
        server.log.info("Stopped the embedded redis-server")


def post_worker_init(worker):
    """Worker, after monkey patching and app loading: create this worker's pool (no I/O yet)."""
    from wsgi_app import app

    app.pool.get()


def worker_exit(server, worker):
    """Worker on its way out (after gunicorn drained requests): close the pool within POOL_CLOSE_TIMEOUT.

    gunicorn also calls this in the master for a worker that is already gone: then there is nothing of ours.
    """
    if worker.pid != os.getpid():
        return
    from wsgi_app import app

    if app.pool.close(SETTINGS.pool_close_timeout):
        server.log.info("Worker %s closed its Redis pool", worker.pid)


# child_exit(server, worker) runs in the master even for a SIGKILLed worker: the place to clean up
# per-worker metric files (issue 6).
