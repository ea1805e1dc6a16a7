"""The seed's lesson, runnable: one connection shared by every greenlet goes wrong; a pool does not, and
neither does one connection shared the multiplexed way.

    python -m pool.demo [--url URL] [--greenlets 50] [--requests 2000]

The same workload runs three ways. Every greenlet GETs keys whose value is the key's own name, so a reply
meant for another greenlet is caught at once. Each request is the seed's: send ``GET key``, wait a moment
for something else (a random pause under ``PAUSE`` seconds: the request's other I/O, as web requests do),
then read the reply.

* wrong: one module-level connection, made once and used by all greenlets (the seed's ``RedisFactory``).
  While a greenlet pauses between its send and its read, the others send and read on the same socket: the
  pauses end in another order than the sends went out, so a read takes the reply at the head of the
  stream, another greenlet's. Every run crosses replies; some reads also fail (gevent refuses a second
  greenlet waiting on one socket). redis-py's ``single_connection_client=True`` adds a lock, which stops
  the cross-talk only by serialising every greenlet onto that one connection.
* right: ``RedisPool``: each request borrows a connection of its own (``pool.connection()``) for its send
  and its read; it holds it through the pause, so requests queue for the pool's 10 connections.
* right, and faster: ``RedisPool(multiplex=1)``: every greenlet sends on ONE shared connection, as the wrong
  way does, through ``pool.get_connection()`` (what ``redis.Redis`` calls), and its read waits for its own
  command's reply: the pool keeps the order of the waiters as the order of the commands on the wire.

Without ``--url`` a private redis-server is started on a free loopback port and stopped at the end.
Everything is bounded: ``--requests`` in total, socket timeouts of 1 s, and ``--deadline`` seconds per way.
"""
from __future__ import annotations

if __name__ == "__main__":  # patch before any socket is made, as the service does
    import warnings

    from gevent import monkey

    with warnings.catch_warnings():  # `-m pool.demo` imported redis-py, hence ssl, first; the demo uses no TLS
        warnings.filterwarnings("ignore", "Monkey-patching ssl", monkey.MonkeyPatchWarning)
        monkey.patch_all()

import argparse
import random
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import redis
from gevent import monkey

from .redis_pool import RedisPool
from .urls import parse_redis_url

__all__ = ["format_table", "run_demo"]

KEYS = 100  # demo:key:0 .. demo:key:99, each holding its own name
WAYS = ("shared connection (wrong)", "RedisPool (right)", "multiplexed connection (right)")
PAUSE = 0.001  # the longest pause between a request's send and its read, seconds
_SOCKET_OPTIONS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}

_shared: _SharedConnection | None = None  # the wrong way: one connection for the whole process, as in the seed


class _SharedConnection(redis.Connection):
    """A plain redis-py connection that remembers every socket it opened, so the demo can close them all:
    used by many greenlets at once, it reconnects over sockets other greenlets are still reading."""

    opened: list[socket.socket]

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()
        self.opened.append(sock)
        return sock


def get_shared_connection(url: str) -> _SharedConnection:
    """The seed's ``RedisFactory::getRedis()``: make the connection once, then hand the same one to everyone."""
    global _shared
    if _shared is None:
        kwargs = dict(parse_redis_url(url).connection_kwargs, **_SOCKET_OPTIONS)
        kwargs.pop("connection_class", None)  # the demo's shared connection is always a _SharedConnection
        _shared = _SharedConnection(**kwargs)
        _shared.opened = []
    return _shared


def _close_shared() -> None:
    global _shared
    shared, _shared = _shared, None
    if shared is not None:
        shared.disconnect()
        for sock in shared.opened:
            sock.close()


def _request(conn: Any, key: str, pause: Callable[[], None]) -> Any:
    """The seed's request on ``conn``: send, pause (the request's other I/O), read."""
    conn.send_command("GET", key)
    pause()
    return conn.read_response()


def _wrong_way(url: str, pause: Callable[[], None]) -> Callable[[str], Any]:
    """Every request on the process's one connection."""
    return lambda key: _request(get_shared_connection(url), key, pause)


def _pooled_way(pool: RedisPool, pause: Callable[[], None]) -> Callable[[str], Any]:
    """Each request on a connection borrowed for it alone."""
    def get(key: str) -> Any:
        with pool.connection() as conn:
            return _request(conn, key, pause)
    return get


def _multiplexed_way(pool: RedisPool, pause: Callable[[], None]) -> Callable[[str], Any]:
    """Each request through redis-py's pool protocol on a multiplexed pool: one shared connection for all."""
    def get(key: str) -> Any:
        conn = pool.get_connection()
        try:
            return _request(conn, key, pause)
        finally:
            pool.release(conn)
    return get


def _pauses(seed: int) -> Callable[[], None]:
    rng = random.Random(seed)
    return lambda: gevent.sleep(rng.uniform(0.0, PAUSE))


class _Tally:
    """Counts for one way; greenlets never switch while updating them."""

    def __init__(self) -> None:
        self.requests = self.correct = self.wrong = self.errors = 0
        self.samples: list[str] = []  # the first few wrong replies, as evidence

    def as_dict(self, seconds: float) -> dict[str, Any]:
        return {"requests": self.requests, "correct": self.correct, "wrong": self.wrong, "errors": self.errors,
                "seconds": round(seconds, 3), "samples": self.samples}


def _run_way(get: Callable[[str], Any], greenlets: int, requests: int, deadline: float,
             seed: int) -> dict[str, Any]:
    """``requests`` GETs spread over ``greenlets`` greenlets; every reply is checked against the key asked."""
    tally = _Tally()
    rng = random.Random(seed)
    shares = [requests // greenlets + (i < requests % greenlets) for i in range(greenlets)]

    def worker(count: int) -> None:
        for _ in range(count):
            key = f"demo:key:{rng.randrange(KEYS)}"
            tally.requests += 1
            try:
                value = get(key)
            except Exception:  # noqa: BLE001 - any failure is what the demo counts
                tally.errors += 1
                continue
            if value == key.encode():
                tally.correct += 1
            else:
                tally.wrong += 1
                if len(tally.samples) < 3:
                    tally.samples.append(f"asked {key!r}, got {value!r}")

    started = time.monotonic()
    workers = [gevent.spawn(worker, n) for n in shares if n]
    gevent.joinall(workers, timeout=deadline)
    gevent.killall(workers, timeout=1.0)
    tally.errors += requests - tally.requests  # never started before the deadline
    return tally.as_dict(time.monotonic() - started)


def run_demo(url: str, greenlets: int = 50, requests: int = 2000, deadline: float = 30.0,
             seed: int = 0) -> dict[str, dict[str, Any]]:
    """Run the workload the wrong way and both right ways against ``url``; return ``{way: counts}``.

    Counts are ``requests``, ``correct``, ``wrong`` (another key's reply), ``errors`` and ``seconds``,
    plus ``samples`` of wrong replies. Needs gevent's sockets (``monkey.patch_all()`` first): with
    blocking sockets no greenlet ever yields mid-command and the wrong way cannot show itself.
    """
    if not monkey.is_module_patched("socket"):
        raise RuntimeError("run_demo needs gevent-patched sockets: call gevent.monkey.patch_all() first")
    if greenlets < 1 or requests < 1:
        raise ValueError(f"greenlets and requests must be >= 1, got {greenlets} and {requests}")
    pool = RedisPool.from_url(url, max_size=min(greenlets, 10), name="demo", **_SOCKET_OPTIONS)
    shared = RedisPool.from_url(url, max_size=2, multiplex=1, name="demo", **_SOCKET_OPTIONS)
    client = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]  # a ConnectionPoolInterface
    ways = (_wrong_way(url, _pauses(seed)), _pooled_way(pool, _pauses(seed)), _multiplexed_way(shared, _pauses(seed)))
    try:
        client.mset({f"demo:key:{i}": f"demo:key:{i}" for i in range(KEYS)})
        results = {way: _run_way(get, greenlets, requests, deadline, seed) for way, get in zip(WAYS, ways, strict=True)}
        client.delete(*(f"demo:key:{i}" for i in range(KEYS)))
        return results
    finally:
        _close_shared()
        shared.close(timeout=1.0)
        pool.close(timeout=1.0)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a fixed-width text table, one row per way."""
    columns = ("requests", "correct", "wrong", "errors", "seconds")
    width = max(len(way) for way in results)
    lines = [f"{'way':<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for way, counts in results.items():
        lines.append(f"{way:<{width}}  " + "  ".join(f"{counts[c]:>8}" for c in columns))
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pool.demo", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--url", help="a Redis URL; default: start a private redis-server on a free port")
    parser.add_argument("--greenlets", type=int, default=50, help="concurrent greenlets (default 50)")
    parser.add_argument("--requests", type=int, default=2000, help="GETs per way, in total (default 2000)")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds allowed per way (default 30)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.url:
        results = run_demo(args.url, args.greenlets, args.requests, args.deadline)
    else:
        from .server import RedisProcess, free_port

        with tempfile.TemporaryDirectory(prefix="greenpool-demo-") as data_dir:
            with RedisProcess(data_dir, port=free_port()) as server:
                print(f"started a private redis-server at {server.url}")
                results = run_demo(server.url, args.greenlets, args.requests, args.deadline)
    print(f"{args.greenlets} greenlets, every reply checked against the key asked:\n")
    print(format_table(results))
    for way, counts in results.items():
        for sample in counts["samples"]:
            print(f"  {way}: {sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
