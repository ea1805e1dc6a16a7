"""gunicorn settings for the greenpool service: ``gunicorn -c gunicorn.conf.py``.

Values come from the environment (parsed by ``wsgi_app.settings``, so a bad value stops start-up with a
message naming the variable); command-line options still override them. The hooks below manage the two
things with a lifecycle: each worker's Redis pool and, when ``REDIS_URL`` is unset, the embedded redis-server.

Importing ``wsgi_app`` here monkey-patches the master too, exactly as ``--preload`` does: one code path,
tested both ways. The pool itself is only ever created in a worker.

Metrics: prometheus_client picks single- or multi-process mode when it is first imported (by ``wsgi_app``
below), so ``PROMETHEUS_MULTIPROC_DIR`` is settled before that import: the user's directory, or a private one
made for this master (``wsgi_app.metrics_dir``: removed at exit, and the next start removes the one a killed
master left).
"""
import logging
import os
import sys

from wsgi_app import metrics_dir  # imports no prometheus_client

metrics_dir.settle()  # PROMETHEUS_MULTIPROC_DIR: the user's, or a private one (stale ones of dead masters removed)

from wsgi_app import embedded, metrics  # noqa: E402 (after the metrics directory)
from wsgi_app import settings as app_settings  # noqa: E402

_env_int = app_settings.env_int

# An invalid setting stops start-up with one line naming the variable and the rule, and exit status 1: gunicorn
# prints a traceback for any Exception from its config file, and nothing for SystemExit.
try:
    SETTINGS = app_settings.load()  # validates every service setting now, in the master
    workers = _env_int("WEB_CONCURRENCY", os.cpu_count() or 1, minimum=1)
    worker_connections = _env_int("WORKER_CONNECTIONS", 1000, minimum=1)
    timeout = _env_int("GUNICORN_TIMEOUT", 30, minimum=0)
    graceful_timeout = _env_int("GRACEFUL_TIMEOUT", 30, minimum=1)
    # The gevent worker waits for idle keep-alive connections while it drains: keepalive must end well before
    # graceful_timeout, or the master SIGKILLs the worker and worker_exit (pool drain) never runs.
    keepalive = _env_int("KEEPALIVE", 2, minimum=0, maximum=graceful_timeout - 1)
    max_requests = _env_int("MAX_REQUESTS", 0, minimum=0)
    max_requests_jitter = _env_int("MAX_REQUESTS_JITTER", 0, minimum=0)
    if SETTINGS.pool_close_timeout + keepalive >= graceful_timeout:
        raise app_settings.SettingsError(
            f"POOL_CLOSE_TIMEOUT ({SETTINGS.pool_close_timeout}) + KEEPALIVE ({keepalive}) must be below "
            f"GRACEFUL_TIMEOUT ({graceful_timeout}), or workers are killed before their pool is drained"
        )
except app_settings.SettingsError as _error:
    print(f"greenpool: invalid setting: {_error}", file=sys.stderr, flush=True)
    sys.exit(1)

wsgi_app = "wsgi_app:app"
worker_class = "gevent"
if "PORT" not in os.environ:  # gunicorn's own default binds 0.0.0.0:$PORT when PORT is set
    bind = [os.environ.get("BIND", "127.0.0.1:8000")]
# gunicornc's control socket lives at one fixed path per user (two instances would fight over it) and runs
# an asyncio thread, which would be a greenlet in this monkey-patched master.
control_socket_disable = True
# Apache's combined format plus the request time in microseconds (as Apache's %D); on with --access-logfile -.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'


def on_starting(server):
    """Master, once: empty the metrics directory; start the embedded redis-server when REDIS_URL is unset."""
    removed = metrics.prepare_dir(SETTINGS.metrics_dir)
    server.log.info("Metrics of all workers in %s (%d old files removed)", SETTINGS.metrics_dir, removed)
    if metrics_dir.stale_removed:
        server.log.info("Removed %d private metrics directories of masters that are gone", metrics_dir.stale_removed)
    if not SETTINGS.embedded:
        server.log.info("Using Redis at %s", app_settings.redact_url(SETTINGS.redis_url))
        return
    # Refusals (directory unusable, already served, data its binary cannot read) are one-line EmbeddedErrors, a
    # RuntimeError: gunicorn prints "Error: <message>" and exits 1.
    redis = embedded.start(SETTINGS.data_dir, server.log)
    server.log.warning(
        "REDIS_URL is not set: started a private redis-server (pid %s) at %s with its data in %s. "
        "This is a development default; set REDIS_URL in production.",
        redis.pid, redis.url, SETTINGS.data_dir,
    )


def on_exit(server):
    """Master, last: stop the embedded redis-server (the workers are gone by now) and unlock its data directory."""
    if embedded.stop():
        server.log.info("Stopped the embedded redis-server")


def post_fork(server, worker):
    """Worker, at once: let go of the embedded data directory's lock (only the master and its redis-server keep
    it, so an orphaned worker of a killed master does not hold the directory)."""
    embedded.forget_lock()


def post_worker_init(worker):
    """Worker, after monkey patching and app loading: send the pool's and the app's logs to gunicorn's error
    log (with this worker's pid), create this worker's pool (no I/O yet) and start sampling its stats."""
    from wsgi_app import app

    _share_error_log(worker.log.error_log, ("pool", "wsgi_app"))
    app.pool.get()
    app.metrics.start_sampler()


def _share_error_log(error_log, names):
    """Loggers ``names`` write through gunicorn's error log handlers (its file, format with pid, and level)."""
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = list(error_log.handlers)
        logger.setLevel(error_log.level)
        logger.propagate = False


def worker_exit(server, worker):
    """Worker on its way out (after gunicorn drained requests): close the pool within POOL_CLOSE_TIMEOUT.

    gunicorn also calls this in the master for a worker that is already gone: then there is nothing of ours.
    """
    if worker.pid != os.getpid():
        return
    from wsgi_app import app

    if app.pool.close(SETTINGS.pool_close_timeout):
        server.log.info("Worker %s closed its Redis pool", worker.pid)
    app.metrics.sample()  # the pool counters of its last second


def child_exit(server, worker):
    """Master, after any worker exit (SIGKILL included): its live gauges leave the sums; its counters stay."""
    metrics.mark_process_dead(worker.pid, SETTINGS.metrics_dir)
