"""Fault-injection tools for tests: a gevent TCP proxy with faults on demand, a listener that never answers,
and helpers that freeze, kill and restart a ``RedisProcess``. Loopback only; everything is bounded and stops.

    proxy = FaultProxy("127.0.0.1", server.port).start()   # then point the pool at proxy.url
    proxy.delay(0.5); proxy.blackhole(); proxy.passthrough(); proxy.cut(); proxy.stop()
"""
import signal

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Group

__all__ = ["FaultProxy", "SilentListener", "frozen", "kill_server", "restart_server"]

CHUNK = 65536


def _listener(host, backlog):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def _close(sock, rst=False):
    try:
        if rst:  # SO_LINGER 0: the peer gets a RST, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    __slots__ = ("client", "upstream", "pumps")

    def __init__(self, client, upstream):
        self.client = client
        self.upstream = upstream
        self.pumps = []

    def close(self, rst=False):
        _close(self.client, rst)
        _close(self.upstream, rst)


class FaultProxy:
    """A TCP proxy from a free loopback port to ``target_host:target_port``, with a fault mode:

    * ``passthrough()`` forwards bytes as they come (the initial mode);
    * ``delay(seconds)`` holds each chunk ``seconds`` before forwarding it, each way (a round trip costs
      twice that; a long stream of chunks is slowed as well);
    * ``blackhole()`` forwards nothing in either direction, not even a close: sockets stay open, no FIN,
      bytes wait (as in a network partition) and flow again after ``passthrough()``;
    * ``cut(rst=False)`` closes every current connection at once (FIN, or RST with ``rst=True``); new
      connections are proxied as the mode says.

    New connections are accepted in every mode (the proxy's own listener keeps listening). At most
    ``max_connections`` are open at once; more are closed at accept. ``stop()`` ends everything.
    Counters: ``accepted``; ``received_up``/``received_down`` (bytes that reached the proxy from the client /
    the target) and ``forwarded_up``/``forwarded_down`` (bytes passed on); ``open_connections``.
    """

    def __init__(self, target_host, target_port, *, host="127.0.0.1", max_connections=256, connect_timeout=2.0):
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._listener = _listener(host, 128)
        self.host, self.port = self._listener.getsockname()
        self.mode = "pass"
        self._delay = 0.0
        self._flowing = Event()
        self._flowing.set()
        self._pairs = set()
        self._greenlets = Group()
        self._acceptor = None
        self.accepted = 0
        self.received_up = self.received_down = self.forwarded_up = self.forwarded_down = 0

    @property
    def url(self):
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self):
        return len(self._pairs)

    # -- modes -------------------------------------------------------------------------------------------
    def passthrough(self):
        self.mode, self._delay = "pass", 0.0
        self._flowing.set()

    def delay(self, seconds):
        self.mode, self._delay = "delay", float(seconds)
        self._flowing.set()

    def blackhole(self):
        self.mode = "blackhole"
        self._flowing.clear()

    def cut(self, rst=False):
        """Close every connection now; the pumps notice and end."""
        pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.close(rst)
        return len(pairs)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self):
        self._acceptor = gevent.spawn(self._accept_loop)
        return self

    def stop(self, timeout=2.0):
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=timeout)
        _close(self._listener)
        self.cut()
        self._flowing.set()
        self._greenlets.kill(block=True, timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return (f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} mode={self.mode} "
                f"open={len(self._pairs)} accepted={self.accepted} up={self.forwarded_up}/{self.received_up} "
                f"down={self.forwarded_down}/{self.received_down}>")

    # -- the work ------------------------------------------------------------------------------------------
    def _accept_loop(self):
        while True:
            client, _ = self._listener.accept()
            self.accepted += 1
            if len(self._pairs) >= self.max_connections:
                _close(client)
                continue
            self._greenlets.spawn(self._open_pair, client)

    def _open_pair(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _close(client)  # target down: the client sees its connection closed
            return
        upstream.settimeout(None)
        pair = _Pair(client, upstream)
        self._pairs.add(pair)
        pair.pumps = [self._greenlets.spawn(self._pump, pair, client, upstream, "up"),
                      self._greenlets.spawn(self._pump, pair, upstream, client, "down")]

    def _pump(self, pair, src, dst, direction):
        received, forwarded = "received_" + direction, "forwarded_" + direction
        try:
            while True:
                data = src.recv(CHUNK)
                setattr(self, received, getattr(self, received) + len(data))
                self._flowing.wait()  # blackhole: hold the bytes, and the close too
                if self._delay:
                    gevent.sleep(self._delay)
                    self._flowing.wait()
                if not data:
                    break
                dst.sendall(data)
                setattr(self, forwarded, getattr(self, forwarded) + len(data))
        except OSError:  # closed under us by cut() or stop(), or reset by a peer
            pass
        finally:
            self._pairs.discard(pair)
            pair.close()


class SilentListener:
    """A loopback port that never answers.

    With ``accept=True`` (default) it completes TCP connects and accepts, then never reads, writes or
    closes: a client's connect succeeds and its first read waits forever. With ``accept=False`` the
    accept queue is kept full, so the kernel drops new SYNs and the client's connect itself hangs.
    ``accepted`` counts connections accepted (or, without accept, nothing). ``stop()`` closes all.
    """

    def __init__(self, *, host="127.0.0.1", accept=True, max_connections=256):
        self.accept = accept
        self.max_connections = max_connections
        self._listener = _listener(host, 128 if accept else 0)
        self.host, self.port = self._listener.getsockname()
        self.held = []
        self.accepted = 0
        self._acceptor = None

    @property
    def url(self):
        return f"redis://{self.host}:{self.port}/0"

    def start(self):
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

    def _accept_loop(self):
        while True:
            conn, _ = self._listener.accept()
            self.accepted += 1
            if len(self.held) >= self.max_connections:
                _close(conn)
            else:
                self.held.append(conn)

    def stop(self):
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=2.0)
        _close(self._listener)
        held, self.held = self.held, []
        for sock in held:
            _close(sock)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- redis-server process faults ------------------------------------------------------------------------
class frozen:
    """``with frozen(server):`` the redis-server is SIGSTOPped for the block and SIGCONTinued after it."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.server.pause()
        return self.server

    def __exit__(self, *exc):
        self.server.resume()


def kill_server(server, sig=signal.SIGKILL, timeout=5.0):
    """Kill the redis-server abruptly (no shutdown, connections reset by the kernel) and reap it."""
    process, server.process = server.process, None
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # a stopped process still dies on SIGKILL, but other signals wait
    process.send_signal(sig)
    process.wait(timeout)


def restart_server(server, *, kill=False, down_for=0.0, timeout=10.0):
    """Stop (gracefully, or by SIGKILL) and start the redis-server again on the same port; returns it."""
    if kill:
        kill_server(server)
    else:
        server.stop()
    if down_for:
        gevent.sleep(down_for)
    return server.start(timeout)
