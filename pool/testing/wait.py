"""Wait on state instead of sleeping: ``wait_until(predicate, timeout, what=...)``.

One helper for tests, benchmarks and topologies. It polls with ``gevent.sleep``, so other greenlets (a proxy,
load clients) run meanwhile; it works in a monkey-patched process and in a plain one.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent
import redis

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition of ``wait_until`` did not hold within its timeout (an AssertionError: a test fails)."""


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition",
               interval: float = 0.002) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns a truthy value, and return that value.

    A Redis or socket error raised by ``predicate`` counts as "not yet" (a server starting, failing over or
    frozen); any other exception propagates. After ``timeout`` seconds: ``WaitTimeout`` naming ``what`` and
    the last such error.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as error:
            last_error = error
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")
        gevent.sleep(interval)
