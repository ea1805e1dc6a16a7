"""Test support for greenpool, shared by the tests, the benchmarks and the demo: real processes, real faults.

``faults`` (a fault-injecting TCP proxy, a silent listener, frozen/killed/restarted redis-servers),
``topology`` (Sentinel and Cluster), ``gunicorn`` (a real gunicorn master), ``http`` (a small HTTP client),
``load`` (checked HTTP load), ``fuzz`` (hostile HTTP), ``wait`` (``wait_until``), ``clients`` (CLIENT LIST
filters, ``dump_all``), ``procs`` (/proc), ``wsgi`` (a WSGI app called in-process). The redis-server process
itself is ``pool.server``. Loopback only; nothing here imports pytest or the service.
"""
from .clients import dump_all, server_clients, service_clients
from .faults import FaultProxy, SilentListener, frozen, kill_server, restart_server
from .fuzz import FuzzGenerator, acceptable
from .gunicorn import Gunicorn, minimal_env
from .http import Conn, HTTPProtocolError, Reply, http_request, raw_exchange, request, response_statuses
from .load import Dataset, Load
from .procs import child_pids, holders, process_alive
from .topology import ClusterTopology, SentinelProcess, SentinelTopology
from .wait import WaitTimeout, wait_until
from .wsgi import wsgi_call

__all__ = [
    "ClusterTopology",
    "Conn",
    "Dataset",
    "FaultProxy",
    "FuzzGenerator",
    "Gunicorn",
    "HTTPProtocolError",
    "Load",
    "Reply",
    "SentinelProcess",
    "SentinelTopology",
    "SilentListener",
    "WaitTimeout",
    "acceptable",
    "child_pids",
    "dump_all",
    "frozen",
    "holders",
    "http_request",
    "kill_server",
    "minimal_env",
    "process_alive",
    "raw_exchange",
    "request",
    "response_statuses",
    "restart_server",
    "server_clients",
    "service_clients",
    "wait_until",
    "wsgi_call",
]
