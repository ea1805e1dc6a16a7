"""Run the real service: ``python -m gunicorn -c gunicorn.conf.py`` on a free loopback port, and talk HTTP to it.

Everything waits on state (``/healthz`` answering, the master gone), with deadlines; nothing sleeps and hopes.
"""
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gevent
import pytest

from wsgi_app.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "gunicorn.conf.py"
# Variables of ours the test environment must not leak into a service under test.
_OURS = ("REDIS_URL", "REDIS_DATA_DIR", "WEB_CONCURRENCY", "PORT", "BIND", "API_TOKEN", "KEY_PREFIX",
         "GUNICORN_CMD_ARGS", "MAX_REQUESTS", "MAX_REQUESTS_JITTER", "PROMETHEUS_MULTIPROC_DIR",
         "GREENPOOL_PRIVATE_METRICS_DIR")


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:200]!r}>"


def request(port, method, path, body=None, headers=None, timeout=10.0):
    """One HTTP/1.1 request on a fresh connection; ``body`` may be bytes or a JSON-able object."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


class Gunicorn:
    """One gunicorn master (and its workers) running the service from the repository's gunicorn.conf.py."""

    def __init__(self, log_dir, env=None, args=(), workers=1):
        self.port = free_port()
        self.log_path = Path(log_dir) / f"gunicorn-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _OURS}
        self.env.update({"WEB_CONCURRENCY": str(workers), "PYTHONUNBUFFERED": "1"})
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.args = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "-b", f"127.0.0.1:{self.port}", *args]
        self.process = None

    def start(self, timeout=20.0):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if request(self.port, "GET", "/healthz", timeout=1.0).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        return request(self.port, method, path, body, headers, timeout)

    def worker_pids(self):
        """The master's live child processes (its workers)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return {int(pid) for pid in f.read().split()}
        except FileNotFoundError:
            return set()

    def wait_workers(self, count, timeout=20.0, exclude=()):
        """Wait until ``count`` workers that are not in ``exclude`` answer; returns their pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids() - set(exclude)
            if len(pids) == count and len(self.worker_pids()) == count:
                return pids
            time.sleep(0.05)
        raise TimeoutError(f"expected {count} workers, have {self.worker_pids()}:\n{self.log()}")

    def send(self, sig):
        self.process.send_signal(sig)

    def wait_exit(self, timeout=30.0):
        return self.process.wait(timeout)

    def stop(self, timeout=30.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"gunicorn did not stop within {timeout}s of SIGTERM:\n{self.log()}")

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


@pytest.fixture
def gunicorn_factory(tmp_path):
    """``gunicorn_factory(env=..., args=..., workers=...)`` starts a service; all are stopped at teardown."""
    started = []

    def start(env=None, args=(), workers=1, ready_timeout=20.0):
        service = Gunicorn(tmp_path, env, args, workers)
        started.append(service)
        return service.start(ready_timeout)

    yield start
    for service in started:
        service.stop()


def service_clients(admin):
    """The service's connections on the Redis server (the pool names them ``greenpool:web-<pid>``)."""
    return [c for c in admin.client_list() if c.get("name", "").startswith("greenpool:web-")]


def wait_until(predicate, timeout, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


class Load:
    """Keep-alive HTTP clients (greenlets in this process) reading hashes and checking every reply.

    A request *fails* when it gets a non-200 status, a body that is not its own key's hash (a crossed reply),
    or when its connection breaks after the service accepted it (the connection had already served a request
    and the server had not announced ``Connection: close``). After ``stopping`` is set, a new connection that
    is refused or reset before any reply was never accepted by the service: it counts as ``refused``.
    """

    def __init__(self, port, expected, clients=8, max_requests=20000, max_seconds=60.0):
        self.port = port
        self.expected = expected  # {name: hash dict}
        self.names = sorted(expected)
        self.clients = clients
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.ok = 0
        self.refused = 0
        self.failed = []
        self.stopping = False
        self._done = False
        self._greenlets = []

    def start(self):
        self._greenlets = [gevent.spawn(self._client, i) for i in range(self.clients)]
        return self

    def _client(self, index):
        conn, served = None, 0
        n = index
        while not self._done and self.ok + len(self.failed) < self.max_requests and time.monotonic() < self.deadline:
            name = self.names[n % len(self.names)]
            n += 7
            if conn is None:
                conn, served = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15), 0
            try:
                conn.request("GET", f"/hashes/{name}")
                response = conn.getresponse()
                body = response.read()
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                    http.client.RemoteDisconnected) as exc:
                conn.close()
                conn = None
                if self.stopping and served == 0:
                    self.refused += 1
                    gevent.sleep(0.01)
                else:
                    self.failed.append(f"{name}: {exc!r} after {served} replies on the connection")
                continue
            except Exception as exc:  # timeouts, protocol errors: all failures
                conn.close()
                conn = None
                self.failed.append(f"{name}: {exc!r}")
                continue
            served += 1
            if response.status != 200:
                self.failed.append(f"{name}: {response.status} {body[:200]!r}")
            elif json.loads(body) != self.expected[name]:
                self.failed.append(f"{name}: crossed reply {body[:200]!r}")
            else:
                self.ok += 1
            if response.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def wait_ok(self, count, timeout=30.0):
        """Wait until ``count`` requests succeeded in total."""
        wait_until(lambda: self.ok >= count or self.failed or self.finished(), timeout, message=f"{count} requests")
        return self

    def finished(self):
        return all(g.dead for g in self._greenlets)

    def stop(self, timeout=30.0):
        self._done = True
        gevent.joinall(self._greenlets, timeout=timeout, raise_error=True)
        assert self.finished(), "load clients did not finish"
        return self


def process_alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
