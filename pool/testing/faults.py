"""Fault injection on loopback: a gevent TCP proxy with faults on demand, a listener that never answers, and
helpers that freeze, kill and restart a ``RedisProcess``. Everything is bounded and stops.

    proxy = FaultProxy("127.0.0.1", server.port).start()   # then point the pool or the service at proxy.url
    proxy.delay(0.5); proxy.blackhole(); proxy.jitter(0.03, 0.1, 0.3); proxy.passthrough(); proxy.cut(); proxy.stop()
"""
from __future__ import annotations

import random
import signal
from typing import TYPE_CHECKING

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Group

from ..server import RedisProcess

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

__all__ = ["FaultProxy", "SilentListener", "frozen", "kill_server", "restart_server"]

CHUNK = 65536


def _listener(host: str, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def _close(sock: socket.socket, rst: bool = False) -> None:
    try:
        if rst:  # SO_LINGER 0: the peer gets a RST, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream

    def close(self, rst: bool = False) -> None:
        _close(self.client, rst)
        _close(self.upstream, rst)


class FaultProxy:
    """A TCP proxy from a free loopback port to ``target_host:target_port``, with a fault mode:

    * ``passthrough()`` forwards bytes as they come (the initial mode);
    * ``delay(seconds)`` holds each chunk ``seconds`` before forwarding it, each way (a round trip costs
      twice that; a long stream of chunks is slowed as well);
    * ``jitter(probability, low, high)`` holds each chunk, either way, ``uniform(low, high)`` seconds with
      ``probability`` and forwards the others at once; the choices come from ``random.Random(seed)``, so
      they are reproducible for a given order of chunks; ``jittered`` counts the chunks held;
    * ``blackhole()`` forwards nothing in either direction, not even a close: sockets stay open, no FIN,
      bytes wait (as in a network partition) and flow again after ``passthrough()``;
    * ``rewrite(edit)`` passes each chunk from the target through ``edit(bytes) -> bytes`` before the client
      gets it (protocol faults a real server never makes: garbage, a reply too many); the other way is
      forwarded as it comes;
    * ``cut(rst=False)`` closes every current connection at once (FIN, or RST with ``rst=True``); new
      connections are proxied as the mode says.

    New connections are accepted in every mode (the proxy's own listener keeps listening). At most
    ``max_connections`` are open at once; more are closed at accept. ``stop()`` ends everything.
    Counters: ``accepted``; ``received_up``/``received_down`` (bytes that reached the proxy from the client /
    the target) and ``forwarded_up``/``forwarded_down`` (bytes passed on); ``open_connections``.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", max_connections: int = 256,
                 connect_timeout: float = 2.0, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._listener = _listener(host, 128)
        self.host, self.port = self._listener.getsockname()
        self.mode = "pass"
        self._delay = 0.0
        self._jitter: tuple[float, float, float] | None = None
        self._edit: Callable[[bytes], bytes] | None = None
        self._rng = random.Random(seed)
        self._flowing = Event()
        self._flowing.set()
        self._pairs: set[_Pair] = set()
        self._greenlets = Group()
        self._acceptor: gevent.Greenlet | None = None
        self.accepted = self.jittered = 0
        self.received_up = self.received_down = self.forwarded_up = self.forwarded_down = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    # -- modes -------------------------------------------------------------------------------------------
    def passthrough(self) -> None:
        self._set_mode("pass")

    def delay(self, seconds: float) -> None:
        self._set_mode("delay", delay=float(seconds))

    def jitter(self, probability: float, low: float, high: float) -> None:
        if not 0.0 <= probability <= 1.0 or not 0.0 <= low <= high:
            raise ValueError("jitter needs 0 <= probability <= 1 and 0 <= low <= high")
        self._set_mode("jitter", jitter=(probability, low, high))

    def blackhole(self) -> None:
        self._set_mode("blackhole", flowing=False)

    def rewrite(self, edit: Callable[[bytes], bytes]) -> None:
        self._set_mode("rewrite", edit=edit)

    def _set_mode(self, mode: str, *, delay: float = 0.0, jitter: tuple[float, float, float] | None = None,
                  flowing: bool = True, edit: Callable[[bytes], bytes] | None = None) -> None:
        self.mode, self._delay, self._jitter, self._edit = mode, delay, jitter, edit
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def cut(self, rst: bool = False) -> int:
        """Close every connection now; the pumps notice and end. Returns how many were closed."""
        pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.close(rst)
        return len(pairs)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> Self:
        self._acceptor = gevent.spawn(self._accept_loop)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=timeout)
        _close(self._listener)
        self.cut()
        self._flowing.set()
        self._greenlets.kill(block=True, timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} mode={self.mode} "
                f"open={len(self._pairs)} accepted={self.accepted} up={self.forwarded_up}/{self.received_up} "
                f"down={self.forwarded_down}/{self.received_down}>")

    # -- the work ------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            client, _ = self._listener.accept()
            self.accepted += 1
            if len(self._pairs) >= self.max_connections:
                _close(client)
                continue
            self._greenlets.spawn(self._open_pair, client)

    def _open_pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _close(client)  # target down: the client sees its connection closed
            return
        upstream.settimeout(None)
        pair = _Pair(client, upstream)
        self._pairs.add(pair)
        self._greenlets.spawn(self._pump, pair, client, upstream, "up")
        self._greenlets.spawn(self._pump, pair, upstream, client, "down")

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, direction: str) -> None:
        received, forwarded = "received_" + direction, "forwarded_" + direction
        try:
            while True:
                data = src.recv(CHUNK)
                setattr(self, received, getattr(self, received) + len(data))
                self._flowing.wait()  # blackhole: hold the bytes, and the close too
                self._hold(data)
                if not data:
                    break
                edit = self._edit
                if edit is not None and direction == "down":
                    data = edit(data)
                dst.sendall(data)
                setattr(self, forwarded, getattr(self, forwarded) + len(data))
        except OSError:  # closed under us by cut() or stop(), or reset by a peer
            pass
        finally:
            self._pairs.discard(pair)
            pair.close()

    def _hold(self, data: bytes) -> None:
        """Hold a chunk as the mode says (delay, or jitter by chance) before it is forwarded."""
        jitter = self._jitter
        if jitter is not None:
            probability, low, high = jitter
            if data and self._rng.random() < probability:
                self.jittered += 1
                gevent.sleep(self._rng.uniform(low, high))
        elif self._delay:
            gevent.sleep(self._delay)
            self._flowing.wait()


class SilentListener:
    """A loopback port that never answers.

    With ``accept=True`` (default) it completes TCP connects and accepts, then never reads, writes or
    closes: a client's connect succeeds and its first read waits forever. With ``accept=False`` the
    accept queue is kept full, so the kernel drops new SYNs and the client's connect itself hangs.
    ``accepted`` counts connections accepted (or, without accept, nothing). ``stop()`` closes all.
    """

    def __init__(self, *, host: str = "127.0.0.1", accept: bool = True, max_connections: int = 256) -> None:
        self.accept = accept
        self.max_connections = max_connections
        self._listener = _listener(host, 128 if accept else 0)
        self.host, self.port = self._listener.getsockname()
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._acceptor: gevent.Greenlet | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Self:
        if self.accept:
            self._acceptor = gevent.spawn(self._accept_loop)
        else:  # fill the accept queue (backlog 0 holds one) with connections of our own
            for _ in range(2):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                filler.setblocking(False)
                try:
                    filler.connect_ex((self.host, self.port))
                finally:
                    self.held.append(filler)
            gevent.sleep(0.05)  # let the handshakes complete so the queue is full
        return self

    def _accept_loop(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            self.accepted += 1
            if len(self.held) >= self.max_connections:
                _close(conn)
            else:
                self.held.append(conn)

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=2.0)
        _close(self._listener)
        held, self.held = self.held, []
        for sock in held:
            _close(sock)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- redis-server process faults ------------------------------------------------------------------------
class frozen:
    """``with frozen(server):`` the redis-server is SIGSTOPped for the block and SIGCONTinued after it."""

    def __init__(self, server: RedisProcess) -> None:
        self.server = server

    def __enter__(self) -> RedisProcess:
        self.server.pause()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.resume()


def kill_server(server: RedisProcess, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
    """Kill the redis-server abruptly (no shutdown, connections reset by the kernel) and reap it."""
    process, server.process = server.process, None
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # a stopped process still dies on SIGKILL, but other signals wait
    process.send_signal(sig)
    process.wait(timeout)


def restart_server(server: RedisProcess, *, kill: bool = False, down_for: float = 0.0,
                   timeout: float = 10.0) -> RedisProcess:
    """Stop (gracefully, or by SIGKILL) and start the redis-server again on the same port; returns it."""
    if kill:
        kill_server(server)
    else:
        server.stop()
    if down_for:
        gevent.sleep(down_for)
    return server.start(timeout)
