"""The seed's lesson, runnable: one connection shared by every greenlet goes wrong; a pool does not.

    python -m pool.demo [--url URL] [--greenlets 50] [--requests 2000]

The same workload runs two ways. Every greenlet GETs keys whose value is the key's own name, so a reply
meant for another greenlet is caught at once:

* wrong: one module-level connection, made once and used by all greenlets (the seed's ``RedisFactory``).
  A greenlet that sent its command and waits for the reply yields; the next one sends on the same socket,
  so replies are read by whoever reads first, or the read fails. redis-py's ``single_connection_client=True``
  adds a lock, which stops the cross-talk only by serialising every greenlet onto that one connection.
* right: ``redis.Redis(connection_pool=RedisPool(...))``: each command borrows its own connection.

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
WAYS = ("shared connection (wrong)", "RedisPool (right)")
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


def _get_shared(url: str, key: str) -> Any:
    conn = get_shared_connection(url)
    conn.send_command("GET", key)
    return conn.read_response()


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
    """Run the workload the wrong way and the right way against ``url``; return ``{way: counts}``.

    Counts are ``requests``, ``correct``, ``wrong`` (another key's reply), ``errors`` and ``seconds``,
    plus ``samples`` of wrong replies. Needs gevent's sockets (``monkey.patch_all()`` first): with
    blocking sockets no greenlet ever yields mid-command and the wrong way cannot show itself.
    """
    if not monkey.is_module_patched("socket"):
        raise RuntimeError("run_demo needs gevent-patched sockets: call gevent.monkey.patch_all() first")
    if greenlets < 1 or requests < 1:
        raise ValueError(f"greenlets and requests must be >= 1, got {greenlets} and {requests}")
    pool = RedisPool.from_url(url, max_size=min(greenlets, 10), name="demo", **_SOCKET_OPTIONS)
    client = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]  # a ConnectionPoolInterface
    try:
        client.mset({f"demo:key:{i}": f"demo:key:{i}" for i in range(KEYS)})
        results = {WAYS[0]: _run_way(lambda key: _get_shared(url, key), greenlets, requests, deadline, seed)}
        results[WAYS[1]] = _run_way(client.get, greenlets, requests, deadline, seed)
        client.delete(*(f"demo:key:{i}" for i in range(KEYS)))
        return results
    finally:
        _close_shared()
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
