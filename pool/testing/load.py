"""HTTP load against the service that checks every reply: ``Load`` clients GET the hashes of a ``Dataset``.

Each hash's values name its key, so a reply meant for another request shows as a *crossed* reply. Every
load is bounded in requests and in time.

    data = Dataset.generate("h", 1000); data.write(admin)        # or Dataset.of({"h0": {...}, ...}) for seeded hashes
    load = Load(service.port, data, clients=16, max_requests=20000, max_seconds=30).start()
    load.wait_ok(300); ...; load.stop(); assert load.failed == []
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import gevent
import redis
from gevent import socket

from .http import Conn, HTTPProtocolError
from .wait import wait_until

__all__ = ["ABORTED", "BROKEN", "CROSSED", "OK", "REFUSED", "TIMEOUT", "Dataset", "Load"]

DEFAULT_PREFIX = "greenpool:"  # the service's default KEY_PREFIX
# Outcomes of one request besides an HTTP status other than 200 (an int; "503!" for a 503 without Retry-After).
OK, CROSSED, BROKEN, REFUSED, ABORTED, TIMEOUT = "ok", "crossed", "broken", "refused", "aborted", "client_timeout"
_GO, _PAUSE, _STOP = "go", "pause", "stop"  # what a client does after a request


class Dataset:
    """Hashes served at ``/hashes/<name>`` (Redis key ``prefix + name``) and the exact JSON the service answers
    for each (field order as written, compact separators, as ``wsgi_app.service`` encodes)."""

    def __init__(self, hashes: Mapping[str, Mapping[str, str]], prefix: str = DEFAULT_PREFIX) -> None:
        if not hashes:
            raise ValueError("a dataset needs at least one hash")
        self.prefix = prefix
        self.names = list(hashes)
        self.hashes = [dict(hashes[name]) for name in self.names]
        self.bodies = [json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode() for h in self.hashes]
        self.requests = [b"GET /hashes/%s HTTP/1.1\r\nHost: load\r\n\r\n" % quote(name, safe=":").encode()
                         for name in self.names]

    @classmethod
    def of(cls, hashes: Mapping[str, Mapping[str, str]], prefix: str = DEFAULT_PREFIX) -> Dataset:
        """The hashes a caller wrote already, ``{name: {field: value}}``, served in sorted order of names."""
        return cls({name: hashes[name] for name in sorted(hashes)}, prefix)

    @classmethod
    def generate(cls, tag: str, count: int, prefix: str = DEFAULT_PREFIX) -> Dataset:
        """``count`` small hashes ``<tag>:<i>`` whose field ``key`` names their own name."""
        names = [f"{tag}:{i}" for i in range(count)]
        return cls({name: {"key": name, "i": str(i), "pad": name[-3:] * (1 + i % 4)} for i, name in enumerate(names)},
                   prefix)

    def write(self, admin: redis.Redis) -> None:
        """Write (replace) every hash through ``admin``."""
        pipe = admin.pipeline(transaction=False)
        for name, fields in zip(self.names, self.hashes, strict=False):
            mapping: dict[Any, Any] = fields
            pipe.delete(self.prefix + name)
            pipe.hset(self.prefix + name, mapping=mapping)
        pipe.execute()

    def crossed(self, index: int, body: bytes) -> bool:
        """True when ``body`` is not the hash at ``index`` (bytes first, then parsed, for field order)."""
        if body == self.bodies[index]:
            return False
        try:
            return bool(json.loads(body) != self.hashes[index])
        except ValueError:
            return True


class Load:
    """``clients`` greenlets, each on its own keep-alive connection (no pipelining), GETting random hashes of
    ``data`` until ``max_requests`` in all were sent, ``max_seconds`` passed or ``stop()``.

    Outcomes, counted in ``counts``: ``ok`` (200 with the asked hash), ``crossed`` (200 with anything else), a
    status (int) other than 200 (``"503!"`` for a 503 without Retry-After), ``broken`` (connection closed or
    reset on a connection the service had accepted), ``refused`` (a new connection refused or reset before any
    reply), ``client_timeout`` (no reply within ``client_timeout``), ``aborted`` (see below).

    ``failed`` lists every outcome but ``ok`` and ``aborted``, except refusals once ``stopping`` is set (the
    service is shutting down: a new connection after its listener closed was never accepted); those count in
    ``refused``. ``stop_on_refused``: a client whose new connection is refused stops.
    ``abort_probability``: that share of requests is cancelled by the client: it closes its socket after sending
    half the request or all of it, without reading the reply. ``record``: keep ``events``, one
    ``(start, end, outcome)`` per request, for recovery times. ``samples`` keeps a few details per outcome and
    ``max_latency`` the longest request per outcome.
    """

    def __init__(self, port: int, data: Dataset, *, clients: int = 8, max_requests: int = 20000,
                 max_seconds: float = 60.0, record: bool = True, abort_probability: float = 0.0,
                 error_pause: float = 0.01, client_timeout: float = 15.0, seed: int = 1,
                 stop_on_refused: bool = False) -> None:
        if clients < 1 or max_requests < 0 or max_seconds <= 0:
            raise ValueError("clients must be >= 1, max_requests >= 0 and max_seconds > 0")
        if not 0.0 <= abort_probability <= 1.0:
            raise ValueError("abort_probability must be between 0 and 1")
        self.port = port
        self.data = data
        self.clients = clients
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.record = record
        self.abort_probability = abort_probability
        self.error_pause = error_pause
        self.client_timeout = client_timeout
        self.seed = seed
        self.stop_on_refused = stop_on_refused
        self.stopping = False
        self.sent = 0
        self.refused = 0
        self.counts: Counter[str | int] = Counter()
        self.failed: list[str] = []
        self.events: list[tuple[float, float, str | int]] = []
        self.samples: dict[str, list[str]] = {}
        self.max_latency: dict[str | int, float] = {}
        self.started = self.deadline = 0.0
        self.ended: float | None = None
        self.last_client_end = 0.0
        self._stop = False
        self._greenlets: list[gevent.Greenlet] = []

    @property
    def ok(self) -> int:
        return self.counts[OK]

    def start(self) -> Load:
        self.started = time.monotonic()
        self.deadline = self.started + self.max_seconds
        self._greenlets = [gevent.spawn(self._client, i) for i in range(self.clients)]
        return self

    def wait_ok(self, count: int, timeout: float = 30.0) -> Load:
        """Wait until ``count`` requests succeeded in all (or one failed, or the clients finished)."""
        wait_until(lambda: self.ok >= count or self.failed or self.finished(), timeout, what=f"{count} requests",
                   interval=0.02)
        return self

    def finished(self) -> bool:
        return all(g.dead for g in self._greenlets)

    def running(self) -> bool:
        return not self._stop and not self.finished()

    def join(self, timeout: float | None = None) -> Load:
        """Wait for the clients to reach their bounds, then ``stop()``."""
        gevent.joinall(self._greenlets, timeout=timeout)
        return self.stop()

    def stop(self, timeout: float = 30.0) -> Load:
        """Stop the clients (each finishes its request; those still running after ``timeout`` are killed);
        ``RuntimeError`` if a client died of an error."""
        self._stop = True
        gevent.joinall(self._greenlets, timeout=timeout)
        for g in self._greenlets:
            if not g.dead:
                g.kill(block=True, timeout=2)
        for g in self._greenlets:
            if g.exception is not None and not isinstance(g.exception, gevent.GreenletExit):
                raise RuntimeError(f"load client died: {g.exception!r}")
        finished = self._greenlets and self.finished() and self.last_client_end
        self.ended = self.last_client_end if finished else time.monotonic()
        return self

    # -- the clients -------------------------------------------------------------------------------------------
    def _note(self, outcome: str | int, t0: float, t1: float, detail: str | None = None) -> None:
        self.counts[outcome] += 1
        if self.record:
            self.events.append((t0, t1, outcome))
        latency = t1 - t0
        if latency > self.max_latency.get(outcome, 0.0):
            self.max_latency[outcome] = latency
        if outcome in (OK, ABORTED):
            return
        if outcome == REFUSED and self.stopping:
            self.refused += 1
        else:
            self.failed.append(f"{outcome}: {detail}")
        examples = self.samples.setdefault(str(outcome), [])
        if detail is not None and len(examples) < 3:
            examples.append(detail)

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 100003 + index)
        conn: Conn | None = None
        try:
            while not self._stop and self.sent < self.max_requests and time.monotonic() <= self.deadline:
                self.sent += 1
                conn, step = self._one(rng, conn)
                if step == _STOP:
                    break
                if step == _PAUSE and self.error_pause:
                    gevent.sleep(self.error_pause)
        finally:
            if conn is not None:
                conn.close()
            self.last_client_end = max(self.last_client_end, time.monotonic())

    def _one(self, rng: random.Random, conn: Conn | None) -> tuple[Conn | None, str]:
        """One request: returns the connection to go on with and the next step (go on, pause after an error,
        or stop this client)."""
        t0 = time.monotonic()
        k = rng.randrange(len(self.data.requests))
        raw = self.data.requests[k]
        fresh = conn is None
        try:
            if conn is None:
                conn = Conn(self.port, self.client_timeout)
            if self.abort_probability and rng.random() < self.abort_probability:
                self._abort(rng, conn, raw)
                self._note(ABORTED, t0, time.monotonic())
                return None, _GO
            status, header, body, closes = conn.roundtrip(raw)
        except socket.timeout:
            if conn is not None:
                conn.close()
            self._note(TIMEOUT, t0, time.monotonic(), "no reply within the client timeout")
            return None, _PAUSE
        except (OSError, EOFError, HTTPProtocolError, ValueError) as exc:
            served = conn.served if conn is not None else 0
            if conn is not None:
                conn.close()
            outcome = REFUSED if fresh and served == 0 else BROKEN
            self._note(outcome, t0, time.monotonic(), f"{self.data.names[k]}: {type(exc).__name__}: {exc}")
            return None, (_STOP if outcome == REFUSED and self.stop_on_refused else _PAUSE)
        self._judge(k, status, header, body, t0)
        if closes:
            conn.close()
            conn = None
        return conn, (_GO if status == 200 else _PAUSE)

    @staticmethod
    def _abort(rng: random.Random, conn: Conn, raw: bytes) -> None:
        """The client cancels: half the request or all of it, then close without reading."""
        conn.sock.sendall(raw[:len(raw) // 2] if rng.random() < 0.5 else raw)
        if rng.random() < 0.5:
            gevent.sleep(rng.uniform(0, 0.005))
        conn.close()

    def _judge(self, k: int, status: int, header: bytes, body: bytes, t0: float) -> None:
        t1 = time.monotonic()
        name = self.data.names[k]
        if status == 200:
            if self.data.crossed(k, body):
                self._note(CROSSED, t0, t1, f"asked {name}, got {body[:200]!r}")
            else:
                self._note(OK, t0, t1)
            return
        outcome: str | int = status
        if status == 503 and b"\r\nretry-after:" not in header:
            outcome = "503!"
        self._note(outcome, t0, t1, f"{name}: {status} {body[:160]!r}")
