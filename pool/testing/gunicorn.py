"""Run a real ``gunicorn -c <conf>`` master (and its workers) on a free loopback port, and watch it.

The one runner the tests and the benchmarks use: start and wait until ready (the ready path answers 200 and
every worker is up), worker pids, signals, exit, stop, the log. Everything waits on state with deadlines.

gunicorn starts with a minimal environment (``PATH``, ``HOME``, the locale, ``PYTHONPATH``, ``VIRTUAL_ENV`` and a
few more of the caller's) plus what the caller passes: the settings of a developer's shell (``REDIS_URL``,
``POOL_*``, ``REQUEST_TIMEOUT``, ...) never reach a service under test by accident. It runs in its own session,
so ``stop()`` can end the whole group when the master does not stop in time.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import gevent

from ..server import free_port
from .http import Reply, request
from .procs import child_pids

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Gunicorn", "minimal_env"]

# The caller's variables a Python process needs to run as the caller's would; nothing of the service's.
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
              "SYSTEMROOT", "LD_LIBRARY_PATH")
LOG_TAIL = 6000  # characters of the log shown in an error


def minimal_env(extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The caller's ``PATH``, ``HOME``, locale (``LANG``, ``LC_*``), ``PYTHONPATH``, ``VIRTUAL_ENV`` and a few more,
    ``PYTHONUNBUFFERED=1``, and ``extra`` (values made strings)."""
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


class Gunicorn:
    """One ``python -m gunicorn -c <conf> -b 127.0.0.1:<free port> [args]`` master with ``workers`` workers.

    ``env`` is added to the minimal environment (``WEB_CONCURRENCY`` is set to ``workers``); ``args`` go on the
    command line after the bind (``-k gevent_pywsgi``, ``--preload``, an app module, ...). It runs in ``cwd``
    (default: the directory of ``conf``) and logs to ``<log_dir>/<name>-<port>.log``. ``start()`` returns when
    ``ready_path`` answers 200 and ``workers`` workers are up.
    """

    def __init__(self, conf: str | os.PathLike[str], log_dir: str | os.PathLike[str],
                 env: Mapping[str, object] | None = None, args: Iterable[str] = (), workers: int = 1, *,
                 cwd: str | os.PathLike[str] | None = None, ready_path: str = "/healthz",
                 name: str = "gunicorn") -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.conf = Path(conf).resolve()
        self.cwd = Path(cwd) if cwd is not None else self.conf.parent
        self.port = free_port()
        self.workers = workers
        self.ready_path = ready_path
        self.name = name
        self.log_path = Path(log_dir) / f"{name.replace(':', '_')}-{self.port}.log"
        self.env = minimal_env({"WEB_CONCURRENCY": workers, **(env or {})})
        self.argv = [sys.executable, "-m", "gunicorn", "-c", str(self.conf), "-b", f"127.0.0.1:{self.port}", *args]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self._process().pid

    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process

    # -- start -----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> Self:
        """Start the master and wait until it is ready (see ``wait_ready``)."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> Self:
        """Start the master and return at once (several can boot side by side); then ``wait_ready()``."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until ``ready_path`` answers 200 and ``workers`` workers are up. ``RuntimeError`` (with the log) if
        the master exits first, ``TimeoutError`` after ``timeout`` seconds."""
        process = self._process()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}:\n{self.log(LOG_TAIL)}")
            if len(self.worker_pids()) >= self.workers and self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log(LOG_TAIL)}")
            gevent.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return self.request("GET", self.ready_path, timeout=1.0).status == 200
        except (OSError, http.client.HTTPException):
            return False

    # -- watch -----------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: object = None, headers: Mapping[str, str] | None = None,
                timeout: float = 10.0) -> Reply:
        """One request on a fresh connection (see ``pool.testing.http.request``)."""
        return request(self.port, method, path, body, headers, timeout)

    def worker_pids(self) -> set[int]:
        """The master's live child processes (its workers)."""
        return child_pids(self.pid) if self.process is not None else set()

    def wait_workers(self, count: int, timeout: float = 20.0, exclude: Iterable[int] = ()) -> set[int]:
        """Wait until exactly ``count`` workers run, none of them in ``exclude``; returns their pids."""
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == count and not pids & excluded:
                return pids
            gevent.sleep(0.05)
        raise TimeoutError(f"expected {count} workers, have {self.worker_pids()}:\n{self.log(LOG_TAIL)}")

    def log(self, tail: int | None = None) -> str:
        """The master's and workers' log (the last ``tail`` characters only, if given)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:] if tail else text

    # -- signals and stop ------------------------------------------------------------------------------------
    def send(self, sig: int) -> None:
        self._process().send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the master to exit; returns its exit code. ``TimeoutError`` if it is still running."""
        process = self._process()
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not exit within {timeout}s")
            gevent.sleep(0.02)
        return process.returncode

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM: graceful; SIGINT: quick) and wait for the master to exit. If it is still running
        after ``timeout`` seconds its whole session is SIGKILLed and ``TimeoutError`` (with the log) is raised."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            self.wait_exit(timeout)
        except TimeoutError:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own session (start_new_session): workers too
            except OSError:
                pass
            process.wait()
            raise TimeoutError(f"{self.name} did not stop within {timeout}s of signal {sig}:\n"
                               f"{self.log(LOG_TAIL)}") from None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
