"""gunicorn settings for the benchmark's baseline apps: the service's HTTP settings (gunicorn.conf.py), no hooks.

Given explicitly with ``-c`` so that gunicorn does not pick up the service's ``./gunicorn.conf.py``. The worker
class, bind address and worker count come from the command line (``bench.http_bench`` passes them).
"""
import os

workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
keepalive = int(os.environ.get("KEEPALIVE", "2"))
timeout = 30
graceful_timeout = 30
control_socket_disable = True
