"""Reliability figures: fault scenarios against the live service (real gunicorn, gevent worker, 2 workers).

Run: ``python -m bench.reliability [--quick] [--crosstalk-requests N] [--fuzz-requests N] [--only NAME,...]``

It starts a private ``redis-server`` on a free loopback port (AOF on, so a killed server comes back with its
data) and, per scenario, a fresh ``gunicorn -c gunicorn.conf.py`` with ``WEB_CONCURRENCY=2`` against it, either
directly or through a fault proxy (``tests/faults.py``'s ``FaultProxy``, loaded by file path, with a jitter mode
added here) running in this process. Clients are raw HTTP/1.1 keep-alive connections (no pipelining) in
greenlets of this process; every 200 reply is checked against the hash that was asked for (each hash's values
name its key), so a reply meant for another request is counted as *crossed*.

Per scenario the table shows: requests sent, succeeded (200 with the right body), expected errors (the
statuses the scenario allows, e.g. 503 with Retry-After while the pool is exhausted), unexpected errors
(anything else: other statuses, broken connections, client timeouts), crossed replies, and the recovery
time: from the moment the fault was cleared until the end of the last failed request (after that point every
request succeeded). Every scenario is bounded by a request count and by time. Results go to
``bench/results/reliability-<UTC time>.json``; the table is printed in Markdown.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent import socket  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def _load(name, relative):
    """A module by file path: importing ``wsgi_app`` would build the app, and ``tests`` is no package."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_redis_server = _load("_greenpool_rel_redis_server", "wsgi_app/redis_server.py")
_faults = _load("_greenpool_rel_faults", "tests/faults.py")
RedisProcess, free_port = _redis_server.RedisProcess, _redis_server.free_port
FaultProxy = _faults.FaultProxy

PREFIX = "greenpool:"  # the service's default KEY_PREFIX
SERVICE_CLIENT = "greenpool:web-"  # client names of the service's pooled connections
# Variables of ours that must not leak from this environment into a service under test.
_OURS = ("REDIS_URL", "REDIS_DATA_DIR", "WEB_CONCURRENCY", "PORT", "BIND", "API_TOKEN", "KEY_PREFIX",
         "GUNICORN_CMD_ARGS", "MAX_REQUESTS", "MAX_REQUESTS_JITTER", "REQUEST_TIMEOUT", "POOL_MAX_SIZE",
         "POOL_TIMEOUT", "POOL_MAX_WAITING", "RETRY_AFTER", "PROMETHEUS_MULTIPROC_DIR")


# -- a fault proxy with random per-chunk delays ------------------------------------------------------------
class JitterProxy(FaultProxy):
    """``FaultProxy`` plus ``jitter(probability, low, high)``: each chunk, in either direction, is held for a
    random ``uniform(low, high)`` seconds with ``probability`` (else forwarded at once). Seeded: reproducible
    choices for a given order of chunks. The other modes behave as in ``FaultProxy``."""

    def __init__(self, *args, seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self._jitter = None
        self._rng = random.Random(seed)
        self.jittered = 0

    def jitter(self, probability, low, high):
        self.passthrough()
        self.mode, self._jitter = "jitter", (probability, low, high)

    def passthrough(self):
        self._jitter = None
        super().passthrough()

    def delay(self, seconds):
        self._jitter = None
        super().delay(seconds)

    def _pump(self, pair, src, dst, direction):
        received, forwarded = "received_" + direction, "forwarded_" + direction
        try:
            while True:
                data = src.recv(65536)
                setattr(self, received, getattr(self, received) + len(data))
                self._flowing.wait()
                jitter = self._jitter
                if jitter is not None and data and self._rng.random() < jitter[0]:
                    self.jittered += 1
                    gevent.sleep(self._rng.uniform(jitter[1], jitter[2]))
                elif self._delay:
                    gevent.sleep(self._delay)
                    self._flowing.wait()
                if not data:
                    break
                dst.sendall(data)
                setattr(self, forwarded, getattr(self, forwarded) + len(data))
        except OSError:
            pass
        finally:
            self._pairs.discard(pair)
            pair.close()


# -- the service under test --------------------------------------------------------------------------------
class Service:
    """One ``gunicorn -c gunicorn.conf.py`` master with its workers, on a free loopback port."""

    def __init__(self, log_dir, redis_url, env=None, workers=2):
        self.port = free_port()
        self.log_path = Path(log_dir) / f"gunicorn-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _OURS}
        self.env.update({"REDIS_URL": redis_url, "WEB_CONCURRENCY": str(workers), "PYTHONUNBUFFERED": "1"})
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.workers = workers
        self.args = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}"]
        self.process = None

    def start(self, timeout=30.0):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            if len(self.worker_pids()) == self.workers and simple_get(self.port, "/healthz", 1.0) == 200:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn not ready after {timeout}s:\n{self.log()}")
            gevent.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def worker_pids(self):
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return {int(pid) for pid in f.read().split()}
        except FileNotFoundError:
            return set()

    def send(self, sig):
        self.process.send_signal(sig)

    def wait_exit(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn did not exit within {timeout}s")
            gevent.sleep(0.02)
        return self.process.returncode

    def stop(self, timeout=30.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.wait_exit(timeout)
        except TimeoutError:
            self.process.kill()
            self.process.wait()

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------------------
class HTTPProtocolError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection; one request at a time (no pipelining)."""

    __slots__ = ("sock", "buf", "served")

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.served = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def roundtrip(self, raw, head=False):
        """Send ``raw``; return ``(status, header block (lowercased), body, server closes)``."""
        self.sock.sendall(raw)
        return self.read_response(head)

    def read_response(self, head=False):
        sock, buf = self.sock, self.buf
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} bytes of a reply ({self.served} served before)")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
        header = buf[:end].lower()
        if not header.startswith(b"http/1."):
            raise HTTPProtocolError(f"not an HTTP reply: {buf[:80]!r}")
        status = int(header[9:12])
        at = header.find(b"\r\ncontent-length:")
        if head or status in (204, 304) or 100 <= status < 200:
            length = 0
        elif at >= 0:
            length = int(header[at + 17:header.find(b"\r\n", at + 17) if header.find(b"\r\n", at + 17) >= 0 else None])
        else:
            raise HTTPProtocolError(f"reply without Content-Length: {header[:200]!r}")
        start = end + 4
        while len(buf) - start < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed inside a reply body")
            buf += chunk
        body = buf[start:start + length]
        self.buf = buf[start + length:]
        self.served += 1
        closes = b"\r\nconnection: close" in header or header.startswith(b"http/1.0")
        return status, header, body, closes


def simple_get(port, path, timeout=2.0):
    """The status of one GET on a fresh connection, or ``None`` when it fails."""
    try:
        conn = Conn(port, timeout)
    except OSError:
        return None
    try:
        return conn.roundtrip(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())[0]
    except (OSError, EOFError, HTTPProtocolError, ValueError):
        return None
    finally:
        conn.close()


# -- data --------------------------------------------------------------------------------------------------
class Dataset:
    """``count`` small hashes ``<PREFIX><tag>:<i>`` whose values name their key; the exact JSON the service
    answers for each (field order as written, compact separators, as ``wsgi_app.service`` encodes)."""

    def __init__(self, tag, count):
        self.names = [f"{tag}:{i}" for i in range(count)]
        self.hashes = [{"key": name, "i": str(i), "pad": name[-3:] * (1 + i % 4)} for i, name in enumerate(self.names)]
        self.bodies = [json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode() for h in self.hashes]
        self.requests = [b"GET /hashes/%s HTTP/1.1\r\nHost: bench\r\n\r\n" % name.encode() for name in self.names]

    def write(self, admin):
        pipe = admin.pipeline(transaction=False)
        for name, mapping in zip(self.names, self.hashes):
            pipe.delete(PREFIX + name)
            pipe.hset(PREFIX + name, mapping=mapping)
        pipe.execute()

    def crossed(self, index, body):
        """True when ``body`` is not the hash at ``index`` (bytes first, then parsed, for field order)."""
        if body == self.bodies[index]:
            return False
        try:
            return json.loads(body) != self.hashes[index]
        except ValueError:
            return True


# -- load ------------------------------------------------------------------------------------------------------
OK, CROSSED, BROKEN, REFUSED, ABORTED, TIMEOUT = "ok", "crossed", "broken", "refused", "aborted", "client_timeout"


class Load:
    """``concurrency`` greenlets, each on its own keep-alive connection, GETting random hashes of ``data``
    until ``max_requests`` in all were sent, ``max_seconds`` passed or ``stop()``.

    ``abort_probability``: that share of requests is cancelled by the client: it closes its socket after
    sending half the request or the whole of it, without reading the reply. ``record``: keep one
    ``(start, end, outcome)`` per request, for recovery times. Outcomes: ``ok``, ``crossed``, a status code
    (int) other than 200 (``"<status>!"`` for a 503 without Retry-After), ``broken`` (connection closed or reset
    on a connection the service had accepted), ``refused`` (a new connection refused or reset before any
    reply), ``client_timeout``, ``aborted``.
    """

    def __init__(self, port, data, *, concurrency=16, max_requests=20000, max_seconds=30.0, record=True,
                 abort_probability=0.0, error_pause=0.01, client_timeout=15.0, seed=1, stop_on_refused=False):
        self.port = port
        self.data = data
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.record = record
        self.abort_probability = abort_probability
        self.error_pause = error_pause
        self.client_timeout = client_timeout
        self.seed = seed
        self.stop_on_refused = stop_on_refused  # a client whose new connection is refused stops (shutdown)
        self.sent = 0
        self.counts = Counter()
        self.events = []  # (start, end, outcome)
        self.samples = {}  # outcome -> a few examples
        self.max_latency = {}  # outcome -> longest request (s)
        self.started = self.ended = None
        self.last_client_end = 0.0
        self._stop = False
        self._greenlets = []

    def start(self):
        self.started = time.monotonic()
        self.deadline = self.started + self.max_seconds
        self._greenlets = [gevent.spawn(self._client, i) for i in range(self.concurrency)]
        return self

    def stop(self, timeout=30.0):
        self._stop = True
        gevent.joinall(self._greenlets, timeout=timeout)
        for g in self._greenlets:
            if not g.dead:
                g.kill(block=True, timeout=2)
        for g in self._greenlets:
            if g.exception is not None and not isinstance(g.exception, gevent.GreenletExit):
                raise RuntimeError(f"load client died: {g.exception!r}")
        self.ended = self.last_client_end if self._greenlets and all(g.dead for g in self._greenlets) and \
            self.last_client_end else time.monotonic()
        return self

    def join(self, timeout=None):
        gevent.joinall(self._greenlets, timeout=timeout)
        return self.stop()

    def running(self):
        return not self._stop and any(not g.dead for g in self._greenlets)

    def _note(self, outcome, t0, t1, detail=None):
        self.counts[outcome] += 1
        if self.record:
            self.events.append((t0, t1, outcome))
        latency = t1 - t0
        if latency > self.max_latency.get(outcome, 0.0):
            self.max_latency[outcome] = latency
        if detail is not None and outcome != OK:
            examples = self.samples.setdefault(str(outcome), [])
            if len(examples) < 3:
                examples.append(detail)

    def _client(self, index):
        rng = random.Random(self.seed * 100003 + index)
        data, requests, n_keys = self.data, self.data.requests, len(self.data.requests)
        monotonic = time.monotonic
        conn = None
        abort_p = self.abort_probability
        while not self._stop and self.sent < self.max_requests:
            t0 = monotonic()
            if t0 > self.deadline:
                break
            k = rng.randrange(n_keys)
            raw = requests[k]
            self.sent += 1
            fresh = conn is None
            try:
                if conn is None:
                    conn = Conn(self.port, self.client_timeout)
                if abort_p and rng.random() < abort_p:
                    # client cancels: half the request or all of it, then close without reading
                    conn.sock.sendall(raw[:len(raw) // 2] if rng.random() < 0.5 else raw)
                    if rng.random() < 0.5:
                        gevent.sleep(rng.uniform(0, 0.005))
                    conn.close()
                    conn = None
                    self._note(ABORTED, t0, monotonic())
                    continue
                status, header, body, closes = conn.roundtrip(raw)
            except socket.timeout:
                conn.close()
                conn = None
                self._note(TIMEOUT, t0, monotonic(), "no reply within the client timeout")
                gevent.sleep(self.error_pause)
                continue
            except (OSError, EOFError, HTTPProtocolError, ValueError) as exc:
                served = conn.served if conn is not None else 0
                if conn is not None:
                    conn.close()
                conn = None
                outcome = REFUSED if fresh and served == 0 else BROKEN
                self._note(outcome, t0, monotonic(), f"{type(exc).__name__}: {exc}")
                if outcome == REFUSED and self.stop_on_refused:
                    break
                gevent.sleep(self.error_pause)
                continue
            t1 = monotonic()
            if status == 200:
                if data.crossed(k, body):
                    self._note(CROSSED, t0, t1, f"asked {data.names[k]}, got {body[:200]!r}")
                else:
                    self._note(OK, t0, t1)
            else:
                outcome = status
                if status == 503 and b"\r\nretry-after:" not in header:
                    outcome = "503!"
                self._note(outcome, t0, t1, f"{status} {body[:160]!r}")
            if closes:
                conn.close()
                conn = None
            if status != 200 and self.error_pause:
                gevent.sleep(self.error_pause)
        if conn is not None:
            conn.close()
        self.last_client_end = max(self.last_client_end, monotonic())


# -- results ---------------------------------------------------------------------------------------------------
def summarize(name, load, expected, *, cleared_at=None, notes="", extra=None, expected_broken=False):
    """A table row from a finished load: ``expected`` lists the outcomes the scenario allows besides ``ok``."""
    counts = load.counts
    ok = counts.get(OK, 0)
    crossed = counts.get(CROSSED, 0)
    aborted = counts.get(ABORTED, 0)
    expected_n = sum(n for outcome, n in counts.items() if outcome in expected)
    unexpected = {str(o): n for o, n in counts.items() if o not in (OK, CROSSED, ABORTED) and o not in expected}
    recovery = None
    first_ok_after = None
    if cleared_at is not None and load.record:
        failed_ends = [end for start, end, outcome in load.events if outcome not in (OK, ABORTED)]
        last_failure = max(failed_ends, default=None)
        recovery = max(0.0, last_failure - cleared_at) if last_failure is not None else 0.0
        oks_after = [end for start, end, outcome in load.events if outcome == OK and start >= cleared_at]
        first_ok_after = (min(oks_after) - cleared_at) if oks_after else None
    duration = (load.ended or time.monotonic()) - load.started
    row = {
        "scenario": name,
        "sent": load.sent,
        "succeeded": ok,
        "expected_errors": expected_n,
        "unexpected_errors": sum(unexpected.values()),
        "crossed": crossed,
        "client_cancelled": aborted,
        "recovery_s": None if recovery is None else round(recovery, 3),
        "first_ok_after_clear_s": None if first_ok_after is None else round(first_ok_after, 3),
        "outcomes": {str(o): n for o, n in sorted(counts.items(), key=lambda kv: str(kv[0]))},
        "unexpected": unexpected,
        "max_latency_s": {str(o): round(v, 3) for o, v in load.max_latency.items()},
        "examples": load.samples,
        "duration_s": round(duration, 2),
        "requests_per_s": round(load.sent / duration, 1) if duration > 0 else None,
        "notes": notes,
    }
    if extra:
        row.update(extra)
    row["pass"] = crossed == 0 and row["unexpected_errors"] == 0
    return row


def print_row_progress(row):
    print(f"  -> {row['scenario']}: sent {row['sent']}, ok {row['succeeded']}, expected {row['expected_errors']}, "
          f"unexpected {row['unexpected_errors']} {row.get('unexpected') or ''}, crossed {row['crossed']}, "
          f"recovery {row['recovery_s']}s, {row['duration_s']}s, {'PASS' if row['pass'] else 'FAIL'}", flush=True)


def markdown_table(rows):
    lines = ["| scenario | requests sent | succeeded | expected errors | unexpected errors | crossed replies | recovery time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        recovery = "-" if row.get("recovery_s") is None else f"{row['recovery_s']:.2f} s"
        expected = f"{row['expected_errors']:,}"
        if row.get("expected_label"):
            expected += f" ({row['expected_label']})"
        lines.append(f"| {row['scenario']} | {row['sent']:,} | {row['succeeded']:,} | {expected} | "
                     f"{row['unexpected_errors']:,} | {row['crossed']:,} | {recovery} |")
    return "\n".join(lines)


def label(counts, expected):
    parts = [f"{counts[o]:,}x {o}" for o in expected if counts.get(o)]
    return ", ".join(parts)


# -- the bench ---------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.workdir = Path(tempfile.mkdtemp(prefix="greenpool-reliability-"))
        self.redis = RedisProcess(self.workdir / "redis", port=free_port(), extra_args=["--appendonly", "yes"])
        self.admin = None
        self.rows = []
        self.services = []
        self.proxies = []

    # helpers
    def start(self):
        self.redis.start()
        self.admin = redis.Redis(port=self.redis.port, socket_timeout=5)

    def close(self):
        for service in self.services:
            service.stop(10)
        for proxy in self.proxies:
            proxy.stop()
        self.redis.stop()

    def service(self, env=None, via_proxy=False, proxy_seed=0):
        proxy = None
        url = self.redis.url
        if via_proxy:
            proxy = JitterProxy("127.0.0.1", self.redis.port, max_connections=2048, seed=proxy_seed).start()
            self.proxies.append(proxy)
            url = proxy.url
        svc = Service(self.workdir, url, env)
        self.services.append(svc)
        svc.start()
        return svc, proxy

    def finish(self, svc, proxy=None):
        svc.stop(30)
        if proxy is not None:
            proxy.stop()

    def service_clients(self):
        return [c for c in self.admin.client_list() if c.get("name", "").startswith(SERVICE_CLIENT)]

    def wait_until(self, predicate, timeout, interval=0.02):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            gevent.sleep(interval)
        return True

    def add(self, row):
        self.rows.append(row)
        print_row_progress(row)

    def scale(self, full, quick):
        return quick if self.quick else full

    # scenarios -----------------------------------------------------------------------------------------------
    def steady(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2})
        load = Load(svc.port, data, concurrency=32, max_requests=self.scale(30000, 8000), max_seconds=30).start()
        load.join()
        self.finish(svc)
        self.add(summarize("steady state", load, ()))

    def pool_exhausted(self, data):
        # 2 connections per worker, each command held 0.3 s by the proxy, 48 clients: most must get a 503 after
        # POOL_TIMEOUT (0.25 s), never wait longer
        env = {"POOL_MAX_SIZE": 2, "POOL_TIMEOUT": 0.25, "REQUEST_TIMEOUT": 3, "RETRY_AFTER": 1}
        svc, proxy = self.service(env, via_proxy=True)
        load = Load(svc.port, data, concurrency=48, max_requests=50000, max_seconds=12, error_pause=0.005).start()
        gevent.sleep(0.5)
        proxy.delay(0.15)
        gevent.sleep(3.0)
        proxy.passthrough()
        cleared = time.monotonic()
        gevent.sleep(2.0)
        load.stop()
        self.finish(svc, proxy)
        slow_503 = load.max_latency.get(503, 0.0)
        self.add(summarize("pool exhausted (2 conns/worker, +0.3 s per command, 48 clients, 3 s)", load, (503,),
                           cleared_at=cleared, extra={"expected_label": label(load.counts, (503,)),
                                                      "max_503_latency_s": round(slow_503, 3)},
                           notes=f"every 503 carried Retry-After; slowest 503 took {slow_503 * 1000:.0f} ms "
                                 f"(POOL_TIMEOUT 250 ms)"))

    def frozen(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        self.redis.pause()
        gevent.sleep(2.0)
        self.redis.resume()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        worst = max((v for o, v in load.max_latency.items()), default=0.0)
        row = summarize("Redis frozen (SIGSTOP 2 s)", load, (503, 504), cleared_at=cleared,
                        extra={"expected_label": label(load.counts, (503, 504)), "max_latency": round(worst, 3)},
                        notes=f"slowest answer {worst:.2f} s (REQUEST_TIMEOUT 1 s + 0.5 s allowed)")
        row["pass"] = row["pass"] and worst <= 1.5
        self.add(row)

    def restarted(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        t_down = time.monotonic()
        self.redis.restart()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        self.add(summarize("Redis restarted (SIGTERM, same port)", load, (503,), cleared_at=cleared,
                           extra={"expected_label": label(load.counts, (503,)),
                                  "down_for_s": round(cleared - t_down, 3)},
                           notes=f"server down {cleared - t_down:.2f} s"))

    def client_kill(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        killed = 0
        for _ in range(3):
            for client in self.service_clients():
                killed += self.admin.execute_command("CLIENT", "KILL", "ID", client["id"]) or 0
            gevent.sleep(0.5)
        cleared = time.monotonic() - 0.5
        gevent.sleep(2.0)
        load.stop()
        self.finish(svc)
        self.add(summarize("CLIENT KILL of the service's connections (3x, 0.5 s apart)", load, (503,),
                           cleared_at=cleared, extra={"expected_label": label(load.counts, (503,)),
                                                      "connections_killed": killed},
                           notes=f"{killed} connections killed"))

    def blackhole(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, proxy = self.service(env, via_proxy=True)
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        proxy.blackhole()
        gevent.sleep(2.0)
        proxy.passthrough()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc, proxy)
        worst = max(load.max_latency.values(), default=0.0)
        row = summarize("blackhole (proxy forwards nothing, 2 s)", load, (503, 504), cleared_at=cleared,
                        extra={"expected_label": label(load.counts, (503, 504)), "max_latency": round(worst, 3)},
                        notes=f"slowest answer {worst:.2f} s (REQUEST_TIMEOUT 1 s + 0.5 s allowed)")
        row["pass"] = row["pass"] and worst <= 1.5
        self.add(row)

    def refusing(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        _faults.kill_server(self.redis)
        gevent.sleep(2.0)
        self.redis.start()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        slow_503 = load.max_latency.get(503, 0.0)
        self.add(summarize("Redis refusing (SIGKILL, down 2 s, restarted)", load, (503,), cleared_at=cleared,
                           extra={"expected_label": label(load.counts, (503,)), "max_503_latency_s": round(slow_503, 3)},
                           notes=f"slowest 503 {slow_503 * 1000:.0f} ms"))

    def sigterm(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2, "POOL_MAX_SIZE": 4})
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=30, stop_on_refused=True).start()
        gevent.sleep(1.0)
        t_signal = time.monotonic()
        svc.send(signal.SIGTERM)
        code = svc.wait_exit(30)
        exit_s = time.monotonic() - t_signal
        load.stop()
        left = len(self.service_clients()) if self.wait_until(lambda: not self.service_clients(), 5) else \
            len(self.service_clients())
        refused = load.counts.get(REFUSED, 0)
        row = summarize("SIGTERM under load", load, (REFUSED,),
                        extra={"expected_label": f"{refused:,}x refused new connection after the listener closed"
                               if refused else "", "exit_code": code, "exit_s": round(exit_s, 2),
                               "service_connections_left": left},
                        notes=f"master exited {code} {exit_s:.2f} s after SIGTERM; {left} service connections left "
                              f"on Redis; a new connection after the listener closed is refused, not failed")
        row["pass"] = row["pass"] and code == 0 and left == 0
        self.add(row)

    def hup(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2, "POOL_MAX_SIZE": 4, "GRACEFUL_TIMEOUT": 10})
        old = svc.worker_pids()
        load = Load(svc.port, data, concurrency=16, max_requests=60000, max_seconds=30).start()
        gevent.sleep(1.0)
        t_signal = time.monotonic()
        svc.send(signal.SIGHUP)
        replaced = self.wait_until(lambda: len(svc.worker_pids()) == 2 and not (svc.worker_pids() & old), 20)
        swap_s = time.monotonic() - t_signal
        gevent.sleep(1.0)
        load.stop()
        new = svc.worker_pids()
        self.finish(svc)
        row = summarize("HUP under load", load, (),
                        extra={"workers_replaced": replaced, "swap_s": round(swap_s, 2)},
                        notes=f"workers {sorted(old)} -> {sorted(new)} in {swap_s:.2f} s")
        row["pass"] = row["pass"] and replaced
        self.add(row)

    def timeout_storm(self, data):
        env = {"REQUEST_TIMEOUT": 0.1, "POOL_MAX_SIZE": 32, "POOL_TIMEOUT": 1}
        svc, proxy = self.service(env, via_proxy=True, proxy_seed=7)
        proxy.jitter(0.035, 0.12, 0.3)
        load = Load(svc.port, data, concurrency=48, max_requests=self.scale(30000, 8000), max_seconds=60,
                    error_pause=0).start()
        load.join()
        self.finish(svc, proxy)
        share = load.counts.get(504, 0) / max(1, load.sent)
        self.add(summarize("request timeout storm (REQUEST_TIMEOUT 0.1 s, 3.5% of chunks held 0.12-0.3 s)", load,
                           (504,), extra={"expected_label": f"{share:.1%} 504", "timeout_share": round(share, 4)}))

    def crosstalk(self, data, total):
        a = self.args
        env = {"REQUEST_TIMEOUT": a.crosstalk_timeout, "POOL_MAX_SIZE": 64, "POOL_TIMEOUT": 1}
        svc, proxy = self.service(env, via_proxy=True, proxy_seed=11)
        low = a.crosstalk_timeout * 1.2
        proxy.jitter(a.crosstalk_jitter, low, low + 0.15)
        load = Load(svc.port, data, concurrency=self.args.crosstalk_concurrency, max_requests=total,
                    max_seconds=self.args.crosstalk_max_seconds, record=False, abort_probability=a.crosstalk_abort,
                    error_pause=0, seed=3).start()
        last, next_report = 0, time.monotonic() + 10
        while load.running():
            gevent.sleep(0.2)
            if time.monotonic() >= next_report and (load.sent - last >= 100000 or self.quick):
                last, next_report = load.sent, time.monotonic() + 10
                rate = load.sent / (time.monotonic() - load.started)
                print(f"     cross-talk: {load.sent:,} sent, {load.counts.get(CROSSED, 0)} crossed, "
                      f"{load.counts.get(504, 0):,} 504, {load.counts.get(ABORTED, 0):,} client-cancelled, "
                      f"{rate:,.0f} req/s, load {os.getloadavg()[0]:.2f}", flush=True)
        load.join()
        jittered = proxy.jittered
        self.finish(svc, proxy)
        cancelled = load.counts.get(504, 0) + load.counts.get(ABORTED, 0)
        share = cancelled / max(1, load.sent)
        row = summarize(f"cross-talk ({total:,} requests, ~10% cancelled)", load, (504,),
                        extra={"expected_label": f"{load.counts.get(504, 0):,}x 504; besides, "
                                                 f"{load.counts.get(ABORTED, 0):,} client-cancelled; "
                                                 f"{share:.1%} cancelled in all",
                               "cancelled_share": round(share, 4), "proxy_chunks_held": jittered,
                               "concurrency": self.args.crosstalk_concurrency},
                        notes=f"REQUEST_TIMEOUT {a.crosstalk_timeout} s; the proxy holds {a.crosstalk_jitter:.1%} of "
                              f"chunks {low:.2f}-{low + 0.15:.2f} s; {a.crosstalk_abort:.0%} of requests closed by the "
                              f"client mid-request; {a.crosstalk_concurrency} connections")
        self.add(row)

    # the fuzz -----------------------------------------------------------------------------------------------
    def fuzz(self, data, total):
        token = "fuzz-t0ken"
        env = {"REQUEST_TIMEOUT": 2, "API_TOKEN": token}
        svc, _ = self.service(env)
        self.admin.set(PREFIX + "fuzz:string", "not a hash")
        self.admin.rpush(PREFIX + "fuzz:list", "a", "b")
        before = self.snapshot()
        pids = svc.worker_pids()
        gen = FuzzGenerator(self.args.seed, token, data.names)
        statuses = Counter()  # every reply's status (1xx interim replies included)
        outcomes = Counter()  # per request: "2xx", "4xx", "501 (unknown transfer coding)", "5xx", "no reply"
        kinds_5xx = Counter()
        kinds = Counter()
        no_reply = Counter()
        examples = {}
        state = {"sent": 0}
        started = time.monotonic()

        def worker():
            while state["sent"] < total:
                state["sent"] += 1
                kind, raw, method = gen.next()
                kinds[kind] += 1
                got = fuzz_exchange(svc.port, raw, method)
                for status in got:
                    statuses[status] += 1
                final = [status for status in got if status >= 200]
                if not final:
                    no_reply[kind] += 1
                    outcomes["no reply"] += 1
                    continue
                worst = max(final)
                if worst == 501 and UNKNOWN_CODING.search(raw.partition(b"\r\n\r\n")[0]):
                    outcomes["501 (unknown transfer coding)"] += 1
                elif worst >= 500:
                    outcomes["5xx"] += 1
                    kinds_5xx[kind] += 1
                    examples.setdefault(kind, (raw[:300].decode("latin-1"), worst))
                else:
                    outcomes[f"{worst // 100}xx"] += 1

        gevent.joinall([gevent.spawn(worker) for _ in range(16)], raise_error=True)
        duration = time.monotonic() - started
        after = self.snapshot()
        changed = sorted(k.decode("latin-1") for k in set(before) | set(after) if before.get(k) != after.get(k))
        healthy = all(simple_get(svc.port, "/hashes/" + name) == 200 for name in data.names[:20])
        same_workers = svc.worker_pids() == pids
        log = svc.log()
        self.finish(svc)
        n5xx = outcomes["5xx"]
        n501 = outcomes["501 (unknown transfer coding)"]
        exceptions = Counter(line.strip() for line in log.splitlines()
                             if EXCEPTION_LINE.match(line) and not line.startswith("Traceback"))
        row = {
            "scenario": f"HTTP fuzz ({total:,} malformed/hostile requests, seed {self.args.seed})",
            "sent": total, "succeeded": outcomes["2xx"] + outcomes["3xx"],
            "expected_errors": outcomes["4xx"] + outcomes["no reply"] + n501,
            "unexpected_errors": n5xx, "crossed": 0, "recovery_s": None,
            "expected_label": f"{outcomes['4xx']:,} 4xx, {outcomes['no reply']:,} closed without reply, "
                              f"{n501:,} gunicorn 501 for an unknown Transfer-Encoding",
            "outcomes": dict(outcomes), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_exceptions": dict(exceptions.most_common(20)),
            "no_reply_by_kind": dict(no_reply), "kinds": dict(kinds), "five_xx_by_kind": dict(kinds_5xx),
            "five_xx_examples": {k: v for k, v in examples.items()},
            "redis_keys_changed": changed, "healthy_after": healthy, "same_workers_after": same_workers,
            "unhandled_errors_logged": log.count("unhandled error"), "duration_s": round(duration, 2),
            "notes": "",
        }
        row["notes"] = (f"replies by status {row['statuses']}; Redis keys changed: {len(changed)}; healthy after: "
                        f"{healthy}; same workers: {same_workers}; 5xx by kind {dict(kinds_5xx)}; server exceptions "
                        f"{dict(exceptions.most_common(8))}")
        row["pass"] = n5xx == 0 and not changed and healthy and same_workers
        self.add(row)

    def snapshot(self):
        return {key: self.admin.dump(key) for key in self.admin.scan_iter(count=1000)}


# -- fuzz generator ---------------------------------------------------------------------------------------
# gunicorn answers 501 Not Implemented to a transfer coding it does not know, as RFC 9112 section 6.1 says
UNKNOWN_CODING = re.compile(rb"(?im)^transfer-encoding\s*:(?!\s*chunked\s*$)")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Data|Size|Terminator|Length|Line)\b.*:")
def fuzz_exchange(port, raw, method, timeout=5.0):
    """Send ``raw`` on a fresh connection, half-close, read until EOF; return the statuses of the replies."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return []
    out = b""
    try:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before reading it all
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:  # reset after a reply, or a timeout
                break
            if not chunk:
                break
            out += chunk
    finally:
        sock.close()
    return parse_statuses(out, method)


def parse_statuses(out, method):
    statuses = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n\r\n", pos)
        if end < 0 or not out.startswith(b"HTTP/1.", pos):
            if not statuses:
                statuses.append(999)  # bytes that are not an HTTP reply
            break
        header = out[pos:end].lower()
        try:
            status = int(header[9:12])
        except ValueError:
            statuses.append(999)
            break
        statuses.append(status)
        at = header.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0 and not (method == "HEAD" and len(statuses) == 1) and status not in (204, 304):
            stop = header.find(b"\r\n", at + 17)
            length = int(header[at + 17:stop if stop >= 0 else None])
        pos = end + 4 + length
    return statuses


class FuzzGenerator:
    """Seeded malformed or hostile requests. Each carries at least one defect, so none may change Redis:
    writes without the token or with a wrong one, or with the token and a body, key or framing that must be
    refused."""

    def __init__(self, seed, token, names):
        self.rng = random.Random(seed)
        self.token = token
        self.names = names
        self.kinds = [(name[4:], getattr(self, name)) for name in sorted(dir(self)) if name.startswith("gen_")]

    def next(self):
        kind, make = self.rng.choice(self.kinds)
        raw, method = make()
        return kind, raw, method

    # pieces
    def junk(self, n):
        return bytes(self.rng.randrange(256) for _ in range(n))

    def name(self):
        return self.rng.choice(self.names)

    def auth(self):
        return b"Authorization: Bearer %s\r\n" % self.token.encode()

    def write_method(self):
        return self.rng.choice([b"PUT", b"PATCH", b"DELETE"])

    def body_request(self, body, *, auth=True, ctype=b"application/json", method=None, path=None, extra=b""):
        method = method or self.rng.choice([b"PUT", b"PATCH"])
        path = path or b"/hashes/" + self.name().encode()
        head = b"%s %s HTTP/1.1\r\nHost: f\r\n" % (method, path)
        if auth:
            head += self.auth()
        if ctype is not None:
            head += b"Content-Type: " + ctype + b"\r\n"
        return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body, method.decode()

    # generators: each returns (raw bytes, method of the first request)
    def gen_garbage(self):
        return self.junk(self.rng.randrange(1, 400)), "?"

    def gen_garbage_line(self):
        line = self.junk(self.rng.randrange(1, 60)).replace(b"\r", b"").replace(b"\n", b"")
        return line + b"\r\n\r\n", "?"

    def gen_bad_request_line(self):
        options = [
            b"GET\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/9.9\r\nHost: f\r\n\r\n", b"GET / HTTP/1\r\n\r\n",
            b"GET  /  HTTP/1.1\r\nHost: f\r\n\r\n", b"G\x00T / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\rHost: f\r\n\r\n",
            b"GET /hashes/a b HTTP/1.1\r\nHost: f\r\n\r\n", b"GET * HTTP/1.1\r\nHost: f\r\n\r\n",
            b"GET http://evil.example/hashes/x HTTP/1.1\r\nHost: f\r\n\r\n", b" GET / HTTP/1.1\r\n\r\n",
            b"GET /\t HTTP/1.1\r\n\r\n", b"\r\n\r\nGET / HTTP/1.1\r\nHost: f\r\n\r\n", b"GET / HTTP/1.1\n\n",
            b"GET /" + b"a" * self.rng.choice([5000, 9000, 20000]) + b" HTTP/1.1\r\nHost: f\r\n\r\n",
            b"CONNECT f:443 HTTP/1.1\r\nHost: f\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /hashes/x HTTP/1.1\r\nHost: f\r\n\r\n" + b"\x16\x03\x01\x02\x00\x01",  # TLS after HTTP
        ]
        raw = self.rng.choice(options)
        return raw, raw.split(b" ", 1)[0].decode("latin-1")

    def gen_method(self):
        method = self.rng.choice([b"get", b"TRACE", b"OPTIONS", b"FOO", b"POST", b"PUT", b"DELETE", b"PATCH",
                                  b"GET\x7f", b"M" * 300, b"PROPFIND", b"HEAD"])
        path = self.rng.choice([b"/", b"/hashes/", b"/hashes/" + self.name().encode(), b"/stats", b"/metrics",
                                b"/nope", b"/readyz"])
        auth = b"" if method in (b"PUT", b"PATCH", b"DELETE") else self.auth() * self.rng.randrange(2)
        return b"%s %s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, path, auth), method.decode("latin-1")

    def gen_hostile_path(self):
        name = self.name().encode()
        path = self.rng.choice([
            b"/hashes/%0d%0aSET%20x%201", b"/hashes/%00", b"/hashes/%ff%fe", b"/hashes/%c0%af", b"/hashes/%",
            b"/hashes/%zz", b"/hashes/../../etc/passwd", b"/hashes/" + b"k" * 300, b"/hashes/" + b"%41" * 400,
            b"/hashes/" + name + b"?x=%00&y", b"//hashes/" + name, b"/hashes//" + name, b"/hashes/%2e%2e/",
            b"/hashes/\xff\xfe", b"/hashes/%e2%80%ae" + name, b"/hashes/a%0Ab", b"/hashes/%7f", b"/hashes/%c2%85",
            b"/HASHES/" + name, b"/hashes/" + name + b"#frag", b"/hashes/" + name + b"/%2F..", b"/hashes/*",
        ])
        method = self.rng.choice([b"GET", b"HEAD", b"PUT", b"PATCH", b"DELETE"])
        if method in (b"PUT", b"PATCH"):
            body = b'{"a":"1"}'
            if self.rng.random() < 0.5 or b"%" not in path:  # no token: must be refused before anything else
                return (b"%s %s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (method, path, len(body), body)), method.decode()
            if path.startswith(b"/hashes/") and self._valid_key(path[8:]):
                body = b'{"a":1}'  # the key might be valid: make the body invalid
            return self.body_request(body, method=method, path=path)
        auth = b"" if method == b"DELETE" else self.auth()
        return b"%s %s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, path, auth), method.decode()

    @staticmethod
    def _valid_key(raw):
        from urllib.parse import unquote_to_bytes
        try:
            key = unquote_to_bytes(raw.split(b"?")[0].split(b"#")[0]).decode("utf-8")
        except UnicodeError:
            return False
        return bool(key) and len(key.encode()) <= 256 and not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in key)

    def gen_headers(self):
        name = self.name().encode()
        headers = self.rng.choice([
            b"X-A: 1\r\n" * self.rng.choice([101, 200, 1000]),
            b"X-Big: " + b"a" * self.rng.choice([9000, 20000, 70000]) + b"\r\n",
            b"Bad Header: 1\r\n", b"X-\x00: 1\r\n", b": empty-name\r\n", b"X-Fold: a\r\n  folded\r\n",
            b"Host: a\r\nHost: b\r\n", b"X-A: \xff\xfe\r\n", b"NoColon\r\n", b"X-A:" + b" " * 10000 + b"1\r\n",
            b"Authorization: Bearer " + b"x" * 5000 + b"\r\n", b"Authorization: bearer " + self.token.encode() + b"x\r\n",
            b"Expect: 100-continue\r\n", b"Connection: upgrade\r\nUpgrade: websocket\r\n",
            b"Content-Length: abc\r\n", b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n",
        ])
        method = self.rng.choice([b"GET", b"DELETE", b"HEAD"])
        return b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, name, headers), method.decode()

    def gen_framing(self):
        name = self.name().encode()
        body = b'{"a":"%s"}' % name  # a valid body: the framing must make the request fail
        bad = self.rng.choice([
            b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(body), len(body) + 1),
            b"Content-Length: %d, %d\r\n" % (len(body), len(body)),
            b"Content-Length: +%d\r\n" % len(body),
            b"Content-Length: 0x%x\r\n" % len(body),
            b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(body),
            b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: chunked, gzip\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: xchunked\r\n", b"Transfer-Encoding : chunked\r\n",
            b"Transfer-Encoding: \x0bchunked\r\n",
        ])
        # no token: even a body that gets through must not be written (401)
        raw = (b"PUT /hashes/%s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n%s\r\n%s"
               % (name, bad, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if b"chunked" in bad else body))
        return raw, "PUT"

    def gen_bad_chunked(self):
        name = self.name().encode()
        body = self.rng.choice([
            b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{\"a\":\r\n",  # truncated, then EOF
            b"-5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n", b"3;ext=\"x\r\n{\"a\r\n0\r\n\r\n",
            b"2\r\n{}\r\n", b"2\r\n{}XX0\r\n\r\n", b"0\r\nTrailer: \xff\r\n\r\n", b"1\r\n",
            b"10000\r\n" + b"[" * 200, b"8\r\n{\"a\":\"1\"\r\n0\r\n\r\n",  # one byte short of valid JSON
        ])
        raw = (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%s" % (self.rng.choice([b"PUT", b"PATCH"]), name, self.auth(), body))
        return raw, "PUT"

    def gen_bad_json(self):
        body = self.rng.choice([
            b"", b"{", b"}", b"[]", b"null", b"1", b'"a"', b"{}", b'{"a":1}', b'{"a":null}', b'{"a":["x"]}',
            b'{"a":{"b":"c"}}', b'{"":"x"}', b'{"a":"1",}', b"{'a':'1'}", b'{"a":NaN}', b'{"a":Infinity}',
            b'{"a":"' + b"\xff\xfe" + b'"}', b'\xef\xbb\xbf{"a":1}', b'{"a":"1"} trailing', b'{"a":1' + b"0" * 5000 + b"}",
            b"{" + b",".join(b'"f%d":"v"' % i for i in range(1001)) + b"}",  # over MAX_FIELDS
            b'{"a":"' + b"x" * 20000 + b'"}', b'{"' + b"k" * 20000 + b'":"v"}',  # over MAX_FIELD_BYTES
            b"[" * self.rng.choice([100, 5000, 60000]), b'{"a":' * 3000 + b"1" + b"}" * 3000,
            b'{"a":' + b"[" * 50000 + b"]" * 50000 + b"}",
            b'{"a":"\\ud800"}', b'{"\\udfff":"v"}', b'{"a":"\\u0000"}', b"\x00" * 100,
            b" " * 70000,  # over MAX_BODY_BYTES
        ])
        if body in (b'{"a":"\\u0000"}',):
            body = b'{"a":"\\u0000", "b": 2}'  # valid JSON and string except one value
        return self.body_request(body)

    def gen_content_type(self):
        body = b'{"a":"1"}'
        ctype = self.rng.choice([None, b"text/plain", b"application/x-www-form-urlencoded", b"application/jsonx",
                                 b"json", b"multipart/form-data; boundary=x", b"\xff\xfe", b"application/json" * 500])
        return self.body_request(body, ctype=ctype)

    def gen_auth(self):
        body = b'{"a":"1"}'
        extra = b""
        auth = self.rng.choice([
            b"", b"Authorization: Bearer wrong\r\n", b"Authorization: Basic Zm9vOmJhcg==\r\n",
            b"Authorization: Bearer " + self.token.encode()[:-1] + b"\r\n",
            b"Authorization: Bearer " + self.token.encode() + b" \x00\r\n",
            b"Authorization: Bearer\r\n", b"Authorization: " + self.token.encode() + b"\r\n",
            b"Authorization: Bearer " + self.token.upper().encode() + b"\r\n",
            b"Authorization: Bearer \xff" + self.token.encode() + b"\r\n",
        ])
        method = self.write_method()
        name = self.name().encode()
        if method == b"DELETE":
            return b"DELETE /hashes/%s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (name, auth), "DELETE"
        return (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                % (method, name, auth, extra, len(body), body)), method.decode()

    def gen_short_body(self):
        body = b'{"a":"1"}'
        cut = self.rng.randrange(len(body))
        name = self.name().encode()
        return (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (self.rng.choice([b"PUT", b"PATCH"]), name, self.auth(), len(body), body[:cut])), "PUT"

    def gen_smuggle(self):
        name = self.name().encode()
        inner = b"DELETE /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n" % name  # no token: refused even if parsed
        raw = self.rng.choice([
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
            % (name, 5 + len(inner), inner),
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n%s" % (name, inner),
            b"GET /hashes/%s HTTP/1.0\r\n\r\n%s" % (name, inner),
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n%s" % (name, inner),
        ])
        return raw, "GET"

    def gen_type_confusion(self):
        key = self.rng.choice([b"fuzz:string", b"fuzz:list"])
        method = self.rng.choice([b"GET", b"HEAD", b"PUT", b"PATCH"])
        if method in (b"GET", b"HEAD"):
            return b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n" % (method, key), method.decode()
        return self.body_request(b'{"a":"1"}', method=method, path=b"/hashes/" + key)  # 409, nothing written


def machine():
    info = {
        "nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": "", "loadavg_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import gunicorn
    info.update(gevent=gevent.__version__, redis_py=redis.__version__, gunicorn=gunicorn.__version__)
    try:
        info["redis_server"] = subprocess.run([_redis_server.find_redis_server(), "--version"], capture_output=True,
                                              text=True, timeout=10).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        info["redis_server"] = repr(exc)
    return info


SCENARIOS = ["steady", "pool_exhausted", "frozen", "restarted", "client_kill", "blackhole", "refusing", "sigterm",
             "hup", "timeout_storm", "crosstalk", "fuzz"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (cross-talk 50,000, fuzz 10,000)")
    parser.add_argument("--crosstalk-requests", type=int, default=None,
                        help="requests in the cross-talk run (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--crosstalk-concurrency", type=int, default=64, help="client connections (default 64)")
    parser.add_argument("--crosstalk-timeout", type=float, default=0.25, help="REQUEST_TIMEOUT of the cross-talk run")
    parser.add_argument("--crosstalk-jitter", type=float, default=0.025,
                        help="share of proxied chunks held past REQUEST_TIMEOUT (default 0.025)")
    parser.add_argument("--crosstalk-abort", type=float, default=0.05,
                        help="share of requests the client closes mid-request (default 0.05)")
    parser.add_argument("--crosstalk-max-seconds", type=float, default=3600.0, help="time bound of the cross-talk run")
    parser.add_argument("--fuzz-requests", type=int, default=None, help="fuzz requests (default 10,000)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the fuzz generator")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--json", default=None, help="results path (default bench/results/reliability-<time>.json)")
    args = parser.parse_args(argv)
    if args.crosstalk_requests is None:
        args.crosstalk_requests = 50_000 if args.quick else 1_000_000
    if args.fuzz_requests is None:
        args.fuzz_requests = 10_000
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or SCENARIOS
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    info = machine()
    print(f"greenpool reliability: {info['nproc']} cores ({info['cpu']}), python {info['python']}, gunicorn "
          f"{info['gunicorn']}, gevent {info['gevent']}, redis-py {info['redis_py']}, {info['redis_server']}")
    print(f"load average at start: {'/'.join(f'{x:.2f}' for x in info['loadavg_start'])}", flush=True)
    bench = Bench(args)
    started = time.monotonic()
    keep_workdir = False
    try:
        bench.start()
        data = Dataset("h", 10_000)
        data.write(bench.admin)
        for name in chosen:
            print(f"* {name}", flush=True)
            t0 = time.monotonic()
            if name == "crosstalk":
                bench.crosstalk(data, args.crosstalk_requests)
            elif name == "fuzz":
                bench.fuzz(data, args.fuzz_requests)
            else:
                getattr(bench, name)(data)
            bench.rows[-1]["wall_s"] = round(time.monotonic() - t0, 1)
            bench.rows[-1]["loadavg_after"] = os.getloadavg()
    except BaseException:
        keep_workdir = True
        raise
    finally:
        bench.close()
        total = time.monotonic() - started
        info["loadavg_end"] = os.getloadavg()
        info["total_s"] = round(total, 1)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = Path(args.json) if args.json else RESULTS_DIR / f"reliability-{stamp}{'-quick' if args.quick else ''}.json"
        result = {"command": " ".join(["python -m bench.reliability", *(argv if argv is not None else sys.argv[1:])]),
                  "machine": info, "rows": bench.rows, "all_passed": all(r["pass"] for r in bench.rows)}
        path.write_text(json.dumps(result, indent=2, default=str))
        if keep_workdir:
            print(f"logs kept in {bench.workdir}")
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        print()
        print(markdown_table(bench.rows))
        print()
        for row in bench.rows:
            if row.get("notes"):
                print(f"- {row['scenario']}: {row['notes']}")
        print(f"\ntotal {total:.0f} s; load average at end {'/'.join(f'{x:.2f}' for x in info['loadavg_end'])}; "
              f"results in {path}")
        print("ALL PASSED" if result["all_passed"] else
              "FAILED: " + ", ".join(r["scenario"] for r in bench.rows if not r["pass"]))
    return 0 if all(r["pass"] for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
