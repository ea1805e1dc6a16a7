"""gunicorn settings for the benchmark's baseline apps: the service's HTTP settings (gunicorn.conf.py), no hooks.

Given explicitly with ``-c`` so that gunicorn does not pick up the service's ``./gunicorn.conf.py``. The worker
class, bind address and worker count come from the command line (``bench.http_bench`` passes them). The HTTP
parser is the service's: ``http_parser`` is whatever the service's gunicorn.conf.py sets (``bench.apps.http_parser``
reads it), and gunicorn's default when it sets none, as for the service.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench.apps.http_parser import service_setting  # noqa: E402

workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
keepalive = int(os.environ.get("KEEPALIVE", "2"))
timeout = 30
graceful_timeout = 30
control_socket_disable = True
_service_parser = service_setting("http_parser")
if _service_parser is not None:
    http_parser = _service_parser
